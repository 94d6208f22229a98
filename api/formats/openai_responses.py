"""OpenAI Responses (``POST /v1/responses``), the stateless subset: decoded into the canonical request,
encoded back into the Response object and its event stream.

Accepted as Codex CLI sends it (README "Codex"): ``input`` as a string or items (``message`` with
``input_text``/``input_image``/``input_file``, ``function_call``, ``function_call_output``,
``reasoning``), ``instructions``, ``developer`` messages (sent upstream as system messages, which every
provider takes), ``function`` tools, ``namespace`` tools (flattened to ``<namespace>__<name>`` for the
chat-shaped upstream; calls are mapped back to the namespace and name), ``tool_choice``,
``parallel_tool_calls``, ``max_output_tokens``, ``temperature``, ``top_p``, ``text.format``,
``reasoning``, ``stream``. Built-in tools (``web_search``, file search…) have no equivalent at a
chat-completions upstream and are dropped. ``store``, ``previous_response_id`` and ``item_reference``
items are the route's (``api/routes/responses.py``, ``api/exchange/stored.py``): by the time a request
reaches ``canonical_request`` its input is the whole conversation.

Reasoning comes back as a ``reasoning`` item; its ``encrypted_content`` carries the upstream's reasoning
details (signatures, encrypted reasoning) opaquely, so a client that sends the item back (Codex does)
gives the upstream its reasoning exactly as it produced it.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec

from api.formats import CanonicalStream, envelope_parts, seal_details, shape_checked, sse, unseal_details
from common.errors import invalid
from common.wire import Event

_encode = msgspec.json.encode
NAMESPACE_SEPARATOR = "__"


class ResponsesRequest(msgspec.Struct):
    model: Annotated[str, msgspec.Meta(min_length=1)]
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    stream: bool | None = None
    background: bool | None = None
    store: bool | None = None
    include: list[str] | None = None
    previous_response_id: str | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None
    # echoed in the Response object only (OpenAI's own defaults otherwise)
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    truncation: str | None = None
    max_tool_calls: int | None = None
    top_logprobs: int | None = None


# ---------------------------------------------------------------------------------------------- request


encrypt_details = seal_details


def decrypt_details(content: str) -> list[dict[str, Any]]:
    """Reasoning details back from ``encrypted_content``: ours, or an OpenAI upstream's own blob."""
    details = unseal_details(content)
    if details is not None:
        return details
    return [{"type": "reasoning.encrypted", "data": content, "format": "openai-responses-v1"}]


def _part(part: dict[str, Any]) -> dict[str, Any] | None:
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": part.get("text") or ""}
    if kind == "input_image":
        url = part.get("image_url") or ""
        image: dict[str, Any] = {"url": url}
        if part.get("detail"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image} if url else None
    if kind == "input_file":
        file = {k: part[k] for k in ("file_data", "filename", "file_id") if part.get(k)}
        return {"type": "file", "file": file} if file else None
    if kind == "refusal":
        return {"type": "text", "text": part.get("refusal") or ""}
    return None


def _content(content: Any, role: str) -> Any:
    if isinstance(content, str):
        return content
    parts = [p for p in (_part(x) for x in content or ()) if p is not None]
    if role in ("system", "assistant") or all(p["type"] == "text" for p in parts):
        return "".join(p.get("text", "") for p in parts)  # text-only: the form every upstream takes
    return parts


def _call_name(item: dict[str, Any]) -> str:
    name = str(item.get("name") or "")
    namespace = item.get("namespace")
    return f"{namespace}{NAMESPACE_SEPARATOR}{name}" if namespace else name


