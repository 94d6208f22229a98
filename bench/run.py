"""One command for the whole benchmark: ``python -m bench`` (or ``python bench/run.py``); ``--quick`` for a short run.

Starts its own redis-server on a free port (so Redis's CPU is only ours and the machine's Redis is left
alone), the fake upstream, one ``megabrain web`` and one ``megabrain worker --providers openai``, then for
each phase calls the fake upstream directly and through the gateway, back to back, and charges the CPU
time of web + worker + redis-server to the gateway run. Everything started is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # ``python bench/run.py``: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import pickup, procs
from bench.client import run_phase
from bench.stats import TARGETS, added, median_of, p50_p99_ms, render, summarize

MODEL = "openai/bench-model"
UPSTREAM_MODEL = "gpt-4o-mini"
GATEWAY_PROCS = ("web", "worker", "redis")
CONFIG = """\
# Written by bench/run.py: the bench model is free and the limits never bite, so admission lets every
# anonymous benchmark request through whatever access control is configured.
[limits]
free_requests_per_minute = 100000000
anonymous_requests_per_day = 100000000
trusted_proxy_hops = 0
queue_depth_limit = 1000000

[[models]]
id = "{model}"
provider = "openai"
upstream_id = "{upstream}"
free = true
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run: 100 requests at c=1, 400 at c=20")
    parser.add_argument("--requests-c1", type=int, help="measured requests per phase at concurrency 1 (400)")
    parser.add_argument("--requests-c20", type=int, help="measured requests per phase at concurrency 20 (2000)")
    parser.add_argument("--warmup", type=int, default=None, help="unmeasured requests per connection (10)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every phase; medians are reported")
    parser.add_argument("--pickup-jobs", type=int, help="enqueue->pickup samples (300)")
    parser.add_argument("--tokens", type=int, default=16, help="tokens the fake upstream answers with")
    parser.add_argument("--redis-url", help="use this Redis instead of starting a private redis-server "
                                            "(its CPU is then not counted)")
    parser.add_argument("--log-level", default="info", help="MEGABRAIN_LOG_LEVEL of the gateway processes")
    parser.add_argument("--profile", action="store_true",
                        help="also record py-spy profiles of web and worker (needs py-spy) into bench/results")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    args.requests_c1 = args.requests_c1 or (100 if args.quick else 400)
    args.requests_c20 = args.requests_c20 or (400 if args.quick else 2000)
    args.warmup = args.warmup if args.warmup is not None else (3 if args.quick else 10)
    args.pickup_jobs = args.pickup_jobs or (60 if args.quick else 300)
    return args


def start_all(args: argparse.Namespace, procs_: procs.Processes, workdir: Path) -> dict[str, Any]:
    """Start redis (unless given), the fake upstream, web and worker; return the ports and URLs."""
    import redis as redis_sync

    if args.redis_url:
        redis_url = args.redis_url
    else:
        port = procs.free_port()
        procs_.start("redis", procs.redis_server_argv(port), procs.clean_env({}))
        redis_url = f"redis://127.0.0.1:{port}/0"
    client = redis_sync.Redis.from_url(redis_url)
    procs.wait_until("redis-server", lambda: bool(client.ping()), procs_)

    upstream_port = procs.free_port()
    procs_.start("upstream", procs.fake_upstream_argv(upstream_port, args.tokens), procs.clean_env({}))
    procs.wait_until("fake upstream", lambda: procs.http_ok(f"http://127.0.0.1:{upstream_port}/v1/models"), procs_)

    config = workdir / "megabrain.toml"
    config.write_text(CONFIG.format(model=MODEL, upstream=UPSTREAM_MODEL))
    namespace = "bench" + secrets.token_hex(4)
    web_port = procs.free_port()
    env = procs.clean_env({
        "REDIS_URL": redis_url, "PORT": str(web_port), "HOST": "127.0.0.1",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1", "OPENAI_API_KEY": "sk-bench",
        "MEGABRAIN_CONFIG": str(config), "MEGABRAIN_NAMESPACE": namespace,
        "MEGABRAIN_LOG_LEVEL": args.log_level, "WEB_CONCURRENCY": "1",
    })
    procs_.start("worker", procs.megabrain_argv("worker", "--providers", "openai"), env)
    procs_.start("web", procs.megabrain_argv("web"), env)
    live_key = f"{namespace}:live:openai"
    procs.wait_until("worker", lambda: client.zcard(live_key) > 0, procs_)
    procs.wait_until("web", lambda: procs.http_ok(f"http://127.0.0.1:{web_port}/health"), procs_)
    info = client.info("server")
    client.close()
    return {"redis_url": redis_url, "private_redis": not args.redis_url, "namespace": namespace, "upstream_port": upstream_port,
            "web_port": web_port, "redis_version": info.get("redis_version", "?")}


