"""What the platform does with the repository: build it as Heroku's Python buildpack does, run it as the dyno
manager does. Used by tests/test_deploy.py.

- **Build.** ``git push`` sends only what git tracks; the buildpack installs the Python of ``.python-version``
  and runs ``uv sync --locked --no-default-groups`` into it (heroku-buildpack-python, lib/uv.sh). Here: the
  tracked files copied to an empty directory, a fresh virtualenv, and the same ``uv sync`` plus
  ``--no-editable``: the project goes in as a built wheel, so a package or data file the wheel leaves out is
  missing at run time (on Heroku ``/app`` is on ``PYTHONPATH`` as well, which would hide it there, but not
  from ``pip install .`` anywhere else).
- **Run.** The ``Procfile`` as it is, by honcho (a Procfile runner), with app.json's formation and variable
  defaults, ``PORT``, and ``WEB_CONCURRENCY`` as the buildpack sets it for the formation's dyno size.
  Heroku sends SIGTERM to every process of a dyno, then SIGKILL 30 s later; honcho sends SIGTERM to each
  process group it started. Its ``/bin/sh`` (dash) does not exec the command, so a shell dies at once and
  its ``megabrain`` process goes on alone: the formation ends when every process of those groups has.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT = 600.0  # seconds; from a warm uv cache it takes a few (see README, "Deploying on Heroku")
# heroku-buildpack-python, vendor/WEB_CONCURRENCY.sh: min(cores*2+1, RAM_MB/256), so 2 on a basic
# (512 MB) dyno; uvicorn reads it as its process count (`megabrain web` passes it on)
WEB_CONCURRENCY_BY_SIZE = {"eco": 2, "basic": 2, "standard-1x": 2, "standard-2x": 4, "performance-m": 5,
                           "performance-l": 17}


class BuildError(Exception):
    """The build failed the way a platform build would (its output is the message)."""


def tracked_files() -> list[str]:
    """What git tracks (what ``git push`` sends), or [] outside a git checkout or without git."""
    try:
        listing = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True)
    except OSError:
        return []
    return [os.fsdecode(raw) for raw in listing.stdout.split(b"\0") if raw] if listing.returncode == 0 else []


def tracked_copy(dest: Path) -> Path:
    """The files git tracks, as they are in the work tree, copied under ``dest`` (nothing untracked or
    ignored: no .venv, no egg-info, no __pycache__)."""
    for name in tracked_files():
        src = REPO / name
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the work tree, not yet committed
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)
    return dest


def install_from_lock(uv: str, app: Path, venv: Path) -> float:
    """A fresh virtualenv, then the buildpack's install from the lock (non-editable); returns the seconds it
    took. uv's own cache is reused, as a rebuild's is on the platform."""
    # the caller's uv settings stay (cache, index, offline), except those that would pick another environment
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "UV_PYTHON", "UV_SYSTEM_PYTHON")}
    env.update(UV_PROJECT_ENVIRONMENT=str(venv), UV_NO_MANAGED_PYTHON="1", UV_PYTHON_DOWNLOADS="never")
    started = time.monotonic()
    for command in ([uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
                    [uv, "sync", "--locked", "--no-default-groups", "--no-editable"],
                    # every installed package's own requirements are installed too: a lock that lost an
                    # edge (aiohttp → yarl) still syncs, and would fail only at import, or later
                    [uv, "pip", "check", "--python", str(venv / "bin" / "python")]):
        try:
            result = subprocess.run(command, cwd=app, env=env, capture_output=True, text=True,
                                    timeout=INSTALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise BuildError(f"{' '.join(command[:2])} took more than {INSTALL_TIMEOUT:.0f} s") from None
        if result.returncode != 0:
            raise BuildError(f"{' '.join(command)} failed:\n{(result.stderr + result.stdout).strip()}")
    return time.monotonic() - started


def app_json(app: Path) -> dict[str, Any]:
    return json.loads((app / "app.json").read_text())


def procfile(app: Path) -> dict[str, str]:
    """Process type → command, as a Procfile runner reads it."""
    types: dict[str, str] = {}
    for line in (app / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            types[name.strip()] = command.strip()
    return types


def formation_env(app: Path) -> dict[str, str]:
    """app.json's variables that carry a default (``value``, or a generated ``secret``)."""
    env: dict[str, str] = {}
    for name, spec in app_json(app).get("env", {}).items():
        if isinstance(spec, str):
            env[name] = spec
        elif "value" in spec:
            env[name] = str(spec["value"])
        elif spec.get("generator") == "secret":
            env[name] = secrets.token_hex(32)
    return env