def _messages(request: ResponsesRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    if isinstance(request.input, str):
        messages.append({"role": "user", "content": request.input})
        return messages
    pending_details: list[dict[str, Any]] = []

    def assistant() -> dict[str, Any]:
        """The assistant message being built (calls and reasoning join the latest one)."""
        nonlocal pending_details
        if not messages or messages[-1]["role"] != "assistant":
            messages.append({"role": "assistant", "content": None})
        message = messages[-1]
        if pending_details:
            message.setdefault("reasoning_details", []).extend(pending_details)
            pending_details = []
        return message

    for item in request.input:
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = str(item.get("role") or "user")
            role = "system" if role == "developer" else role
            if role == "assistant":
                message = assistant()
                text = _content(item.get("content"), role)
                message["content"] = (message["content"] or "") + text if text else message["content"]
            elif role in ("user", "system"):
                messages.append({"role": role, "content": _content(item.get("content"), role)})
            else:
                raise invalid(f"Unknown message role {role!r}.", param="input")
        elif kind == "function_call":
            assistant().setdefault("tool_calls", []).append({
                "id": item.get("call_id"), "type": "function",
                "function": {"name": _call_name(item), "arguments": item.get("arguments") or "{}"}})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else _content(output, "system")
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
        elif kind == "reasoning":
            if item.get("encrypted_content"):
                pending_details.extend(decrypt_details(str(item["encrypted_content"])))
            else:
                summary = "".join(s.get("text") or "" for s in item.get("summary") or ())
                if summary:
                    pending_details.append({"type": "reasoning.summary", "summary": summary,
                                            "format": "openai-responses-v1"})
        elif kind == "item_reference":  # resolved by the route from stored responses; one left is unknown
            raise invalid(f"Item with id {item.get('id')!r} not found.", param="input")
        # other item types (built-in tool calls) have no canonical form and are skipped
    return messages


def _function(tool: dict[str, Any], name: str) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name, "parameters": tool.get("parameters") or {"type": "object",
                                                                                     "properties": {}}}
    if tool.get("description"):
        function["description"] = tool["description"]
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        if tool.get("type") == "function":
            out.append(_function(tool, str(tool.get("name"))))
        elif tool.get("type") == "namespace":
            for inner in tool.get("tools") or ():
                if inner.get("type", "function") == "function":
                    out.append(_function(inner, f"{tool.get('name')}{NAMESPACE_SEPARATOR}{inner.get('name')}"))
        # built-in tools (web_search, file_search, …) are dropped: a chat-shaped upstream has none
    return out


@shape_checked("OpenAI Responses")
def canonical_request(request: ResponsesRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"model": request.model, "messages": _messages(request)}
    tools = _tools(request.tools or [])
    if tools:
        body["tools"] = tools
        choice = request.tool_choice
        if isinstance(choice, dict) and choice.get("type") == "function":
            choice = {"type": "function", "function": {"name": choice.get("name")}}
        if choice is not None and (isinstance(choice, dict) or choice in ("auto", "none", "required")):
            body["tool_choice"] = choice
        if request.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = request.parallel_tool_calls
    if request.max_output_tokens:
        body["max_tokens"] = request.max_output_tokens
    for name, value in (("temperature", request.temperature), ("top_p", request.top_p),
                        ("user", request.user)):
        if value is not None:
            body[name] = value
    fmt = (request.text or {}).get("format") or {}
    if fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif fmt.get("type") == "json_object":
        body["response_format"] = {"type": "json_object"}
    effort = (request.reasoning or {}).get("effort")
    if effort in ("minimal", "low", "medium", "high"):
        body["reasoning"] = {"effort": effort}
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


# -------------------------------------------------------------------------------------------- responses


def responses_usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    out: dict[str, Any] = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": int((usage.get("prompt_tokens_details") or {})
                                                      .get("cached_tokens") or 0)},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": int((usage.get("completion_tokens_details") or {})
                                                          .get("reasoning_tokens") or 0)},
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }
    if usage.get("cost") is not None:
        out["cost"] = usage["cost"]
    return out


def _split_name(name: str) -> dict[str, Any]:
    namespace, sep, inner = name.partition(NAMESPACE_SEPARATOR)
    return {"name": inner, "namespace": namespace} if sep and namespace and inner else {"name": name}