def chat_body(model: str, stream: bool) -> bytes:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "Say hello to the bench."}]}
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


def queue_ms_from_log(path: Path, offset: int) -> list[float]:
    """``queue_ms`` (enqueue → worker pickup, the worker's clock) of the web's "request finished" log lines."""
    with open(path, "rb") as f:
        f.seek(offset)
        lines = f.read().splitlines()
    values = []
    for line in lines:
        if b'"queue_ms"' in line:
            try:
                value = json.loads(line).get("queue_ms")
            except ValueError:
                continue
            if isinstance(value, (int, float)):
                values.append(float(value))
    return values


class RedisCommands:
    """Redis commands per gateway request, from INFO commandstats (only on our private redis-server)."""

    def __init__(self, url: str) -> None:
        import redis as redis_sync

        self.client = redis_sync.Redis.from_url(url)

    def reset(self) -> None:
        self.client.config_resetstat()

    def per_request(self, sent: int) -> dict[str, float]:
        stats = self.client.info("commandstats")
        self.client.close()
        counts = {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}
        counts.pop("info", None)
        counts = {k: round(v / sent, 2) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}
        return {"total": round(sum(counts.values()), 2), **counts}


class CpuMeter:
    """CPU seconds of named processes between ``start`` and ``stop``."""

    def __init__(self, procs_: procs.Processes, names: tuple[str, ...]) -> None:
        self.pids = {n: procs_.pid(n) for n in names if n in procs_.procs}
        self.before: dict[str, float] = {}

        self.syscalls_before: dict[str, int] = {}
        self.syscalls: dict[str, int] = {}

    def start(self) -> None:
        self.before = {n: procs.cpu_seconds(p) for n, p in self.pids.items()}
        self.syscalls_before = {n: procs.syscalls(p) for n, p in self.pids.items()}

    def stop(self) -> dict[str, float]:
        self.syscalls = {n: procs.syscalls(p) - self.syscalls_before[n] for n, p in self.pids.items()}
        return {n: procs.cpu_seconds(p) - self.before[n] for n, p in self.pids.items()}


async def one_phase(args: argparse.Namespace, procs_: procs.Processes, env: dict[str, Any], stream: bool,
                    concurrency: int, requests: int) -> dict[str, Any]:
    """Direct, then through the gateway, back to back; CPU per 1,000 requests of the gateway's processes."""
    meter = CpuMeter(procs_, (*GATEWAY_PROCS, "upstream"))
    meter.start()
    direct = await run_phase("127.0.0.1", env["upstream_port"], "/v1/chat/completions",
                             chat_body(UPSTREAM_MODEL, stream), requests=requests, concurrency=concurrency,
                             warmup=args.warmup)
    direct_cpu = meter.stop()
    commands = RedisCommands(env["redis_url"]) if env["private_redis"] else None
    if commands:
        commands.reset()
    web_log = procs_.log_dir / "web.log"
    log_offset = web_log.stat().st_size
    meter.start()
    gateway = await run_phase("127.0.0.1", env["web_port"], "/v1/chat/completions", chat_body(MODEL, stream),
                              requests=requests, concurrency=concurrency, warmup=args.warmup)
    cpu = meter.stop()
    procs_.check_alive()
    per_request = commands.per_request(requests + args.warmup * concurrency) if commands else {}
    # Warm-up requests ran inside the metered window too: charge per request actually sent.
    sent = requests + args.warmup * concurrency
    per_1k = {n: round(cpu.get(n, 0.0) * 1000 / sent, 3) for n in GATEWAY_PROCS}
    per_1k["gateway"] = round(sum(per_1k[n] for n in GATEWAY_PROCS), 3)
    per_1k["upstream"] = round(cpu["upstream"] * 1000 / sent, 3)
    per_1k["upstream_direct"] = round(direct_cpu["upstream"] * 1000 / sent, 3)
    queue_ms = queue_ms_from_log(web_log, log_offset)
    syscalls = {n: round(meter.syscalls.get(n, 0) / sent, 1) for n in GATEWAY_PROCS}
    d, g = summarize(direct, stream), summarize(gateway, stream)
    out: dict[str, Any] = {"direct": d, "gateway": g, "cpu_per_1k": per_1k,
                           "added": {"latency_ms": added(d, g, "latency_ms")},
                           "redis_commands_per_request": per_request,
                           "syscalls_per_request": syscalls,
                           "logged_queue_ms": _ms(queue_ms) if queue_ms else {}}
    if stream:
        out["added"]["ttft_ms"] = added(d, g, "ttft_ms")
    return out


