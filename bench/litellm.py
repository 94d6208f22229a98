"""LiteLLM proxy as the yardstick: installed in the bench's own virtualenv, never in the project's.

``python -m bench --setup-litellm`` creates ``.bench/litellm-venv`` and installs one pinned release there;
``python -m bench`` then runs the proxy beside the gateway (same fake upstream, minimal config: no database,
no callbacks, no master key) whenever that virtualenv exists.

The pin matters: LiteLLM's PyPI releases 1.82.7 and 1.82.8 (March 2026) and 1.107.0 (October 2026) were
published by attackers and steal credentials (1.82.8 from a ``.pth`` file that runs at every interpreter
start). 1.83.0 was the first release from the rebuilt CI/CD after the first incident; 1.83.7 also carries
the fix for CVE-2026-42271. After installing we still refuse a virtualenv holding a ``litellm*.pth`` file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.procs import REPO

VERSION = "1.83.7"
COMPROMISED = ("1.82.7", "1.82.8", "1.107.0")
VENV = REPO / ".bench" / "litellm-venv"
MODEL = "bench-model"

CONFIG = """\
# Written by bench/litellm.py: one model on the bench's fake upstream, nothing else.
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{upstream_model}
      api_base: http://127.0.0.1:{upstream_port}/v1
      api_key: sk-bench
litellm_settings:
  callbacks: []
  success_callback: []
  failure_callback: []
  drop_params: true
  telemetry: false
general_settings: {{}}
"""


def binary() -> Path:
    return VENV / "bin" / "litellm"


def installed() -> bool:
    return binary().exists()


def setup() -> None:
    """Create the virtualenv and install the pinned proxy into it (a no-op when already there)."""
    assert VERSION not in COMPROMISED
    if not (VENV / "bin" / "python").exists():
        VENV.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", f"litellm[proxy]=={VERSION}"], check=True)
    check()
    print(f"bench: LiteLLM proxy {VERSION} installed in {VENV}", file=sys.stderr)


def check() -> None:
    """Refuse a virtualenv whose LiteLLM is not the pinned release or that holds a start-up hook of it."""
    hooks = list(VENV.glob("lib/python*/site-packages/litellm*.pth"))
    if hooks:
        raise SystemExit(f"bench: {hooks[0]} exists: a compromised LiteLLM release; delete {VENV}")
    found = subprocess.run([str(VENV / "bin" / "python"), "-c",
                            "import importlib.metadata as m; print(m.version('litellm'))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    if found in COMPROMISED or found != VERSION:
        raise SystemExit(f"bench: {VENV} has LiteLLM {found}, not {VERSION}; run python -m bench --setup-litellm")


def write_config(path: Path, upstream_port: int, upstream_model: str) -> Path:
    path.write_text(CONFIG.format(model=MODEL, upstream_model=upstream_model, upstream_port=upstream_port))
    return path


def argv(config: Path, port: int) -> list[str]:
    return [str(binary()), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", "1"]


def env() -> dict[str, str]:
    """No network look-ups (cost map, telemetry), quiet logs."""
    return {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False",
            "DISABLE_ADMIN_UI": "True", "NO_DOCS": "True"}
