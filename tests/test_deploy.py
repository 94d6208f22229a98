"""Deploys as the card says: built from a clean checkout the way the platform builds it, then the Procfile run
as it is, with app.json's formation and defaults, against a real Redis and the fake OpenAI upstream.

The build (tests/buildpack.py) copies only what git tracks, makes a fresh virtualenv and installs from
uv.lock, non-editable; from a warm uv cache it takes a few seconds, from a cold one it downloads every
locked wheel once (bounded by ``buildpack.INSTALL_TIMEOUT``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from common.metrics import decode_snapshot
from common.names import Names
from tests import buildpack
from tests.fakes.openai_server import OpenAIFakeState
from tests.fakes.server import free_port
from tests.harness import EXPECTED, wait_until

# The top-level directories of the repository that are not part of the deployed app; every other tracked
# package (a directory with an __init__.py) must reach the wheel whole, data files included.
NOT_SHIPPED = {"tests", "bench"}
BOOT_TIMEOUT = 60.0  # Heroku's R10: a web process that has not bound $PORT within 60 s is killed
CLIENT_IP = "203.0.113.7"  # what the Heroku router appends to X-Forwarded-For


@pytest.fixture(scope="module")
def built_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(the app's directory, its virtualenv): the platform's build of this checkout."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the deploy check reads /proc to follow the formation's processes (Linux only)")
    if not buildpack.tracked_files():
        pytest.skip("the deploy check builds from what git tracks: this is not a git checkout, or git is missing")
    try:
        from uv import find_uv_bin
    except ImportError:
        pytest.skip("uv is not installed: it comes with the test extras (README, Quickstart step 2)")
    pinned = (buildpack.REPO / ".python-version").read_text().strip()
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not (pinned == running or pinned.startswith(running + ".")):
        pytest.skip(f"the platform builds with Python {pinned} (.python-version); these tests run on {running}")
    root = tmp_path_factory.mktemp("deploy")
    app = buildpack.tracked_copy(root / "app")
    venv = root / "venv"
    try:
        seconds = buildpack.install_from_lock(find_uv_bin(), app, venv)
    except buildpack.BuildError as exc:
        pytest.fail(f"the platform's build fails: {exc}", pytrace=False)
    print(f"\nbuilt like the platform in {seconds:.1f} s (fresh virtualenv, uv sync --locked --no-editable)")
    yield app, venv


def site_packages(venv: Path) -> Path:
    (path,) = venv.glob("lib/python3*/site-packages")
    return path


def test_app_json_meets_its_schema() -> None:
    """app.json against the fields Heroku's app.json schema requires and the values it allows
    (devcenter.heroku.com/articles/app-json-schema), and against the Procfile it describes."""
    spec = json.loads((buildpack.REPO / "app.json").read_text())
    allowed = {"name", "description", "keywords", "website", "repository", "logo", "success_url", "scripts",
               "env", "formation", "image", "addons", "buildpacks", "environments", "stack"}
    assert set(spec) <= allowed, f"fields app.json does not know: {sorted(set(spec) - allowed)}"
    assert isinstance(spec.get("name", ""), str) and len(spec.get("name", "")) <= 30, "name: 30 characters at most"
    assert spec.get("stack") in (None, "heroku-22", "heroku-24")
    for buildpack_entry in spec.get("buildpacks", []):
        assert isinstance(buildpack_entry.get("url"), str) and buildpack_entry["url"], "each buildpack needs a url"
    for addon in spec.get("addons", []):
        assert isinstance(addon, str) or (isinstance(addon, dict) and isinstance(addon.get("plan"), str)), \
            f"an add-on is a plan name or an object with a plan: {addon!r}"
    for name, variable in spec.get("env", {}).items():
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", name), f"env: {name} is not a config var name"
        if isinstance(variable, str):
            continue
        assert set(variable) <= {"description", "value", "required", "generator"}, f"env.{name}: {set(variable)}"
        assert variable.get("generator") in (None, "secret"), f"env.{name}: generator is 'secret' or absent"
        # a variable without a default is asked for at set-up unless it says required: false
        assert "value" in variable or "generator" in variable or variable.get("required") is False, \
            f"env.{name} has no value, no generator and is not marked required: false"
    sizes = {"eco", "basic", "standard-1x", "standard-2x", "performance-m", "performance-l", "private-s",
             "private-m", "private-l", "shield-s", "shield-m", "shield-l"}
    formation = spec.get("formation", {})
    for name, entry in formation.items():
        assert isinstance(entry.get("quantity"), int) and entry["quantity"] >= 0, f"formation.{name}: quantity"
        assert entry.get("size", "basic") in sizes, f"formation.{name}: size {entry.get('size')!r}"
    procfile = buildpack.procfile(buildpack.REPO)
    assert set(formation) == set(procfile), (
        f"app.json's formation and the Procfile name different process types: "
        f"{sorted(set(formation) ^ set(procfile))}")
    assert formation["web"]["quantity"] >= 1
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", name) for name in procfile)


def test_the_wheel_carries_every_package_and_data_file(built_app: tuple[Path, Path]) -> None:
    """Every tracked file of every shipped package (modules, templates, any data) is in the installed wheel."""
    app, venv = built_app
    tracked = buildpack.tracked_files()
    packages = {path.split("/", 1)[0] for path in tracked
                if path.count("/") == 1 and path.endswith("/__init__.py")} - NOT_SHIPPED
    assert {"api", "workers", "router", "common"} <= packages
    installed = site_packages(venv)
    missing = [path for path in tracked
               if path.split("/", 1)[0] in packages and not (installed / path).is_file()]
    assert not missing, f"the wheel leaves out {len(missing)} tracked file(s), e.g. {missing[:8]}"
    assert not list(installed.glob("__editable__*")), "the project went in editable, not as a wheel"
    assert (venv / "bin" / "megabrain").exists(), "the console script the Procfile runs is not installed"


def test_the_procfile_formation_serves_and_stops(built_app: tuple[Path, Path], redis_url: str,
                                                 fake_openai: tuple[OpenAIFakeState, str],
                                                 tmp_path: Path) -> None:
    """honcho runs the Procfile as it is; web answers /health and /ready; a chat request through web is
    answered by the worker_openai process (the fake saw the call, and the upstream call is counted in that
    process's own metrics); SIGTERM ends every process within app.json's grace period."""
    app, venv = built_app
    state, upstream = fake_openai
    port = free_port()
    namespace = f"deploy-{uuid.uuid4().hex[:10]}"
    env = {
        "PORT": str(port),
        "HOST": "127.0.0.1",  # a dyno binds 0.0.0.0; this shared machine only loopback
        "REDIS_URL": redis_url,  # what the heroku-redis add-on sets
        "MEGABRAIN_NAMESPACE": namespace,  # its own keys on the suite's Redis
        "OPENAI_BASE_URL": upstream,
        "OPENAI_API_KEY": "sk-upstream-test",
    }
    formation = buildpack.Formation(app, venv, env, tmp_path / "honcho.log")
    grace = float(formation.env["MEGABRAIN_SHUTDOWN_GRACE"])
    base = f"http://127.0.0.1:{port}"
    try:
        formation.start()
        assert wait_until(formation.started, 30), f"honcho did not start the formation:\n{formation.log()}"
        wait_until(lambda: _status(base + "/health") == 200 or formation.exited(), BOOT_TIMEOUT)
        assert _status(base + "/health") == 200, \
            f"web did not answer /health within {BOOT_TIMEOUT:.0f} s:\n{formation.log()}"
        assert wait_until(lambda: _ready(base, "openai"), 30), \
            f"/ready did not report the openai pool's worker:\n{formation.log()}"
        assert wait_until(lambda: "serving pools: anthropic" in formation.log(), 30), \
            f"worker_anthropic did not start serving:\n{formation.log()}"

        key = _create_key(venv, formation.env)
        marker = f"deploy check {uuid.uuid4().hex}"
        client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=20,
                               default_headers={"X-Forwarded-For": CLIENT_IP})
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": marker}])
        assert answer.choices[0].message.content == EXPECTED
        assert (answer.model_extra or {}).get("provider") == "openai"
        assert any(marker in json.dumps(entry) for entry in state.requests), "the fake upstream never saw the call"

        # which process made the upstream call: each process's metrics snapshot is keyed by its pid
        openai_worker, = formation.processes("worker_openai.1")
        others = {pid for name in formation.groups if name != "worker_openai.1" for pid in formation.processes(name)}
        assert wait_until(lambda: _upstream_calls(redis_url, namespace).get(openai_worker, 0) >= 1, 15), \
            f"worker_openai ({openai_worker}) counted no upstream call: {_upstream_calls(redis_url, namespace)}"
        assert not any(_upstream_calls(redis_url, namespace).get(pid, 0) for pid in others)

        page = httpx.get(base + "/signup", headers={"X-Forwarded-For": CLIENT_IP}, timeout=10)
        assert page.status_code == 200 and "<form" in page.text, "the account pages' templates did not render"

        # a dyno restart mid-answer: the stream that is running when SIGTERM arrives still ends whole
        state.token_delay = 0.15
        stream = _Stream(client, marker)
        assert stream.first_token.wait(20), f"the stream sent no token: {stream.error!r}"
        running = formation.alive()
        formation.terminate()
        stopping = time.monotonic()
        ended = wait_until(lambda: not formation.alive(), grace)
        print(f"{len(running)} processes ended {time.monotonic() - stopping:.1f} s after SIGTERM")
        stream.thread.join(5)
        assert stream.error is None and stream.text == EXPECTED, (stream.error, stream.text)
        assert ended, (f"still running {grace:.0f} s after SIGTERM: "
                       f"{[(pid, buildpack.cmdline(pid)) for pid in formation.alive()]}\n{formation.log()}")
        assert len(running) >= 6  # shells, web's uvicorn and its 2 processes, the two workers
        assert formation.honcho is not None and formation.honcho.wait(10) is not None
        assert "SIGKILL" not in formation.log()
    finally:
        formation.kill()


class _Stream:
    """A streamed chat completion read in a thread, so the test can stop the formation while it runs."""

    def __init__(self, client: openai.OpenAI, content: str) -> None:
        self.client, self.content = client, content
        self.text = ""
        self.error: BaseException | None = None
        self.first_token = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for chunk in self.client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": self.content}], stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    self.text += chunk.choices[0].delta.content
                    self.first_token.set()
        except BaseException as exc:
            self.error = exc
        finally:
            self.first_token.set()


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=1).status_code
    except httpx.HTTPError:
        return 0


def _ready(base: str, pool: str) -> bool:
    """/ready answers 200 and lists a live worker for ``pool`` (it lists the configured providers' pools)."""
    try:
        response = httpx.get(base + "/ready", timeout=1)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and pool in response.json().get("pools_with_workers", [])


def _create_key(venv: Path, env: dict[str, str]) -> str:
    """``megabrain keys create``, as an operator runs it in a one-off dyno (``heroku run``)."""
    result = subprocess.run([str(venv / "bin" / "megabrain"), "keys", "create", "--name", "deploy-check"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _upstream_calls(redis_url: str, namespace: str) -> dict[int, float]:
    """pid → upstream calls to openai counted in that process's metrics snapshot (``<ns>:metrics``)."""
    import asyncio

    from common.redis import connect

    async def read() -> dict[bytes, bytes]:
        redis = connect(redis_url)
        try:
            return await redis.hgetall(Names(namespace).key("metrics"))
        finally:
            await redis.aclose()

    calls: dict[int, float] = {}
    for field, raw in asyncio.run(read()).items():
        samples = decode_snapshot(raw, time.time()) or {}
        count = sum(value for (family, _, _), values in samples.items()
                    if family == "megabrain_upstream_duration_seconds"
                    for (sample, labels), value in values.items()
                    if sample.endswith("_count") and ("provider", "openai") in labels)
        calls[int(field.decode().split("-", 1)[0])] = count
    return calls