def alive_in_groups(groups: list[int]) -> list[int]:
    """Live (not zombie) processes whose process group is one of ``groups`` (Linux /proc)."""
    wanted = set(groups)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
        if fields[0] != "Z" and int(fields[2]) in wanted:
            found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


class Formation:
    """``honcho start`` of the app's Procfile with app.json's formation, in the app's directory."""

    def __init__(self, app: Path, venv: Path, env: dict[str, str], log_path: Path) -> None:
        spec = app_json(app)["formation"]
        self.app = app
        self.quantities = {name: int(entry["quantity"]) for name, entry in spec.items()}
        web_size = spec.get("web", {}).get("size", "basic")
        self.env = {
            "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": os.environ.get("HOME", "/tmp"),
            "LANG": "C.UTF-8",
            # what the buildpack's .profile.d scripts export on every dyno (bin/compile, vendor/*.sh)
            "PYTHONUNBUFFERED": "true",
            "WEB_CONCURRENCY": str(WEB_CONCURRENCY_BY_SIZE.get(web_size, 2)),
            "FORWARDED_ALLOW_IPS": "*",  # uvicorn would trust X-Forwarded-For from anyone: ours must not
            **formation_env(app),
            **env,
        }
        self.log_path = log_path
        self._log: TextIO | None = None
        self.honcho: subprocess.Popen[bytes] | None = None
        self.groups: dict[str, int] = {}  # "worker_openai.1" → its process group (the shell's pid)

    def start(self) -> "Formation":
        concurrency = ",".join(f"{name}={n}" for name, n in self.quantities.items())
        self._log = open(self.log_path, "w")
        self.honcho = subprocess.Popen(
            [sys.executable, "-m", "honcho", "--no-colour", "start", "-c", concurrency],
            cwd=self.app, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def started(self) -> bool:
        """Every process of the formation has started (honcho says ``NAME started (pid=N)``)."""
        for line in self.log().splitlines():
            if " started (pid=" in line and "|" in line:
                name = line.split("|", 1)[1].split(" started (pid=")[0].strip()
                self.groups[name] = int(line.rsplit("pid=", 1)[1].rstrip(")\n "))
        return len(self.groups) == sum(self.quantities.values())

    def processes(self, name: str) -> list[int]:
        """The processes one Procfile line started, less its shell (the group's leader): for ``web.1``
        uvicorn's supervisor and its workers, for ``worker_openai.1`` the one worker process."""
        group = self.groups[name]
        return [pid for pid in alive_in_groups([group]) if pid != group]

    def exited(self) -> bool:
        """honcho is gone: one of the formation's processes exited, so honcho stopped them all."""
        return self.honcho is not None and self.honcho.poll() is not None

    def alive(self) -> list[int]:
        return alive_in_groups(list(self.groups.values()))

    def terminate(self) -> None:
        """SIGTERM, as the dyno manager sends it: honcho passes it to every process group it started."""
        assert self.honcho is not None
        self.honcho.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Clean-up: SIGKILL whatever is left (the test failed or timed out)."""
        for group in self.groups.values():
            try:
                os.killpg(group, signal.SIGKILL)
            except OSError:
                pass
        if self.honcho and self.honcho.poll() is None:
            self.honcho.kill()
        if self.honcho:
            self.honcho.wait(10)
        if self._log:
            self._log.close()
