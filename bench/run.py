"""One command for the whole benchmark: ``python -m bench`` (or ``python bench/run.py``); ``--quick`` for a short run.

Starts its own redis-server on a free port (so Redis's CPU is only ours and the machine's Redis is left
alone), the fake upstream, one ``megabrain web`` and one ``megabrain worker --providers openai`` (or one
``megabrain serve`` on its embedded store with ``--serve``) and, when ``--setup-litellm`` installed it,
LiteLLM proxy on the same upstream; then for each phase calls the upstream directly, through the gateway
and through LiteLLM, alternating, round after round, and charges each its own processes' CPU time.
Everything started is stopped on exit.
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

from bench import litellm, pickup, procs
from bench.client import run_phase
from bench.stats import TARGETS, added, median_of, p50_p99_ms, ratios, render, summarize
from bench.upstream import STATS_PATH

MODEL = "openai/bench-model"
UPSTREAM_MODEL = "gpt-4o-mini"
GATEWAY_PROCS = ("web", "worker", "redis")
SERVE_PROCS = ("serve",)
CONFIG = """\
# Written by bench/run.py: the bench model is free and the limits never bite, so admission lets every
# anonymous benchmark request through whatever access control is configured.
[limits]
free_requests_per_minute = 100000000
anonymous_requests_per_day = 100000000
trusted_proxy_hops = 0
queue_depth_limit = 1000000
anonymous_concurrency = 0  # no bound on keyless requests in flight: the saturated phase is one tenant

[[models]]
id = "{model}"
provider = "openai"
upstream_id = "{upstream}"
free = true
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run: 60 requests at c=1, 300 saturated, 1 round")
    parser.add_argument("--requests-c1", type=int, help="measured requests per phase at concurrency 1 (200)")
    parser.add_argument("--requests-sat", type=int, help="measured requests per saturated phase (1000)")
    parser.add_argument("--saturate", type=int, default=50, help="concurrency of the saturated phase (50)")
    parser.add_argument("--warmup", type=int, default=None, help="unmeasured requests per connection (5)")
    parser.add_argument("--rounds", type=int, help="repeat every phase, alternating targets; medians (3)")
    parser.add_argument("--kinds", default="json,stream", help="request kinds to run (json,stream)")
    parser.add_argument("--worker-processes", type=int, default=1, help="megabrain worker --processes N (1)")
    parser.add_argument("--serve", action="store_true",
                        help="run one `megabrain serve` on its embedded store instead of web + worker + redis")
    parser.add_argument("--setup-litellm", action="store_true",
                        help=f"install LiteLLM proxy {litellm.VERSION} into {litellm.VENV} and exit")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out even when installed")
    parser.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment of the gateway's processes, e.g. MEGABRAIN_LOG_LEVEL=debug")
    parser.add_argument("--pickup-jobs", type=int, help="enqueue->pickup samples (300)")
    parser.add_argument("--tokens", type=int, default=16, help="tokens the fake upstream answers with")
    parser.add_argument("--redis-url", help="use this Redis instead of starting a private redis-server "
                                            "(its CPU is then not counted)")
    parser.add_argument("--log-level", default="info", help="MEGABRAIN_LOG_LEVEL of the gateway processes")
    parser.add_argument("--profile", action="store_true",
                        help="also record py-spy profiles of web and worker (needs py-spy) into bench/results")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    args.requests_c1 = args.requests_c1 or (60 if args.quick else 200)
    args.requests_sat = args.requests_sat or (300 if args.quick else 1000)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 5)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.pickup_jobs = args.pickup_jobs or (60 if args.quick else 200)
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    return args