def echo_of(request: ResponsesRequest | None, stored: bool = False) -> dict[str, Any]:
    """The request's settings as the Response object restates them, with OpenAI's values for what the
    request left out (API reference, "The response object"; a recorded o3 stream). Built once per request.

    ``tools`` are echoed as sent, built-in ones included (they are dropped on the way upstream; README
    "Codex"); ``store`` says whether the response is stored (``stored``: asked for, and the caller has
    a key to own it). The bulky fields
    (an agent's tools and instructions run to tens of kilobytes) are encoded here once, as ``Raw`` JSON,
    not again in each of a stream's three snapshots."""
    r = request or ResponsesRequest(model="-", input="")
    reasoning = r.reasoning or {}
    return {
        "background": bool(r.background), "instructions": msgspec.Raw(_encode(r.instructions)),
        "max_output_tokens": r.max_output_tokens,
        "max_tool_calls": r.max_tool_calls, "metadata": r.metadata or {},
        "parallel_tool_calls": True if r.parallel_tool_calls is None else r.parallel_tool_calls,
        "previous_response_id": r.previous_response_id, "prompt_cache_key": r.prompt_cache_key,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "safety_identifier": r.safety_identifier, "store": stored,
        "temperature": 1.0 if r.temperature is None else r.temperature,
        "text": r.text or {"format": {"type": "text"}}, "tool_choice": r.tool_choice or "auto",
        "tools": msgspec.Raw(_encode(r.tools or [])), "top_logprobs": r.top_logprobs or 0, "top_p": 1.0 if r.top_p is None else r.top_p,
        "truncation": r.truncation or "disabled", "user": r.user,
    }


_NO_ECHO = echo_of(None)


def _response(response_id: str, model: Any, created: int, status: str, output: list[dict[str, Any]],
              usage: dict[str, Any] | None, echo: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": response_id, "object": "response", "created_at": created, "status": status, "error": None,
            "incomplete_details": None, "model": model, "output": output, **(echo or _NO_ECHO),
            "usage": responses_usage(usage) if usage is not None else None, **extra}


def _reasoning_item(item_id: str, details: list[dict[str, Any]], text: str) -> dict[str, Any]:
    summary = text or "".join(d.get("summary") or "" for d in details if d.get("type") == "reasoning.summary")
    item: dict[str, Any] = {"type": "reasoning", "id": item_id,
                            "summary": [{"type": "summary_text", "text": summary}] if summary else []}
    if details:
        item["encrypted_content"] = encrypt_details(details)
    return item


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, **_split_name(name),
            "arguments": arguments, "status": status}


def _incomplete(finish_reason: str | None) -> dict[str, Any]:
    if finish_reason == "length":
        return {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}
    if finish_reason == "content_filter":
        return {"status": "incomplete", "incomplete_details": {"reason": "content_filter"}}
    return {}


def response_from_completion(completion: dict[str, Any], echo: dict[str, Any] | None = None) -> dict[str, Any]:
    base = str(completion.get("id") or "").removeprefix("chatcmpl-")
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    details = message.get("reasoning_details") or []
    text = message.get("reasoning") or message.get("reasoning_content") or ""
    if details or text:
        output.append(_reasoning_item(f"rs_{base}", details, text))
    if message.get("content"):
        output.append(_message_item(f"msg_{base}", message["content"]))
    for n, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") or {}
        output.append(_call_item(f"fc_{base}_{n}", str(call.get("id")), str(function.get("name")),
                                 function.get("arguments") or ""))
    response = _response(f"resp_{base}", completion.get("model"), int(completion.get("created") or time.time()),
                         "completed", output, completion.get("usage"), echo)
    response.update(_incomplete(choice.get("finish_reason")))
    return response


