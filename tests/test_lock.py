"""The lock (``uv.lock``) says exactly what gets deployed, and it is never out of step with pyproject.toml.

Heroku's Python buildpack installs with ``uv sync --locked``, which refuses a lock that does not match
pyproject.toml; these checks fail the same mistake here first, without the network, and say the one
command that mends it.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[1]
LOCK_COMMAND = ".venv/bin/uv lock"
OUT_OF_STEP = f"""uv.lock does not match pyproject.toml: a dependency was added, removed or changed without
its lock, or the lock was edited by hand. Regenerate it (every other pin stays as it is; only what
changed is resolved), then commit uv.lock with pyproject.toml:

    {LOCK_COMMAND}

(A deliberate upgrade of one dependency: {LOCK_COMMAND} --upgrade-package NAME.)"""


def uv_binary() -> str:
    try:
        from uv import find_uv_bin
    except ImportError:
        pytest.skip("uv is not installed: it comes with the test extras (README, Quickstart step 2)")
    return find_uv_bin()


def locked_versions() -> dict[str, str]:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    return {p["name"]: p["version"] for p in lock["package"] if "version" in p}


def test_lock_matches_pyproject() -> None:
    """``uv lock --check --offline``: a lock in step needs no network (uv validates it against pyproject.toml
    without resolving); one out of step fails, offline or not."""
    result = subprocess.run([uv_binary(), "lock", "--check", "--offline"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    if result.returncode != 0:
        pytest.fail(f"{OUT_OF_STEP}\n\nuv said:\n{result.stderr.strip()}", pytrace=False)


def test_python_version_agrees_with_the_lock() -> None:
    """The buildpack installs the Python that ``.python-version`` names, then refuses to sync when the
    project's (and so the lock's) ``requires-python`` excludes it."""
    pinned = (REPO / ".python-version").read_text().strip()
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert SpecifierSet(lock["requires-python"]) == SpecifierSet(project["requires-python"]), OUT_OF_STEP
    assert SpecifierSet(lock["requires-python"]).contains(pinned), (
        f".python-version asks for Python {pinned}, which uv.lock's requires-python "
        f"({lock['requires-python']}) excludes: the platform's build would fail")


def test_readme_bootstraps_the_locked_uv() -> None:
    """README's commands install uv before syncing from the lock; the version they name is the lock's (so an
    upgrade of uv in the lock is not half done)."""
    named = set(re.findall(r"uv==([0-9][0-9A-Za-z.]*)", (REPO / "README.md").read_text()))
    assert named, "README's install commands name no uv version"
    assert named == {locked_versions()["uv"]}, (
        f"README installs uv {', '.join(sorted(named))}; uv.lock pins {locked_versions()['uv']}")


def test_ci_runs_the_readme_test_command() -> None:
    """CI installs and tests exactly as README's Quickstart step 2 tells a developer to."""
    readme = (REPO / "README.md").read_text()
    commands = [line.strip() for line in readme.splitlines()
                if "--extra test" in line and line.strip().endswith("pytest -q")]
    assert len(commands) == 1, "README should have one test command (Quickstart, step 2)"
    assert commands[0] in (REPO / ".ci" / "run").read_text().splitlines(), ".ci/run does not run README's test command"
