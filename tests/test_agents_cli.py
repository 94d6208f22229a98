"""The real coding CLIs completing a two-turn tool session through the gateway, against the strict
scripted fakes (``tests/fakes/agent_*.py``): asked to create a file, the agent gets a call to its own
write tool, runs it, sends the result back and gets the final text. A session passes when the file holds
the expected content, the fake saw the tool result, and nothing was refused.

The CLIs come from npm at pinned versions (``tests/node/package.json``; ``.ci/run`` installs them, see
``tests/agent_clients.py``); a missing one is skipped, saying so. Sessions run one at a time, each
bounded by ``MEGABRAIN_AGENT_TIMEOUT`` seconds (default 180); each outcome is a row of README's
compatibility table (``tests/compat.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import agent_clients
from tests.agent_stack import CLAUDE, FAMILY, GEMINI, GPT, REASONING, AgentStack, clean_env, run_agent
from tests.fakes.agent_script import AgentSession, AgentTask


@pytest.fixture(scope="module")
def stack(redis_url: str) -> Iterator[AgentStack]:
    with AgentStack(redis_url) as running:
        yield running


def compat(client: str, package: str, protocol: str, model: str) -> pytest.MarkDecorator:
    return pytest.mark.compat(client=client, npm=package, protocol=protocol, family=FAMILY[model])


def assert_session(session: AgentSession, task: AgentTask, output: str) -> None:
    why = f"{session.explain()}\n--- agent output (tail) ---\n{output[-2000:]}"
    assert not session.refusals, why
    assert session.results, f"the fake never saw the tool result: {why}"
    assert session.completed, why
    assert Path(task.path).read_text() == task.content, why


# ------------------------------------------------------------------------------ Claude Code


def claude_code(stack: AgentStack, tmp_path: Path, model: str) -> tuple[AgentTask, str]:
    claude = agent_clients.require_cli("claude")
    workdir = tmp_path / "work"
    workdir.mkdir()
    task = stack.begin(workdir)
    # Claude Code's background requests (titles, summaries) use a Haiku model: the model under test
    # serves them too, so the session needs one model only.
    env = clean_env(tmp_path / "home", ANTHROPIC_BASE_URL=stack.url, ANTHROPIC_API_KEY=stack.key,
                    ANTHROPIC_DEFAULT_HAIKU_MODEL=model, DISABLE_TELEMETRY="1", DISABLE_AUTOUPDATER="1",
                    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1")
    run = run_agent([claude, "-p", task.prompt(), "--model", model, "--permission-mode", "acceptEdits",
                     "--allowedTools", "Write"], env=env, cwd=workdir)
    return task, run.output


@pytest.mark.parametrize("model", [
    pytest.param(CLAUDE, marks=compat("Claude Code", "@anthropic-ai/claude-code", "Anthropic Messages", CLAUDE)),
    pytest.param(GPT, marks=compat("Claude Code", "@anthropic-ai/claude-code", "Anthropic Messages", GPT)),
    pytest.param(REASONING, marks=compat("Claude Code", "@anthropic-ai/claude-code", "Anthropic Messages",
                                         REASONING)),
    pytest.param(GEMINI, marks=compat("Claude Code", "@anthropic-ai/claude-code", "Anthropic Messages", GEMINI)),
])
def test_claude_code_writes_a_file(stack: AgentStack, tmp_path: Path, model: str) -> None:
    task, output = claude_code(stack, tmp_path, model)
    session = stack.session_for(model)
    assert_session(session, task, output)
    assert session.calls and set(session.calls.values()) == {"Write"}
    if model == CLAUDE:  # the native path, with extended thinking on every turn
        main = [r["body"] for r in session.requests if r["body"].get("tools")]
        assert all((b.get("thinking") or {}).get("type") == "enabled" for b in main)


# ------------------------------------------------------------------------------ Codex


@pytest.mark.parametrize("model", [
    pytest.param(GPT, marks=compat("Codex CLI", "@openai/codex", "OpenAI Responses", GPT)),
    pytest.param(REASONING, marks=compat("Codex CLI", "@openai/codex", "OpenAI Responses", REASONING)),
    pytest.param(GEMINI, marks=compat("Codex CLI", "@openai/codex", "OpenAI Responses", GEMINI)),
])
def test_codex_writes_a_file(stack: AgentStack, tmp_path: Path, model: str) -> None:
    codex = agent_clients.require_cli("codex")
    workdir = tmp_path / "work"
    workdir.mkdir()
    task = stack.begin(workdir)
    provider = f'{{name="mb",base_url="{stack.url}/v1",env_key="MB_KEY",wire_api="responses"}}'
    env = clean_env(tmp_path / "home", MB_KEY=stack.key)
    run = run_agent([codex, "exec", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox",
                     "-c", "model_provider=mb", "-c", f"model_providers.mb={provider}", "-m", model, task.prompt()],
                    env=env, cwd=workdir)
    session = stack.session_for(model)
    assert_session(session, task, run.output)
    assert set(session.calls.values()) == {"exec_command"}
    assert "Done" in run.output  # Codex prints the final message


# ------------------------------------------------------------------------------ opencode


def opencode_config(base_url: str, model: str) -> dict[str, object]:
    """An OpenAI-compatible provider for opencode (``~/.config/opencode/opencode.json``): the AI SDK's
    openai-compatible package at our base URL, the key read from ``MB_KEY``."""
    return {
        "$schema": "https://opencode.ai/config.json",
        "autoupdate": False,
        "share": "disabled",
        "provider": {"mb": {"npm": "@ai-sdk/openai-compatible", "name": "Megabrain Gateway",
                            "options": {"baseURL": f"{base_url}/v1", "apiKey": "{env:MB_KEY}"},
                            "models": {model: {"name": model}}}},
    }


@pytest.mark.parametrize("model", [
    pytest.param(GPT, marks=compat("opencode", "opencode-ai", "OpenAI Chat Completions", GPT)),
    pytest.param(CLAUDE, marks=compat("opencode", "opencode-ai", "OpenAI Chat Completions", CLAUDE)),
    pytest.param(GEMINI, marks=compat("opencode", "opencode-ai", "OpenAI Chat Completions", GEMINI)),
])
def test_opencode_writes_a_file(stack: AgentStack, tmp_path: Path, model: str) -> None:
    opencode = agent_clients.require_cli("opencode")
    workdir = tmp_path / "work"
    workdir.mkdir()
    task = stack.begin(workdir)
    home = tmp_path / "home"
    config = home / ".config" / "opencode" / "opencode.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps(opencode_config(stack.url, model)))
    env = clean_env(home, MB_KEY=stack.key, OPENCODE_DISABLE_AUTOUPDATE="1")
    run = run_agent([opencode, "run", "--model", f"mb/{model}", task.prompt()], env=env, cwd=workdir)
    session = stack.session_for(model)
    assert_session(session, task, run.output)
    assert set(session.calls.values()) == {"write"}


# ------------------------------------------------------------------------------ Gemini CLI

# Headless Gemini CLI 0.61 against a gateway (README "Gemini CLI"): "gemini-api-key" auth (with
# GOOGLE_GEMINI_BASE_URL alone it picks the "gateway" auth type, which its headless start refuses: "Invalid
# auth method selected"), and no usage statistics or telemetry (they go to Google, not to the base URL).
GEMINI_SETTINGS = {"security": {"auth": {"selectedType": "gemini-api-key"}},
                   "privacy": {"usageStatisticsEnabled": False}, "telemetry": {"enabled": False},
                   "general": {"disableAutoUpdate": True, "disableUpdateNag": True}}


@pytest.mark.parametrize("model", [
    pytest.param(m, marks=compat("Gemini CLI", "@google/gemini-cli", "Gemini API", m))
    for m in (GEMINI, GPT, REASONING, CLAUDE)])
def test_gemini_cli_writes_a_file(stack: AgentStack, tmp_path: Path, model: str) -> None:
    """``--skip-trust``: in an untrusted folder it forces approval prompts; ``--yolo`` approves its write."""
    gemini = agent_clients.require_cli("gemini")
    workdir = tmp_path / "work"
    workdir.mkdir()
    task = stack.begin(workdir)
    home = tmp_path / "home"
    (home / ".gemini").mkdir(parents=True)
    (home / ".gemini" / "settings.json").write_text(json.dumps(GEMINI_SETTINGS))
    env = clean_env(home, GOOGLE_GEMINI_BASE_URL=stack.url, GEMINI_API_KEY=stack.key)
    run = run_agent([gemini, "-p", task.prompt(), "-m", model, "--yolo", "--skip-trust"], env=env, cwd=workdir)
    session = stack.session_for(model)
    assert_session(session, task, run.output)
    assert set(session.calls.values()) == {"write_file"}
    assert "Done" in run.output  # it prints the final answer
    if model == GEMINI:  # natively: the CLI's own requests, streamed, thought signatures back on each call
        assert {r["path"] for r in session.requests} == {f"/v1beta/models/{GEMINI}:streamGenerateContent"}