class OpenAIResponses:
    """The Responses wire format. ``OPENAI_RESPONSES`` answers refusals before the request is read; the
    route then uses ``for_request``, whose answers restate the request's settings (``echo_of``)."""

    def __init__(self, echo: dict[str, Any] | None = None) -> None:
        self.echo = echo or _NO_ECHO
        self.final: dict[str, Any] | None = None  # the answer's Response object, once made (to be stored)
        self.base = ""  # the request id, when known before the answer (a background answer's)
        self.created = int(time.time())

    def placeholder(self, base: str, model: str, status: str) -> dict[str, Any]:
        """The Response object of an answer not made yet (``queued``, ``in_progress``, ``cancelled``)."""
        self.base = base
        return _response(f"resp_{base}", model, self.created, status, [], None, self.echo)

    @classmethod
    def for_request(cls, request: ResponsesRequest, stored: bool = False) -> "OpenAIResponses":
        return cls(echo_of(request, stored))

    @classmethod
    def of_stored(cls, response: dict[str, Any]) -> "OpenAIResponses":
        """The format a stored Response object was made by (its echo, ``created_at`` and id): what rebuilds
        its events, the same in any web process (``api/exchange/background.py``'s ``Rebuilder``)."""
        fmt = cls({key: response[key] for key in _NO_ECHO if key in response})
        fmt.created = int(response.get("created_at") or 0)
        fmt.base = str(response.get("id") or "").removeprefix("resp_")
        return fmt

    def error_body(self, status: int, envelope: bytes) -> bytes:
        return envelope  # the Responses API's errors are the OpenAI envelope, which is ours

    def result(self, event: Event) -> bytes:
        self.final = response_from_completion(msgspec.json.decode(event.data), self.echo)
        return _encode(self.final)

    def stream(self) -> "ResponsesStream":
        return ResponsesStream(self.echo, self)


