"""The embedded store of ``megabrain serve``: a real server in the data dir, durable, one per data dir.

``serve`` runs as a real process without ``REDIS_URL``; the CLI finds its store through
``MEGABRAIN_DATA_DIR`` with no admin key and no URL. Keys and usage survive SIGTERM, SIGKILL of ``serve``
(the server is adopted) and SIGKILL of both (the AOF, fsynced every second, is replayed).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from common.store import PID_FILE, SOCKET, EmbeddedServer, StoreError, answers
from tests.fakes.openai_server import OpenAIFakeState
from tests.fakes.server import free_port
from tests.harness import FAST_TIMEOUTS, wait_until

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def store_env(data_dir: Path, upstream: str = "") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.endswith(("_API_KEY", "_BASE_URL")) and not k.startswith(("REDIS_URL", "MEGABRAIN_"))}
    env.update(FAST_TIMEOUTS, MEGABRAIN_DATA_DIR=str(data_dir), MEGABRAIN_CONFIG=os.devnull, HOST="127.0.0.1")
    if upstream:
        env.update(OPENAI_BASE_URL=upstream, OPENAI_API_KEY="sk-upstream-test")
    return env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "api.cli.main", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def servers_of(data_dir: Path) -> list[int]:
    """Pids of every Redis/Valkey server process serving this data dir's socket."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            comm = (proc / "comm").read_text().strip()
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            state = (proc / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if comm in ("valkey-server", "redis-server") and str(data_dir / SOCKET) in cmdline and state != "Z":
            found.append(int(proc.name))
    return found


class Serve:
    """``megabrain serve`` as a real process on a data dir."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = dict(env, PORT=str(free_port()))
        self.url = f"http://127.0.0.1:{self.env['PORT']}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Serve":
        self.proc = subprocess.Popen([sys.executable, "-m", "api.cli.main", "serve"], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if not wait_until(self._ready, 30):
            self.proc.kill()
            raise RuntimeError("serve did not start: " + (self.proc.stderr.read() or b"").decode()[-2000:])
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            return True  # exited: start() reports it
        try:
            response = httpx.get(self.url + "/ready", timeout=1)
            return response.status_code == 200 and response.json()["pools"]["openai"]["live_workers"] >= 1
        except (httpx.HTTPError, KeyError, ValueError):
            return False

    def chat(self, key: str) -> httpx.Response:
        return httpx.post(self.url + "/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {key}"},
                          timeout=20)

    def usage_requests(self, key: str) -> int:
        response = httpx.get(self.url + "/usage", headers={"authorization": f"Bearer {key}"}, timeout=5)
        assert response.status_code == 200, response.text
        return sum(row["requests"] for row in response.json()["data"])

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(30)
        if self.proc.stderr:
            self.proc.stderr.close()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.signal(signal.SIGKILL)


def aof_bytes(data_dir: Path) -> bytes:
    """Everything in the store's append-only files so far."""
    return b"".join(path.read_bytes() for path in sorted(data_dir.rglob("*.aof")))


@pytest.fixture
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("mb")
    yield directory
    for pid in servers_of(directory):  # whatever a failed test left behind
        os.kill(pid, signal.SIGKILL)


def test_keys_and_usage_survive_sigterm_and_sigkill(data_dir: Path, fake_openai: tuple[OpenAIFakeState, str]) -> None:
    env = store_env(data_dir, fake_openai[1])
    first = Serve(env).start()
    try:
        assert (data_dir.stat().st_mode & 0o777) == 0o700
        created = cli(env, "keys", "create", "--name", "me")  # no admin key, no URL: the data dir is enough
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip()
        assert key.startswith("mb-")
        assert first.chat(key).status_code == 200
        status = cli(env, "status")
        assert status.returncode == 0 and "openai" in status.stdout, status.stderr
        assert len(servers_of(data_dir)) == 1
        first.signal(signal.SIGTERM)
        assert first.proc is not None and first.proc.returncode is not None
        assert servers_of(data_dir) == []  # no server outlives a clean stop
        assert not (data_dir / SOCKET).exists()
    finally:
        first.kill()

    second = Serve(env).start()  # a fresh server, replaying the AOF
    try:
        assert second.chat(key).status_code == 200
        assert wait_until(lambda: second.usage_requests(key) == 2, 10)
        [server_pid] = servers_of(data_dir)
        second.signal(signal.SIGKILL)
        assert servers_of(data_dir) == [server_pid]  # the server stays behind a killed serve …
    finally:
        second.kill()

    third = Serve(env).start()
    try:
        assert servers_of(data_dir) == [server_pid]  # … and the next serve adopts it: one server per data dir
        answer = third.chat(key)
        assert answer.status_code == 200
        assert wait_until(lambda: third.usage_requests(key) == 3, 10)
        # the worker's batched write of this answer (usage, then its generation record) reached the AOF file:
        # what a SIGKILL of the server cannot take back (appendfsync everysec covers a power cut)
        record = f":gen:{answer.headers['x-request-id']}".encode()
        assert wait_until(lambda: record in aof_bytes(data_dir), 10)
        third.signal(signal.SIGKILL)
        os.kill(server_pid, signal.SIGKILL)  # a power cut: only the AOF remains
        assert wait_until(lambda: servers_of(data_dir) == [], 10)
    finally:
        third.kill()

    fourth = Serve(env).start()
    try:
        assert servers_of(data_dir) != [server_pid]
        assert fourth.usage_requests(key) == 3
        assert fourth.chat(key).status_code == 200
        fourth.signal(signal.SIGTERM)
        assert servers_of(data_dir) == []
    finally:
        fourth.kill()


def test_one_owner_per_data_dir(data_dir: Path, fake_openai: tuple[OpenAIFakeState, str]) -> None:
    env = store_env(data_dir, fake_openai[1])
    first = Serve(env).start()
    try:
        other = subprocess.run([sys.executable, "-m", "api.cli.main", "serve"], env=dict(env, PORT=str(free_port())),
                               capture_output=True, text=True, timeout=60)
        assert other.returncode != 0
        assert "owns the store" in other.stderr and str(first.proc.pid) in other.stderr  # type: ignore[union-attr]
        assert len(servers_of(data_dir)) == 1
    finally:
        first.signal(signal.SIGTERM)
    assert servers_of(data_dir) == []


def test_cli_without_serve_starts_the_store_for_itself(data_dir: Path) -> None:
    env = store_env(data_dir)
    status = cli(env, "status")
    assert status.returncode == 1 and "start `megabrain serve`" in status.stderr  # one clear line
    assert len(status.stderr.strip().splitlines()) == 1
    empty = data_dir / "never-used"
    assert cli(dict(env, MEGABRAIN_DATA_DIR=str(empty)), "status").returncode == 1 and not empty.exists()
    created = cli(env, "keys", "create", "--name", "early")
    assert created.returncode == 0, created.stderr
    assert servers_of(data_dir) == []  # the command's own server stopped with it
    listed = cli(env, "keys", "list", "--json")
    assert listed.returncode == 0 and '"early"' in listed.stdout, listed.stderr
    assert servers_of(data_dir) == []


def test_a_stale_pid_file_and_socket_are_cleared(data_dir: Path) -> None:
    (data_dir / PID_FILE).write_text(f"{os.getpid()}\n")  # a live pid that is not a Redis server
    (data_dir / SOCKET).write_text("")
    with EmbeddedServer(data_dir) as server:
        assert answers(server.directory)
        assert not server.adopted
    assert servers_of(data_dir) == []


def test_a_data_dir_too_deep_for_a_socket_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="MEGABRAIN_DATA_DIR"):
        EmbeddedServer(tmp_path / ("d" * 120))


