"""The processes under test: a private redis-server, the fake upstream, ``megabrain web`` and ``worker``.

Each runs in its own session so a Ctrl-C reaches only the benchmark, which then stops them itself; their
CPU time is read from ``/proc/<pid>/stat`` so only the gateway's processes are charged, not the client.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parent.parent
# Inherited variables that would configure more than the one provider under test, or another Redis.
_DROP_PREFIXES = ("MEGABRAIN_", "REDIS_URL", "SENTRY_")
_DROP_SUFFIXES = ("_API_KEY", "_BASE_URL")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (fields 14 and 15 of /proc/<pid>/stat), in seconds."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``megabrain worker --processes N``, ``web --workers N`` fork children)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue
        ppid = int(raw[raw.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def tree_sum(read: "callable[[int], float]", pid: int) -> float:
    """``read`` (``cpu_seconds``, ``syscalls``) summed over ``pid`` and its descendants."""
    total = 0.0
    for p in tree(pid):
        try:
            total += read(p)
        except (OSError, ValueError, KeyError):
            pass  # exited meanwhile
    return total


def syscalls(pid: int) -> int:
    """read + write system calls so far (``syscr`` + ``syscw`` of /proc/<pid>/io): a proxy for round trips."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["syscr"]) + int(fields["syscw"])


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_DROP_PREFIXES) and not k.endswith(_DROP_SUFFIXES)}
    env.update(extra)
    return env


class Processes:
    """Starts named processes, waits for them, and stops every one of them on ``close``."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; log:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def close(self) -> None:
        """SIGTERM everything we started (newest first), then SIGKILL what is left after a grace period."""
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_until(what: str, ready: "callable[[], bool]", procs: Processes, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            if ready():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not become ready within {timeout:.0f}s")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as response:
        return response.status == 200


def redis_server_argv(port: int) -> list[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("bench: redis-server is not installed (apt-get install redis-server)")
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--protected-mode", "no"]


def megabrain_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "api.cli.main", *args]


def fake_upstream_argv(port: int, tokens: int) -> list[str]:
    return [sys.executable, "-m", "bench.upstream", "--port", str(port), "--tokens", str(tokens)]