def start_all(args: argparse.Namespace, procs_: procs.Processes, workdir: Path) -> dict[str, Any]:
    """Start redis (unless given or ``--serve``), the fake upstream, the gateway and LiteLLM; return ports and URLs."""
    import redis as redis_sync

    upstream_port = procs.free_port()
    procs_.start("upstream", procs.fake_upstream_argv(upstream_port, args.tokens), procs.clean_env({}))
    procs.wait_until("fake upstream", lambda: procs.http_ok(f"http://127.0.0.1:{upstream_port}/v1/models"), procs_)

    config = workdir / "megabrain.toml"
    config.write_text(CONFIG.format(model=MODEL, upstream=UPSTREAM_MODEL))
    namespace = "bench" + secrets.token_hex(4)
    web_port = procs.free_port()
    settings = {
        "PORT": str(web_port), "HOST": "127.0.0.1",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1", "OPENAI_API_KEY": "sk-bench",
        "MEGABRAIN_CONFIG": str(config), "MEGABRAIN_NAMESPACE": namespace,
        "MEGABRAIN_LOG_LEVEL": args.log_level, "WEB_CONCURRENCY": "1",
        "MEGABRAIN_SECRET": secrets.token_urlsafe(32),  # the web tier needs one on REDIS_URL
        **dict(item.split("=", 1) for item in args.gateway_env),
    }
    out: dict[str, Any] = {"namespace": namespace, "upstream_port": upstream_port, "web_port": web_port,
                           "redis_url": None, "private_redis": False, "redis_version": "embedded"}
    if args.serve:  # one process, its own embedded store (no REDIS_URL) in a data dir of the bench's own
        settings["MEGABRAIN_DATA_DIR"] = str(workdir / "store")
        procs_.start("serve", procs.megabrain_argv("serve", "--providers", "openai"), procs.clean_env(settings))
    else:
        if args.redis_url:
            redis_url = args.redis_url
        else:
            port = procs.free_port()
            procs_.start("redis", procs.redis_server_argv(port), procs.clean_env({}))
            redis_url = f"redis://127.0.0.1:{port}/0"
        client = redis_sync.Redis.from_url(redis_url)
        procs.wait_until("redis-server", lambda: bool(client.ping()), procs_)
        env = procs.clean_env({**settings, "REDIS_URL": redis_url})
        worker_args = ["--processes", str(args.worker_processes)] if args.worker_processes > 1 else []
        procs_.start("worker", procs.megabrain_argv("worker", "--providers", "openai", *worker_args), env)
        procs_.start("web", procs.megabrain_argv("web"), env)
        live_key = f"{namespace}:live:openai"
        procs.wait_until("worker", lambda: client.zcard(live_key) >= args.worker_processes, procs_)
        out.update(redis_url=redis_url, private_redis=not args.redis_url,
                   redis_version=client.info("server").get("redis_version", "?"))
        client.close()
    procs.wait_until("gateway", lambda: procs.http_ok(f"http://127.0.0.1:{web_port}/health"), procs_)

    if litellm.installed() and not args.no_litellm:
        litellm.check()
        litellm_port = procs.free_port()
        cfg = litellm.write_config(workdir / "litellm.yaml", upstream_port, UPSTREAM_MODEL)
        procs_.start("litellm", litellm.argv(cfg, litellm_port), procs.clean_env(litellm.env()))
        procs.wait_until("litellm", lambda: procs.http_ok(f"http://127.0.0.1:{litellm_port}/health/liveliness"),
                         procs_, timeout=180)
        out["litellm_port"] = litellm_port
    return out


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
    """CPU seconds and read+write syscalls of named processes (and their children) between ``start`` and ``stop``."""

    def __init__(self, procs_: procs.Processes, names: tuple[str, ...]) -> None:
        self.pids = {n: procs_.pid(n) for n in names if n in procs_.procs}
        self.before: dict[str, float] = {}
        self.syscalls_before: dict[str, float] = {}
        self.syscalls: dict[str, float] = {}

    def start(self) -> None:
        self.before = {n: procs.tree_sum(procs.cpu_seconds, p) for n, p in self.pids.items()}
        self.syscalls_before = {n: procs.tree_sum(procs.syscalls, p) for n, p in self.pids.items()}

    def stop(self) -> dict[str, float]:
        self.syscalls = {n: procs.tree_sum(procs.syscalls, p) - self.syscalls_before[n] for n, p in self.pids.items()}
        return {n: procs.tree_sum(procs.cpu_seconds, p) - self.before[n] for n, p in self.pids.items()}


def upstream_connections(env: dict[str, Any]) -> int:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{env['upstream_port']}{STATS_PATH}", timeout=5) as response:
        return int(json.loads(response.read())["connections"])


async def one_target(args: argparse.Namespace, procs_: procs.Processes, env: dict[str, Any], target: str,
                     stream: bool, concurrency: int, requests: int) -> dict[str, Any]:
    """One target (direct, gateway or litellm) for one phase: latency, CPU per 1,000 requests of its own
    processes (and the upstream's), Redis commands per request, upstream connections opened per request."""
    charged = {"direct": (), "gateway": SERVE_PROCS if args.serve else GATEWAY_PROCS, "litellm": ("litellm",)}[target]
    port = {"direct": env["upstream_port"], "gateway": env["web_port"], "litellm": env.get("litellm_port")}[target]
    model = {"direct": UPSTREAM_MODEL, "gateway": MODEL, "litellm": litellm.MODEL}[target]
    meter = CpuMeter(procs_, (*charged, "upstream"))
    commands = RedisCommands(env["redis_url"]) if env["private_redis"] and target == "gateway" else None
    if commands:
        commands.reset()
    web_log = procs_.log_dir / "web.log"
    log_offset = web_log.stat().st_size if target == "gateway" and web_log.exists() else None
    conns_before = upstream_connections(env)
    meter.start()
    result = await run_phase("127.0.0.1", port, "/v1/chat/completions", chat_body(model, stream),
                             requests=requests, concurrency=concurrency, warmup=args.warmup)
    cpu = meter.stop()
    procs_.check_alive()
    # Warm-up requests ran inside the metered window too: charge per request actually sent.
    sent = requests + args.warmup * concurrency
    out: dict[str, Any] = summarize(result, stream)
    out["upstream_connections_per_1k"] = round((upstream_connections(env) - conns_before - 1) * 1000 / sent, 2)
    per_1k = {n: round(cpu.get(n, 0.0) * 1000 / sent, 3) for n in charged}
    per_1k["total"] = round(sum(per_1k.values()), 3)
    per_1k["upstream"] = round(cpu["upstream"] * 1000 / sent, 3)
    out["cpu_per_1k"] = per_1k
    out["syscalls_per_request"] = {n: round(meter.syscalls.get(n, 0) / sent, 1) for n in charged}
    if commands:
        out["redis_commands_per_request"] = commands.per_request(sent)
    if log_offset is not None:
        queue_ms = queue_ms_from_log(web_log, log_offset)
        out["logged_queue_ms"] = _ms(queue_ms) if queue_ms else {}
    return out


