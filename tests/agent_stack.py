"""The conformance tests' stack: the scripted strict fakes (``tests/fakes/agent_*.py``) as OpenAI's and
Anthropic's upstreams, a whole gateway in front of them (``megabrain serve`` in a thread: API, pools,
Redis), a key, and a way to run a real agent CLI against it with a bounded time.

The models (bare ids, as users type them): ``claude-sonnet-4-5`` (Anthropic, extended thinking: the
native path), ``gpt-4o-mini`` (an OpenAI chat model), ``gpt-5-mini`` (an OpenAI reasoning model) and
``gemini-3-flash-preview`` (Gemini 3: thought signatures required back on every call).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fakes import agent_anthropic, agent_gemini, agent_openai
from tests.fakes.agent_script import AgentSession, AgentTask, serve
from tests.harness import GatewayHarness, create_key, env_for

CLAUDE = "claude-sonnet-4-5"
GPT = "gpt-4o-mini"
REASONING = "gpt-5-mini"
GEMINI = "gemini-3-flash-preview"
SESSION_TIMEOUT = float(os.environ.get("MEGABRAIN_AGENT_TIMEOUT", "180"))  # seconds per CLI session
CONTENT = "hello from the agent"


@dataclass(frozen=True)
class Upstream:
    """One scripted fake behind the gateway: the pool that calls it, its app, and the gateway's settings
    that point that provider at it (base URL → environment)."""

    pool: str
    create_app: Callable[[AgentSession], Any]
    call_prefix: str
    env: Callable[[str], dict[str, str]]


UPSTREAMS = (
    Upstream("openai", agent_openai.create_app, "call_mb",
             lambda url: {"OPENAI_BASE_URL": url + "/v1", "OPENAI_API_KEY": "sk-agent-fake"}),
    Upstream("anthropic", agent_anthropic.create_app, "toolu_mb",
             lambda url: {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "sk-ant-agent-fake"}),
    Upstream("google", agent_gemini.create_app, "gem_call",
             lambda url: {"GEMINI_BASE_URL": url, "GEMINI_API_KEY": agent_gemini.API_KEY}),
)
MODELS = {CLAUDE: ("anthropic", "Claude"), GPT: ("openai", "OpenAI chat"), REASONING: ("openai", "OpenAI reasoning"),
          GEMINI: ("google", "Gemini")}
FAMILY = {model: family for model, (_, family) in MODELS.items()}


class AgentStack:
    """Start once per module; ``begin`` gives each test a fresh task and fresh session records."""

    def __init__(self, redis_url: str) -> None:
        placeholder = AgentTask(path="/nonexistent", content=CONTENT)
        self.sessions = {u.pool: AgentSession(placeholder, call_prefix=u.call_prefix) for u in UPSTREAMS}
        self.redis_url = redis_url
        self._exit = ExitStack()
        self.gateway: GatewayHarness | None = None
        self.key = ""

    def __enter__(self) -> "AgentStack":
        env_extra: dict[str, str] = {"MEGABRAIN_UPSTREAM_MAX_RETRIES": "0", "MEGABRAIN_REQUEST_TIMEOUT": "120"}
        for upstream in UPSTREAMS:
            url = self._exit.enter_context(serve(upstream.create_app(self.sessions[upstream.pool])))
            env_extra.update(upstream.env(url))
        env = env_for(self.redis_url, **env_extra)
        self.key = create_key(self.redis_url, env["MEGABRAIN_NAMESPACE"], "agents")
        pools = tuple(u.pool for u in UPSTREAMS)
        self.gateway = self._exit.enter_context(GatewayHarness.from_env(env, pools=pools))
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit.close()

    @property
    def url(self) -> str:
        assert self.gateway is not None
        return self.gateway.url

    @property
    def openai(self) -> AgentSession:
        return self.sessions["openai"]

    @property
    def anthropic(self) -> AgentSession:
        return self.sessions["anthropic"]

    @property
    def gemini(self) -> AgentSession:
        return self.sessions["google"]

    def begin(self, workdir: Path) -> AgentTask:
        task = AgentTask(path=str(workdir / "hello.txt"), content=CONTENT)
        for session in self.sessions.values():
            session.reset(task)
        return task

    def session_for(self, model: str) -> AgentSession:
        return self.sessions[MODELS[model][0]]


@dataclass
class Run:
    returncode: int | None  # None: killed at the time bound
    output: str


def run_agent(argv: list[str], *, env: dict[str, str], cwd: Path, timeout: float = SESSION_TIMEOUT) -> Run:
    """Run a CLI session in its own process group; past ``timeout`` the whole group is killed."""
    env = {**env, "PWD": str(cwd)}  # some CLIs take their project directory from $PWD (opencode does)
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        return Run(proc.returncode, output)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return Run(None, output + f"\n[killed after {timeout:.0f} s]")


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI: a throwaway HOME, no provider keys or base URLs of the caller's."""
    env = {k: v for k, v in os.environ.items()
           if not k.endswith(("_API_KEY", "_BASE_URL", "_AUTH_TOKEN"))
           and not k.startswith(("ANTHROPIC_", "OPENAI_", "GEMINI_", "GOOGLE_"))}
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_DATA_HOME=str(home / ".local/share"),
               XDG_STATE_HOME=str(home / ".local/state"), NO_COLOR="1", **extra)
    return env
