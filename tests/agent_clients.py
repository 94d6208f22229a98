"""Where the tests find the real clients from npm: the coding CLIs and the Node SDKs.

``.ci/run`` installs them, at the versions pinned in ``tests/node/package.json``, into ``.clients/`` at
the repository's root (gitignored). ``MEGABRAIN_CLIENTS_DIR`` names another ``node_modules`` directory
to look in first (e.g. ``/work/clis/node_modules`` while developing). A test that needs a client that
is in neither place is skipped, saying which and how to install it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLIENTS_ENV = "MEGABRAIN_CLIENTS_DIR"
REPO_MODULES = ROOT / ".clients" / "node_modules"
NODE_SCRIPTS = ROOT / "tests" / "node"
INSTALL_HINT = "run .ci/run (it installs tests/node/package.json into .clients/) or set MEGABRAIN_CLIENTS_DIR"


def module_dirs() -> list[Path]:
    dirs = [Path(os.environ[CLIENTS_ENV])] if os.environ.get(CLIENTS_ENV) else []
    return dirs + [REPO_MODULES]


def cli_path(name: str) -> str | None:
    """The executable of an npm CLI (``claude``, ``codex``, ``gemini``, ``opencode``), or None."""
    for directory in module_dirs():
        candidate = directory / ".bin" / name
        if candidate.exists() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def module_path(package: str) -> Path | None:
    """The installed directory of an npm package (``openai``, ``@anthropic-ai/sdk``), or None."""
    for directory in module_dirs():
        if (directory / package / "package.json").exists():
            return directory / package
    return None


def node() -> str | None:
    return shutil.which("node")


def require_cli(name: str) -> str:
    path = cli_path(name)
    if path is None:
        pytest.skip(f"the {name} CLI is not installed: {INSTALL_HINT}")
    if node() is None:
        pytest.skip("node is not on PATH: the npm CLIs need it")
    return path


def require_node_package(package: str) -> Path:
    if node() is None:
        pytest.skip("node is not on PATH")
    path = module_path(package)
    if path is None:
        pytest.skip(f"the npm package {package} is not installed: {INSTALL_HINT}")
    return path


def package_version(package_dir: Path) -> str:
    import json

    return str(json.loads((package_dir / "package.json").read_text()).get("version", "?"))


def cli_version(name: str) -> str:
    """The CLI's own package version (for the compatibility table)."""
    packages = {"claude": "@anthropic-ai/claude-code", "codex": "@openai/codex", "gemini": "@google/gemini-cli",
                "opencode": "opencode-ai"}
    path = module_path(packages[name])
    return package_version(path) if path else "?"


def run_node(script: str, payload: str, *, package: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``tests/node/<script>`` with ``payload`` (JSON) on stdin; ``require(package)`` resolves to the
    installed copy (NODE_PATH: CommonJS resolution)."""
    location = require_node_package(package)
    modules = location.parent.parent if package.startswith("@") else location.parent
    env = {**os.environ, "NODE_PATH": str(modules)}
    return subprocess.run([node() or "node", str(NODE_SCRIPTS / script)], input=payload, capture_output=True,
                          text=True, timeout=timeout, env=env)