class ResponsesStream(CanonicalStream):
    """Canonical chunks → Responses events in OpenAI's order (``tests/responses_grammar.py`` states it):
    one open item at a time, each event with its ``sequence_number`` counted from 0, a reasoning item's
    summary text inside one summary part (the OpenAI Node SDK's ``responses.stream()`` indexes
    ``summary[summary_index]`` on every summary delta)."""

    def __init__(self, echo: dict[str, Any] | None = None, owner: OpenAIResponses | None = None) -> None:
        self.echo = echo or _NO_ECHO
        self.owner = owner  # told the final Response object
        self.seq = -1
        self.started = False
        self.response_id = ""
        self.base = ""
        self.model: Any = None
        self.created = int(time.time())
        self.output: list[dict[str, Any]] = []  # finished items
        self.item: dict[str, Any] | None = None  # the open item
        self.text = ""  # of the open message item / reasoning summary
        self.part_open = False  # the open item's content part / summary part was announced
        self.details: list[dict[str, Any]] = []
        self.calls: dict[int, int] = {}  # canonical tool index → output index

    def _event(self, kind: str, **fields: Any) -> bytes:
        self.seq += 1
        return sse(kind, {"type": kind, "sequence_number": self.seq, **fields})

    def _snapshot(self, status: str, **extra: Any) -> dict[str, Any]:
        return _response(self.response_id, self.model, self.created, status, list(self.output),
                         self.usage if status == "completed" else None, self.echo, **extra)

    def begin(self, chunk: dict[str, Any], out: list[bytes]) -> None:
        if self.started:
            return
        self.started = True
        self.base = str(chunk.get("id") or "").removeprefix("chatcmpl-") or (self.owner.base if self.owner else "")
        if self.owner is not None:
            self.created = self.owner.created
        self.response_id = f"resp_{self.base}"
        self.model = chunk.get("model")
        out.append(self._event("response.created", response=self._snapshot("in_progress")))
        out.append(self._event("response.in_progress", response=self._snapshot("in_progress")))

    def end(self, out: list[bytes]) -> None:
        self._close(out)
        final = self._snapshot("completed")
        final.update(_incomplete(self.finish_reason))
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        if self.owner is not None:
            self.owner.final = final
        out.append(self._event(kind, response=final))

    def _open(self, item: dict[str, Any], out: list[bytes]) -> None:
        self._close(out)
        self.item, self.text, self.part_open = item, "", False
        out.append(self._event("response.output_item.added", output_index=len(self.output), item=item))

    def _close(self, out: list[bytes]) -> None:
        item = self.item
        if item is None:
            return
        index = len(self.output)
        ids = {"item_id": item["id"], "output_index": index}
        if item["type"] == "message":
            part = {"type": "output_text", "text": self.text, "annotations": []}
            out.append(self._event("response.output_text.done", **ids, content_index=0, text=self.text,
                                   logprobs=[]))
            out.append(self._event("response.content_part.done", **ids, content_index=0, part=part))
            item = _message_item(item["id"], self.text)
        elif item["type"] == "function_call":
            item = {**item, "status": "completed"}
            out.append(self._event("response.function_call_arguments.done", **ids, arguments=item["arguments"],
                                   name=item["name"]))
        else:  # reasoning
            if self.part_open:
                out.append(self._event("response.reasoning_summary_text.done", **ids, summary_index=0,
                                       text=self.text))
                out.append(self._event("response.reasoning_summary_part.done", **ids, summary_index=0,
                                       part={"type": "summary_text", "text": self.text}))
            item = _reasoning_item(item["id"], self.details, self.text)
        out.append(self._event("response.output_item.done", output_index=index, item=item))
        self.output.append(item)
        self.item = None

    def delta(self, delta: dict[str, Any], out: list[bytes]) -> None:
        details = delta.get("reasoning_details") or ()
        thinking = delta.get("reasoning") or delta.get("reasoning_content")
        if details or thinking:
            self._reasoning(details, thinking, out)
        if delta.get("content"):
            self._text(delta["content"], out)
        for call in delta.get("tool_calls") or ():
            self._call(call, out)

    def _reasoning(self, details: Any, thinking: str | None, out: list[bytes]) -> None:
        if self.item is None or self.item["type"] != "reasoning":
            self.details = []
            self._open({"id": f"rs_{self.base}_{len(self.output)}", "type": "reasoning", "summary": []}, out)
        _merge_details(self.details, details)
        piece = thinking or "".join(d.get("text") or d.get("summary") or "" for d in details)
        if not piece:
            return  # signature or encrypted reasoning only: carried by the item, no summary text
        ids = {"item_id": self.item["id"], "output_index": len(self.output), "summary_index": 0}  # type: ignore[index]
        if not self.part_open:
            self.part_open = True
            out.append(self._event("response.reasoning_summary_part.added", **ids,
                                   part={"type": "summary_text", "text": ""}))
        self.text += piece
        out.append(self._event("response.reasoning_summary_text.delta", **ids, delta=piece))

    def _text(self, text: str, out: list[bytes]) -> None:
        if self.item is None or self.item["type"] != "message":
            item = _message_item(f"msg_{self.base}_{len(self.output)}", "", "in_progress")
            item["content"] = []
            self._open(item, out)
            self.part_open = True
            out.append(self._event("response.content_part.added", item_id=item["id"], output_index=len(self.output),
                                   content_index=0, part={"type": "output_text", "text": "", "annotations": []}))
        self.text += text
        out.append(self._event("response.output_text.delta", item_id=self.item["id"],  # type: ignore[index]
                               output_index=len(self.output), content_index=0, delta=text, logprobs=[]))

    def _call(self, call: dict[str, Any], out: list[bytes]) -> None:
        position = int(call.get("index") or 0)
        function = call.get("function") or {}
        if position not in self.calls:
            self._open(_call_item(f"fc_{self.base}_{position}", str(call.get("id")), str(function.get("name")),
                                  "", "in_progress"), out)
            self.calls[position] = len(self.output)
        if function.get("arguments") and self.item is not None and self.calls[position] == len(self.output):
            self.item["arguments"] += function["arguments"]
            out.append(self._event("response.function_call_arguments.delta", item_id=self.item["id"],
                                   output_index=len(self.output), delta=function["arguments"]))

    def error(self, status: int, envelope: bytes) -> bytes:
        error_type, message = envelope_parts(envelope)
        out: list[bytes] = []
        self.begin({}, out)
        failed = self._snapshot("failed", error={"code": error_type, "message": message})
        if self.owner is not None:
            self.owner.final = failed
        out.append(self._event("response.failed", response=failed))
        return b"".join(out)


def _merge_details(into: list[dict[str, Any]], pieces: Any) -> None:
    """Streamed reasoning details: pieces with the same ``index`` concatenate (canonical contract)."""
    for piece in pieces or ():
        index = piece.get("index")
        target = next((d for d in into if index is not None and d.get("index") == index), None)
        if target is None:
            into.append(dict(piece))
            continue
        for key in ("text", "summary", "data"):
            if piece.get(key):
                target[key] = (target.get(key) or "") + piece[key]
        if piece.get("signature"):
            target["signature"] = piece["signature"]


OPENAI_RESPONSES = OpenAIResponses()
