"""The conformance tests' stack: the scripted strict fakes (``tests/fakes/agent_*.py``) as OpenAI's and
Anthropic's upstreams, a whole gateway in front of them (``megabrain serve`` in a thread: API, pools,
Redis), a key, and a way to run a real agent CLI against it with a bounded time.

The models (bare ids, as users type them): ``claude-sonnet-4-5`` (Anthropic, extended thinking: the
native path), ``gpt-4o-mini`` (an OpenAI chat model) and ``gpt-5-mini`` (an OpenAI reasoning model).
"""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from tests.fakes import agent_anthropic, agent_openai
from tests.fakes.agent_script import AgentSession, AgentTask, serve
from tests.harness import GatewayHarness, create_key, env_for

CLAUDE = "claude-sonnet-4-5"
GPT = "gpt-4o-mini"
REASONING = "gpt-5-mini"
FAMILY = {CLAUDE: "Claude", GPT: "OpenAI chat", REASONING: "OpenAI reasoning"}
SESSION_TIMEOUT = float(os.environ.get("MEGABRAIN_AGENT_TIMEOUT", "180"))  # seconds per CLI session
CONTENT = "hello from the agent"


class AgentStack:
    """Start once per module; ``begin`` gives each test a fresh task and fresh session records."""

    def __init__(self, redis_url: str) -> None:
        placeholder = AgentTask(path="/nonexistent", content=CONTENT)
        self.openai = AgentSession(placeholder, call_prefix="call_mb")
        self.anthropic = AgentSession(placeholder, call_prefix="toolu_mb")
        self.redis_url = redis_url
        self._exit = ExitStack()
        self.gateway: GatewayHarness | None = None
        self.key = ""

    def __enter__(self) -> "AgentStack":
        openai_url = self._exit.enter_context(serve(agent_openai.create_app(self.openai)))
        anthropic_url = self._exit.enter_context(serve(agent_anthropic.create_app(self.anthropic)))
        env = env_for(self.redis_url, OPENAI_BASE_URL=openai_url + "/v1", OPENAI_API_KEY="sk-agent-fake",
                      ANTHROPIC_BASE_URL=anthropic_url, ANTHROPIC_API_KEY="sk-ant-agent-fake",
                      MEGABRAIN_UPSTREAM_MAX_RETRIES="0", MEGABRAIN_REQUEST_TIMEOUT="120")
        self.key = create_key(self.redis_url, env["MEGABRAIN_NAMESPACE"], "agents")
        self.gateway = self._exit.enter_context(GatewayHarness.from_env(env, pools=("openai", "anthropic")))
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit.close()

    @property
    def url(self) -> str:
        assert self.gateway is not None
        return self.gateway.url

    def begin(self, workdir: Path) -> AgentTask:
        task = AgentTask(path=str(workdir / "hello.txt"), content=CONTENT)
        self.openai.reset(task)
        self.anthropic.reset(task)
        return task

    def session_for(self, model: str) -> AgentSession:
        return self.anthropic if model == CLAUDE else self.openai


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
           if not k.endswith(("_API_KEY", "_BASE_URL", "_AUTH_TOKEN")) and not k.startswith(("ANTHROPIC_", "OPENAI_"))}
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_DATA_HOME=str(home / ".local/share"),
               XDG_STATE_HOME=str(home / ".local/state"), NO_COLOR="1", **extra)
    return env