async def bench(args: argparse.Namespace, procs_: procs.Processes, env: dict[str, Any]) -> dict[str, Any]:
    from common.wire import Route

    route = Route("openai", MODEL, UPSTREAM_MODEL)
    pick_raw = await pickup.measure(env["redis_url"], env["namespace"], "openai", route,
                                    chat_body(UPSTREAM_MODEL, False), jobs=args.pickup_jobs)
    results: dict[str, Any] = {
        "pickup": {
            "jobs": args.pickup_jobs,
            "start_event_ms": _ms(pick_raw["start_event"]),
            "worker_queued_ms": _ms(pick_raw["worker_queued"]),
            "publish_hop_ms": _ms(pick_raw["publish_hop"]),
        },
        "phases": {},
    }
    plan = [(stream, c, n) for stream in (False, True) for c, n in ((1, args.requests_c1), (20, args.requests_c20))]
    for stream, c, n in plan:
        rounds = []
        for r in range(args.rounds):
            print(f"  {'stream' if stream else 'non-stream'} c={c} n={n} round {r + 1}/{args.rounds} ...",
                  file=sys.stderr, flush=True)
            rounds.append(await one_phase(args, procs_, env, stream, c, n))
        phase = median_of(rounds)
        phase.update(stream=stream, concurrency=c)
        results["phases"][f"{'stream' if stream else 'nonstream'}_c{c}"] = phase
    return results


def _ms(values: list[float]) -> dict[str, float]:
    return {q: v / 1000 for q, v in p50_p99_ms(values).items()}  # values are already milliseconds


def start_profilers(procs_: procs.Processes, out: Path, stamp: str) -> list[subprocess.Popen[bytes]]:
    import shutil

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("bench: --profile needs py-spy (pip install py-spy)")
    started = []
    for name in ("web", "worker"):
        argv = [spy, "record", "--pid", str(procs_.pid(name)), "--format", "raw", "--rate", "200",
                "--output", str(out / f"profile-{stamp}-{name}.txt"), "--nonblocking"]
        started.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return started


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # SIGTERM/SIGHUP become exceptions, so the ``finally`` below stops every process we started.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(143))
    procs_ = procs.Processes(Path(tempfile.mkdtemp(prefix="megabrain-bench-")))
    profilers: list[subprocess.Popen[bytes]] = []
    try:
        print(f"bench: starting redis-server, fake upstream, web and worker (logs in {procs_.log_dir})",
              file=sys.stderr, flush=True)
        env = start_all(args, procs_, procs_.log_dir)
        if args.profile:
            profilers = start_profilers(procs_, args.out, stamp)
        results = _run_async(bench(args, procs_, env))
    except BaseException:
        for name in procs_.procs:
            tail = procs_.log_tail(name, 10)
            if tail:
                print(f"--- {name} log (tail) ---\n{tail}", file=sys.stderr)
        raise
    finally:
        for spy in profilers:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(timeout=20)
            except subprocess.TimeoutExpired:
                spy.kill()
        procs_.close()
    results["machine"] = {"cpus": os.cpu_count(), "redis": env["redis_version"], "private_redis": not args.redis_url}
    results["config"] = {"tokens": args.tokens, "rounds": args.rounds, "warmup_per_connection": args.warmup,
                         "requests_c1": args.requests_c1, "requests_c20": args.requests_c20,
                         "log_level": args.log_level, "targets": TARGETS}
    path = args.out / f"bench-{stamp}.json"
    path.write_text(json.dumps(results, indent=2))
    print(render(results))
    print(f"\nJSON: {path}")


def _run_async(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


if __name__ == "__main__":
    main()