async def bench(args: argparse.Namespace, procs_: procs.Processes, env: dict[str, Any]) -> dict[str, Any]:
    from common.wire import Route

    results: dict[str, Any] = {"phases": {}}
    if env["redis_url"]:
        route = Route("openai", MODEL, UPSTREAM_MODEL)
        pick_raw = await pickup.measure(env["redis_url"], env["namespace"], "openai", route,
                                        chat_body(UPSTREAM_MODEL, False), jobs=args.pickup_jobs)
        results["pickup"] = {
            "jobs": args.pickup_jobs,
            "start_event_ms": _ms(pick_raw["start_event"]),
            "worker_queued_ms": _ms(pick_raw["worker_queued"]),
            "publish_hop_ms": _ms(pick_raw["publish_hop"]),
        }
    targets = ["direct", "gateway"] + (["litellm"] if "litellm_port" in env else [])
    plan = [(kind == "stream", c, n) for kind in args.kinds
            for c, n in ((1, args.requests_c1), (args.saturate, args.requests_sat))]
    for stream, c, n in plan:
        rounds = []
        for r in range(args.rounds):
            print(f"  {'stream' if stream else 'json'} c={c} n={n} round {r + 1}/{args.rounds} ...",
                  file=sys.stderr, flush=True)
            # alternate the order, so a slow spell of the shared machine does not always hit the same target
            order = targets if r % 2 == 0 else [targets[0], *reversed(targets[1:])]
            rounds.append({t: await one_target(args, procs_, env, t, stream, c, n) for t in order})
        phase = median_of(rounds)
        for t in targets[1:]:
            phase[t]["added"] = {"latency_ms": added(phase["direct"], phase[t], "latency_ms")}
            if stream:
                phase[t]["added"]["ttft_ms"] = added(phase["direct"], phase[t], "ttft_ms")
        phase.update(stream=stream, concurrency=c)
        results["phases"][f"{'stream' if stream else 'json'}_c{c}"] = phase
    results["ratios"] = ratios(results["phases"], args.saturate)
    return results


def _ms(values: list[float]) -> dict[str, float]:
    return {q: v / 1000 for q, v in p50_p99_ms(values).items()}  # values are already milliseconds


def start_profilers(procs_: procs.Processes, out: Path, stamp: str) -> list[subprocess.Popen[bytes]]:
    import shutil

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("bench: --profile needs py-spy (pip install py-spy)")
    started = []
    for name in [n for n in ("web", "worker", "serve") if n in procs_.procs]:
        argv = [spy, "record", "--pid", str(procs_.pid(name)), "--format", "raw", "--rate", "200", "--subprocesses",
                "--output", str(out / f"profile-{stamp}-{name}.txt"), "--nonblocking"]
        started.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return started


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.setup_litellm:
        litellm.setup()
        return
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
    if profilers:
        from bench.hotspots import load, top

        results["profiles"] = {}
        for path in sorted(args.out.glob(f"profile-{stamp}-*.txt")):
            results["profiles"][path.stem.rsplit("-", 1)[1]] = top(load(path), 20)
    results["machine"] = {"cpus": os.cpu_count(), "redis": env["redis_version"], "private_redis": not args.redis_url}
    results["config"] = {"tokens": args.tokens, "rounds": args.rounds, "warmup_per_connection": args.warmup,
                         "requests_c1": args.requests_c1, "requests_sat": args.requests_sat,
                         "saturate": args.saturate, "worker_processes": args.worker_processes,
                         "serve": args.serve, "gateway_env": args.gateway_env, "litellm": litellm.VERSION if "litellm_port" in env else None,
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
