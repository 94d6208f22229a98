"""Reading and validating JSON request bodies, with errors that name the offending field.

The web tier decodes a body once, as strictly as the worker will: the whole document (unknown fields
too, since they are forwarded) must be valid UTF-8 JSON with finite numbers, integers that fit in 64
bits and at most ``MAX_DEPTH`` levels of nesting. So what the web tier accepts, the worker can run, and
a hostile body is a 400 here instead of a crash behind the queue.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, TypeVar

import msgspec
from starlette.requests import ClientDisconnect, Request

from common.errors import GatewayError, invalid, unavailable

T = TypeVar("T")

MAX_DEPTH = 64  # objects and arrays inside each other; real requests (tool schemas included) stay far below
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # what every upstream's JSON parser reads as an integer

_PATH = re.compile(r" - at `\$\.?([^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]*)`")


BODY_BYTES = "megabrain.body_bytes"  # scope key: what this request's body took from its process's budget


class BodyBudget:
    """The request bodies one web process holds at once, in bytes, bounded: a burst of large bodies gets 503
    beyond the bound instead of exhausting the dyno's memory (a body is held, with its decoded form and the
    job that carries it, until its request ends). ``GatewayApp`` gives a request's share back when the
    request ends, whichever way (api/app.py ``release_body``)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, scope: dict[str, Any], size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        scope[BODY_BYTES] = scope.get(BODY_BYTES, 0) + size
        return True

    def release(self, scope: dict[str, Any]) -> None:
        self.used -= scope.pop(BODY_BYTES, 0)


def budget_of(request: Request) -> BodyBudget | None:
    gateway = getattr(getattr(request.scope.get("app"), "state", None), "gateway", None)
    return getattr(gateway, "bodies", None)


def busy() -> GatewayError:
    return unavailable("The gateway is holding as many large request bodies as it can right now. Try again "
                       "shortly.", retry_after=1)


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing more than ``limit`` bytes without reading them all, and refusing (503) a body
    the process's ``BodyBudget`` cannot hold: that one is read to its end but dropped as it comes, so the
    client gets a clean answer and the process holds none of it."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    budget = budget_of(request)
    chunks: list[bytes] = []
    size = 0
    refused = False
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            if refused:
                continue
            if budget is not None and not budget.take(request.scope, len(chunk)):
                refused = True
                chunks.clear()
                budget.release(request.scope)
                continue
            chunks.append(chunk)
    except ClientDisconnect:
        raise invalid("The request body was not received completely.") from None
    if refused:
        raise busy()
    if len(chunks) == 1:
        return chunks[0]
    body = b"".join(chunks)
    chunks.clear()  # one copy of the body from here on
    return body


def too_large(limit: int) -> GatewayError:
    return GatewayError("payload_too_large", f"The request body is larger than the {limit} bytes allowed.")


async def read_json(request: Request, schema: type[T], limit: int) -> tuple[bytes, T]:
    """(raw body, validated object). The raw body is what travels on: unknown fields pass through."""
    body = await read_body(request, limit)
    if not body.strip():
        if "upgrade" in request.headers:  # uvicorn hands an upgrade request's body to the protocol switch
            raise invalid("This gateway has no WebSocket API: send the request without 'Upgrade' and "
                          "'Connection: Upgrade' headers.")
        raise invalid("The request body is empty; send a JSON object.")
    return body, decode_json(body, schema)


def decode_json(body: bytes, schema: type[T]) -> T:
    """The body as ``schema``, after checking every value in it (``GatewayError`` 400 otherwise)."""
    tree = _parse(body)
    if _may_hold_long_integers(body) or _may_nest_deeper(body, MAX_DEPTH):  # else the walk finds nothing
        _check_values(tree)
    try:
        return msgspec.convert(tree, schema)
    except msgspec.ValidationError as exc:
        raise _validation_error(str(exc)) from None


def _parse(body: bytes) -> Any:
    try:
        return msgspec.json.decode(body)
    except RecursionError:
        raise _too_deep(None) from None
    except msgspec.MsgspecError as exc:  # invalid JSON, invalid UTF-8, or a number no float can hold
        found = _locate_refusal(body)
        if found is None:
            raise invalid(f"The request body is not valid JSON ({exc}).") from None
        problem, path = found
        raise _out_of_range(path) if problem == "number" else _not_utf8(path, problem == "key") from None


