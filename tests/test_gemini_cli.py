"""The real Gemini CLI (``@google/gemini-cli`` from npm) completing a two-step tool session through the
gateway: asked to create a file, it gets a ``write_file`` call, writes the file with its own tool, sends
the result back and prints the final answer.

On a Gemini 3 model the request goes natively to the strict scripted Gemini fake (which refuses a call
turn whose thought signature is missing or altered); on an OpenAI chat model it is translated to the
scripted OpenAI fake. Headless, with a throwaway HOME (README "Gemini CLI" says why each setting is there).

The CLI is found in ``$MEGABRAIN_CLIENTS_DIR/.bin`` or ``.clients/node_modules/.bin`` (``.ci/run``
installs it there); without it, or without node, the test is skipped and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.agent_gemini import FINAL_TEXT, AgentTask, GeminiAgentSession, create_app as gemini_agent_app
from tests.fakes.server import ThreadedServer
from tests.harness import GatewayHarness, create_key, env_for

ROOT = Path(__file__).resolve().parent.parent
CLIENTS_ENV = "MEGABRAIN_CLIENTS_DIR"
SESSION_TIMEOUT = float(os.environ.get("MEGABRAIN_AGENT_TIMEOUT", "180"))
GEMINI = "gemini-3-flash-preview"
GPT = "gpt-4o-mini"
CONTENT = "hello from gemini cli"
# Headless Gemini CLI 0.61 against a gateway: "gemini-api-key" auth (with GOOGLE_GEMINI_BASE_URL alone it
# picks the "gateway" auth type, which its headless start refuses: "Invalid auth method selected"), and
# no usage statistics or telemetry (they go to Google's servers, not through the base URL).
SETTINGS = {"security": {"auth": {"selectedType": "gemini-api-key"}},
            "privacy": {"usageStatisticsEnabled": False}, "telemetry": {"enabled": False},
            "general": {"disableAutoUpdate": True, "disableUpdateNag": True}}


def gemini_cli() -> str:
    dirs = [Path(os.environ[CLIENTS_ENV])] if os.environ.get(CLIENTS_ENV) else []
    for directory in [*dirs, ROOT / ".clients" / "node_modules"]:
        candidate = directory / ".bin" / "gemini"
        if candidate.exists() and os.access(candidate, os.X_OK):
            if shutil.which("node") is None:
                pytest.skip("node is not on PATH: Gemini CLI needs it")
            return str(candidate)
    pytest.skip(f"Gemini CLI is not installed: run .ci/run (npm install into .clients/) or set {CLIENTS_ENV} "
                "to a node_modules directory holding @google/gemini-cli")


def openai_agent_fake() -> Any:
    """The conformance suite's scripted strict OpenAI chat fake (``tests/fakes/agent_openai.py``), or None."""
    try:
        from tests.fakes import agent_openai, agent_script
    except ImportError:
        return None
    return agent_openai, agent_script


@dataclass
class Stack:
    gateway: GatewayHarness
    key: str
    gemini: GeminiAgentSession
    openai: Any  # agent_script.AgentSession, when the OpenAI fake is in the tree


@pytest.fixture(scope="module")
def stack(redis_url: str) -> Iterator[Stack]:
    gemini = GeminiAgentSession(AgentTask("/nonexistent", CONTENT))
    fake = openai_agent_fake()
    openai = fake[1].AgentSession(fake[1].AgentTask("/nonexistent", CONTENT)) if fake else None
    with ExitStack() as running:
        gemini_url = running.enter_context(ThreadedServer(gemini_agent_app(gemini))).url
        extra = {}
        if fake:
            openai_url = running.enter_context(ThreadedServer(fake[0].create_app(openai))).url
            extra = {"OPENAI_BASE_URL": openai_url + "/v1", "OPENAI_API_KEY": "sk-agent-fake"}
        env = env_for(redis_url, GEMINI_BASE_URL=gemini_url, GEMINI_API_KEY="test-gemini-key",
                      MEGABRAIN_UPSTREAM_MAX_RETRIES="0", MEGABRAIN_REQUEST_TIMEOUT="120", **extra)
        key = create_key(redis_url, env["MEGABRAIN_NAMESPACE"], "gemini-cli")
        pools = ("google", "openai") if fake else ("google",)
        gateway = running.enter_context(GatewayHarness.from_env(env, pools=pools))
        yield Stack(gateway, key, gemini, openai)


def run_cli(binary: str, model: str, prompt: str, *, url: str, key: str, home: Path, cwd: Path) -> tuple[int | None, str]:
    """One headless session in its own process group; past the time bound the whole group is killed."""
    (home / ".gemini").mkdir(parents=True, exist_ok=True)
    (home / ".gemini" / "settings.json").write_text(json.dumps(SETTINGS))
    env = {k: v for k, v in os.environ.items()
           if not k.endswith(("_API_KEY", "_BASE_URL")) and not k.startswith(("GOOGLE_", "GEMINI_"))}
    env.update(HOME=str(home), NO_COLOR="1", GOOGLE_GEMINI_BASE_URL=url, GEMINI_API_KEY=key)
    argv = [binary, "-p", prompt, "-m", model, "--yolo", "--skip-trust"]
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=SESSION_TIMEOUT)
        return proc.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return None, output + f"\n[killed after {SESSION_TIMEOUT:.0f} s]"


def test_gemini_cli_tool_session_native(stack: Stack, tmp_path: Path) -> None:
    binary = gemini_cli()
    workdir = tmp_path / "project"
    workdir.mkdir()
    task = AgentTask(str(workdir / "hello.txt"), CONTENT)
    stack.gemini.reset(task)
    code, output = run_cli(binary, GEMINI, task.prompt(), url=stack.gateway.url, key=stack.key,
                           home=tmp_path / "home", cwd=workdir)
    assert code == 0, output[-3000:] + "\n" + stack.gemini.explain()
    assert Path(task.path).read_text() == CONTENT
    assert stack.gemini.completed, stack.gemini.explain()
    assert FINAL_TEXT in output
    assert {r["method"] for r in stack.gemini.requests} == {"streamGenerateContent"}
    assert not stack.gemini.refusals, stack.gemini.refusals


def test_gemini_cli_tool_session_translated(stack: Stack, tmp_path: Path) -> None:
    binary = gemini_cli()
    fake = openai_agent_fake()
    if fake is None:
        pytest.skip("the scripted OpenAI agent fake (tests/fakes/agent_openai.py) is not in this tree")
    workdir = tmp_path / "project"
    workdir.mkdir()
    task = fake[1].AgentTask(str(workdir / "hello.txt"), CONTENT)
    stack.openai.reset(task)
    code, output = run_cli(binary, GPT, task.prompt(), url=stack.gateway.url, key=stack.key,
                           home=tmp_path / "home", cwd=workdir)
    assert code == 0, output[-3000:] + "\n" + stack.openai.explain()
    assert Path(task.path).read_text() == CONTENT
    assert stack.openai.completed, stack.openai.explain()
    assert fake[1].FINAL_TEXT in output
