"""The two-turn agent session the conformance fakes play, whatever their wire format.

An agent (a coding CLI, or an SDK loop written by hand) is asked to create a file. The scripted fake
upstream answers its first request with a call to the agent's own write tool (Claude Code's ``Write``,
Codex's ``exec_command``, opencode's ``write``, Gemini CLI's ``write_file``…), and the request that
carries that call's result back with a final text. Everything else (an agent's side requests: titles,
quota checks, requests without the write tool) gets a short text. The decision is made from each
request's own conversation, as a real model would, so an agent's extra requests cannot derail it.

Each upstream format is one module beside this one (``agent_openai.py``, ``agent_anthropic.py``; a
Gemini one plugs in the same way): it decodes its wire format into ``Seen`` (tool names offered,
tool results present), asks ``AgentSession.decide``, encodes the ``Turn`` in its format, and refuses
what its provider refuses with that provider's own error (``AgentSession.refuse`` records it, so a test
can say why a session failed). ``serve(app)`` runs any of them as a real local HTTP server, and one
entry in ``tests/agent_stack.py`` (``UPSTREAMS``, ``MODELS``) puts it behind the gateway of the CLI and
SDK tests. ``tests/test_agent_fakes.py`` holds each fake to its provider's refusals.
"""

from __future__ import annotations

import hashlib
import hmac
import shlex
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.server import ThreadedServer

FINAL_TEXT = "Done: the file is written."
SIDE_TEXT = "OK."
THINKING = "The user wants a file; I will write it with the write tool."
_SIGNING_KEY = b"megabrain-agent-fake"


@dataclass(frozen=True)
class AgentTask:
    """What the agent is asked to do: write ``content`` to ``path`` (absolute)."""

    path: str
    content: str

    def prompt(self) -> str:
        return (f"Create the file {self.path} containing exactly the text {self.content!r} "
                "(no newline at the end). Use your file-writing tool, then say done.")


def _shell_write(task: AgentTask) -> str:
    return f"printf %s {shlex.quote(task.content)} > {shlex.quote(task.path)}"


# The agents' write tools: tool name → its arguments for the task (from each agent's own tool schema,
# reference/agent-clients.md). The first one offered wins, so a direct write beats a shell command.
WRITE_TOOLS: dict[str, Callable[[AgentTask], dict[str, Any]]] = {
    "Write": lambda t: {"file_path": t.path, "content": t.content},  # Claude Code
    "write": lambda t: {"filePath": t.path, "content": t.content},  # opencode
    "write_file": lambda t: {"file_path": t.path, "content": t.content},  # Gemini CLI
    "write_to_file": lambda t: {"path": t.path, "content": t.content},  # SDK loops in tests/node, tests
    "exec_command": lambda t: {"cmd": _shell_write(t)},  # Codex CLI 0.17x
    "shell": lambda t: {"command": ["bash", "-lc", _shell_write(t)]},  # older Codex
}


@dataclass(frozen=True)
class Seen:
    """What a request tells the script: the tool names it offers and the tool results it carries
    (call id → result text)."""

    tools: tuple[str, ...]
    results: dict[str, str]
    calls: tuple[str, ...] = ()  # call ids of assistant tool calls already in the conversation


@dataclass(frozen=True)
class Turn:
    """The fake's answer: a text, optionally after a thinking block, or a call to one tool."""

    text: str = ""
    call_id: str | None = None
    tool: str | None = None
    arguments: dict[str, Any] | None = None
    thinking: str | None = None  # Claude's signed thinking, when the request enabled thinking


def sign(thinking: str) -> str:
    """The thinking block's signature: only this fake can make it, and it changes with the text."""
    return hmac.new(_SIGNING_KEY, thinking.encode(), hashlib.sha256).hexdigest()


@dataclass
class AgentSession:
    """One agent session's script and record, shared by the fake's server thread and the test."""

    task: AgentTask
    call_prefix: str = "call_mb"
    requests: list[dict[str, Any]] = field(default_factory=list)  # {"path", "headers", "body"}
    refusals: list[str] = field(default_factory=list)  # "status: message" of every refusal
    calls: dict[str, str] = field(default_factory=dict)  # call id issued → tool name
    results: dict[str, str] = field(default_factory=dict)  # call id → the tool result the agent sent back
    finals: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def reset(self, task: AgentTask) -> None:
        """A new session on the same fake server (one server serves a module's tests)."""
        with self._lock:
            self.task = task
            self.requests, self.refusals, self.calls, self.results, self.finals = [], [], {}, {}, 0

    def record(self, path: str, headers: dict[str, str], body: Any) -> None:
        with self._lock:
            self.requests.append({"path": path, "headers": headers, "body": body})

    def refuse(self, status: int, message: str) -> tuple[int, str]:
        with self._lock:
            self.refusals.append(f"{status}: {message}")
        return status, message

    def decide(self, seen: Seen, thinking: bool = False) -> Turn:
        with self._lock:
            answered = {cid: text for cid, text in seen.results.items() if cid in self.calls}
            if answered:
                self.results.update(answered)
                self.finals += 1
                return Turn(text=FINAL_TEXT, thinking=THINKING if thinking else None)
            tool = next((name for name in WRITE_TOOLS if name in seen.tools), None)
            if tool is None or any(cid in self.calls for cid in seen.calls):
                return Turn(text=SIDE_TEXT, thinking=THINKING if thinking else None)
            call_id = f"{self.call_prefix}_{len(self.calls) + 1}"
            self.calls[call_id] = tool
            return Turn(call_id=call_id, tool=tool, arguments=WRITE_TOOLS[tool](self.task),
                        thinking=THINKING if thinking else None)

    @property
    def completed(self) -> bool:
        """The agent got the tool call, sent its result back, and received the final text."""
        return bool(self.results) and self.finals > 0

    def explain(self) -> str:
        """For a failing test: what the fake saw and refused."""
        paths = [r["path"] for r in self.requests]
        return (f"requests={len(self.requests)} paths={paths[:6]} calls={self.calls} "
                f"results={ {k: v[:80] for k, v in self.results.items()} } refusals={self.refusals[-3:]}")


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Any fake's app as a real local HTTP server; yields its base URL."""
    with ThreadedServer(app) as server:
        yield server.url


def tool_result_text(content: Any) -> str:
    """A tool result's text, whether a string or a list of text parts (both formats allow both)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)