_DIGITS_ONLY = bytes.maketrans(bytes(range(256)), bytes(48 if 48 <= b <= 57 else 32 for b in range(256)))
_LONG_NUMBER = b"0" * 19  # int64's limit has 19 digits: any integer outside it has at least as many
_BRACKETS_ONLY = bytes(b for b in range(256) if b not in b"{}[]")
_AS_PARENS = bytes.maketrans(b"{}[]", b"()()")


def _may_hold_long_integers(body: bytes) -> bool:
    """A run of 19 digits somewhere (in a number, or in a string: then the walk finds nothing)."""
    return _LONG_NUMBER in body.translate(_DIGITS_ONLY)


def _may_nest_deeper(body: bytes, limit: int) -> bool:
    """False when the document cannot nest more than ``limit`` levels, judged from its brackets at C
    speed: innermost pairs are peeled off, one level per pass. Brackets inside strings count too, so True
    only means "walk the tree to know"."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = body.translate(_AS_PARENS, _BRACKETS_ONLY)
    for _ in range(limit):
        brackets = brackets.replace(b"()", b"")
        if not brackets:
            return False
    return True


def _check_values(tree: Any) -> None:
    """Depth and integer range of the whole document, in one pass without recursion."""
    stack: list[tuple[Any, int, tuple[str | int, ...]]] = [(tree, 1, ())] if type(tree) in (dict, list) else []
    while stack:
        node, depth, path = stack.pop()
        if depth > MAX_DEPTH:  # named by its top-level field: the full path would be 64 steps long
            raise _too_deep(path[0] if path and isinstance(path[0], str) else None)
        items = node.items() if type(node) is dict else enumerate(node)
        for key, value in items:
            kind = type(value)
            if kind is int:
                if not INT_MIN <= value <= INT_MAX:
                    raise _out_of_range(_dotted((*path, key)))
            elif kind is dict or kind is list:
                stack.append((value, depth + 1, (*path, key)))


_SURROGATE = re.compile("[\ud800-\udfff]")  # invalid UTF-8 bytes (escaped below) and lone \uXXXX escapes


def _locate_refusal(body: bytes) -> tuple[str, str | None] | None:
    """("number" | "text" | "key", path) of the first value the strict decode refused, if that was why.

    Only on the error path: Python's lenient parser reads what msgspec refused (invalid bytes kept as
    surrogates), so the error can name the field.
    """
    try:
        tree = json.loads(body.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(tree, ())]
    while stack:
        node, path = stack.pop()
        if type(node) is float and not math.isfinite(node):
            return "number", _dotted(path)
        if type(node) is str and _SURROGATE.search(node):
            return "text", _dotted(path)
        if type(node) is dict:
            if any(_SURROGATE.search(key) for key in node):
                return "key", _dotted(path)
            stack.extend((value, (*path, key)) for key, value in reversed(node.items()))
        elif type(node) is list:
            stack.extend((value, (*path, index)) for index, value in reversed(list(enumerate(node))))
    return None


def _dotted(path: tuple[str | int, ...]) -> str | None:
    """``("messages", 0, "content")`` → ``messages[0].content`` (msgspec's spelling, without ``$.``)."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or None


def _out_of_range(param: str | None) -> GatewayError:
    where = f"'{param}'" if param else "A number"
    return invalid(f"{where} is out of range: numbers must be finite, integers between -2^63 and 2^63-1.",
                   param=param)


def _not_utf8(param: str | None, in_key: bool) -> GatewayError:
    where = ("A key name" + (f" in '{param}'" if param else "")) if in_key else (f"'{param}'" if param else "Text")
    return invalid(f"{where} is not valid UTF-8 (invalid bytes, or a lone \\u surrogate escape).",
                   param=None if in_key else param)


def _too_deep(param: str | None) -> GatewayError:
    where = f" (at '{param}')" if param else ""
    return invalid(f"The request body is nested more than {MAX_DEPTH} levels deep{where}.", param=param)


def validation_error(message: str) -> GatewayError:
    """A msgspec validation message as the 400 naming the field (for routes that convert form fields)."""
    return _validation_error(message)


def _validation_error(message: str) -> GatewayError:
    match = _PATH.search(message)
    param = match.group(1) if match else None
    text = _PATH.sub("", message)
    missing = _MISSING.match(text)
    if missing:  # a missing field is reported at its parent's path; name the field itself
        param = f"{param}.{missing.group(1)}" if param else missing.group(1)
        text = "this field is required"
    if param:
        text = f"Invalid value for '{param}': {text}"
    return invalid(text, param=param or None)