def test_serve_starts_its_store_again_after_it_dies(data_dir: Path, fake_openai: tuple[OpenAIFakeState, str]) -> None:
    """SIGKILL of the embedded server under a running ``serve``: it is started again on the same AOF, by itself,
    and every key and usage record written before survives. A store that cannot start again (here its socket
    path is a directory) turns ``/health`` 503 after ``MEGABRAIN_STORE_DOWN_LIMIT``, so a platform restarts the
    process; once it can start, it does, and ``/health`` is 200 again."""
    env = {**store_env(data_dir, fake_openai[1]), "MEGABRAIN_STORE_DOWN_LIMIT": "1"}
    serve = Serve(env).start()
    try:
        created = cli(env, "keys", "create", "--name", "me")
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip()
        answer = serve.chat(key)
        assert answer.status_code == 200
        record = f":gen:{answer.headers['x-request-id']}".encode()
        assert wait_until(lambda: record in aof_bytes(data_dir), 10)  # on disk: what a SIGKILL cannot take back
        [first] = servers_of(data_dir)
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: servers_of(data_dir) not in ([], [first]), 30)
        assert wait_until(lambda: serve.chat(key).status_code == 200, 30)  # the key survived; the pools are back
        assert wait_until(lambda: serve.usage_requests(key) == 2, 10)
        assert httpx.get(serve.url + "/health", timeout=5).status_code == 200

        [second] = servers_of(data_dir)
        (data_dir / SOCKET).unlink()
        (data_dir / SOCKET).mkdir()  # the server cannot be started again while this is here
        os.kill(second, signal.SIGKILL)
        assert wait_until(lambda: httpx.get(serve.url + "/health", timeout=5).status_code == 503, 30)
        (data_dir / SOCKET).rmdir()
        assert wait_until(lambda: httpx.get(serve.url + "/health", timeout=5).status_code == 200, 60)
        assert wait_until(lambda: serve.chat(key).status_code == 200, 30)
        assert serve.proc is not None and serve.proc.poll() is None  # the same serve all along
    finally:
        serve.kill()
