"""Gemini ``generateContent`` requests: validated as strictly as Google does, and translated into the
canonical (chat-completions) request.

Validation follows the Gemini API: field names in lowerCamelCase or their snake_case originals (proto3
JSON accepts both), an unknown field is a 400 naming it, every part holds exactly one kind of data, a
``functionResponse`` turn follows the ``functionCall`` turn it answers with one response per call. The
validated body still goes as it came to a Gemini upstream (``Job.native``); the canonical request built
here serves every other provider:

- ``systemInstruction`` → a system message; ``user``/``model`` turns → user/assistant messages;
  ``functionCall`` parts → ``tool_calls`` (the client's ``id`` kept, or a positional one made up);
  ``functionResponse`` parts → ``tool`` messages paired with their call by ``id``, else by name in order;
- thought signatures → the message's ``reasoning_details`` (ours carry another provider's reasoning,
  ``api.formats.gemini_generate.thought_signature``; Google's own go back to Gemini as they came);
- ``generationConfig`` → ``temperature``, ``top_p``, ``top_k``, ``n``, ``max_tokens``, ``stop``,
  penalties, ``seed``, ``response_format`` (from ``responseMimeType`` and a schema), ``reasoning`` (from
  ``thinkingConfig``: a budget, a level, or 0 for none; ``includeThoughts`` alone asks for nothing);
- ``functionDeclarations`` → function tools (OpenAPI-subset schemas become JSON Schema), ``toolConfig``
  → ``tool_choice`` (these options: ``gemini_options.py``). Google's own tools that cost only tokens
  (code execution, URL context, computer use), ``safetySettings``, ``labels``, ``serviceTier`` and the
  other output modalities have no equivalent and are dropped when translating (a Gemini upstream gets
  them). Refused for every model, as the other
  routes refuse what changes a request's price: Google Search and Maps grounding (billed per request),
  file search, retrieval and MCP servers (the operator's account), ``serviceTier: priority``, and
  ``cachedContent`` (this gateway serves no cachedContents).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from api.formats.gemini_generate import signature_details
from api.formats.gemini_options import expect, fields, generation_config, tool_choice, tools
from common.errors import invalid

_encode = msgspec.json.encode

# What a GenerateContentRequest may hold (google-genai's request converters; ai.google.dev/api/generate-content)
REQUEST_FIELDS = frozenset({"model", "contents", "systemInstruction", "generationConfig", "safetySettings",
                            "tools", "toolConfig", "cachedContent", "labels", "serviceTier", "store",
                            "continuationToken"})
COUNT_FIELDS = frozenset({"model", "contents", "generateContentRequest"})
CONTENT_FIELDS = frozenset({"role", "parts"})
DATA_FIELDS = ("text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
               "codeExecutionResult", "toolCall", "toolResponse")
PART_FIELDS = frozenset({*DATA_FIELDS, "thought", "thoughtSignature", "videoMetadata", "partMetadata",
                         "mediaResolution"})
CALL_FIELDS = frozenset({"id", "name", "args", "partialArgs", "willContinue"})
RESPONSE_FIELDS = frozenset({"id", "name", "response", "parts", "willContinue", "scheduling"})
BLOB_FIELDS = frozenset({"mimeType", "data", "displayName"})
FILE_FIELDS = frozenset({"mimeType", "fileUri", "displayName"})
# Billed above the list price (ai.google.dev/gemini-api/docs/optimization: +75–100 %): refused, for every model
PRICED_TIERS = {"priority", "service_tier_priority"}


# ------------------------------------------------------------------------------------------- contents


@dataclass
class _Call:
    id: str
    name: str
    answered: bool = False


def _signature_detail(signature: str, call_id: str | None, index: int) -> list[dict[str, Any]]:
    """A signature as reasoning details: ours carry another provider's reasoning; Google's own go back to
    Gemini on the call (or text) they came with."""
    ours = signature_details(signature)
    if ours is not None:
        return ours
    detail: dict[str, Any] = {"type": "reasoning.encrypted", "data": signature, "format": "google-gemini-v1",
                              "index": index}
    if call_id:
        detail["id"] = call_id
    return [detail]


def _media(blob: dict[str, Any], where: str, *, uri: bool) -> dict[str, Any]:
    """``inlineData`` / ``fileData`` as a canonical content part."""
    blob = fields(blob, FILE_FIELDS if uri else BLOB_FIELDS, where)
    mime = blob.get("mimeType")
    if uri:
        url = expect(blob.get("fileUri"), str, f"{where}.fileUri", "a string")
    else:
        data = expect(blob.get("data"), str, f"{where}.data", "base64 data")
        mime = expect(mime, str, f"{where}.mimeType", "a MIME type")
        if mime.startswith("audio/"):
            return {"type": "input_audio", "input_audio": {"data": data, "format": mime.split("/", 1)[1]}}
        url = f"data:{mime};base64,{data}"
    if isinstance(mime, str) and mime.startswith("image/") or (mime is None and uri):
        return {"type": "image_url", "image_url": {"url": url}}
    part: dict[str, Any] = {"type": "file", "file": {"file_data": url}}
    if blob.get("displayName"):
        part["file"]["filename"] = str(blob["displayName"])
    return part


def _code_text(kind: str, value: Any) -> str:
    """Code execution parts (Gemini's own tool) as text another model can read."""
    value = value if isinstance(value, dict) else {}
    if kind == "executableCode":
        return f"```{str(value.get('language') or '').lower()}\n{value.get('code') or ''}\n```"
    return f"Output ({value.get('outcome') or 'OUTCOME_OK'}):\n{value.get('output') or ''}"


def _response_text(response: Any) -> str:
    """A function's response object as the text of a tool message: a lone ``output`` or ``result``
    string as itself (what Gemini CLI and Google's examples send), anything else as JSON."""
    if isinstance(response, dict) and len(response) == 1:
        (key, value), = response.items()
        if key in ("output", "result") and isinstance(value, str):
            return value
    return _encode(response).decode()


class _Conversation:
    """Contents → canonical messages, pairing each response with its call."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.pending: list[_Call] = []  # the calls of the model turn just before

    def model_turn(self, parts: list[dict[str, Any]], c: int) -> None:
        self._check_answered(c)
        text: list[str] = []
        thoughts: list[str] = []
        calls: list[dict[str, Any]] = []
        details: list[dict[str, Any]] = []
        for p, part in enumerate(parts):
            where = f"contents[{c}].parts[{p}]"
            call_id: str | None = None
            if "functionCall" in part:
                call = fields(part["functionCall"], CALL_FIELDS, f"{where}.functionCall")
                name = expect(call.get("name"), str, f"{where}.functionCall.name", "a function name")
                args = call.get("args") if call.get("args") is not None else {}
                expect(args, dict, f"{where}.functionCall.args", "an object")
                given = call.get("id")
                call_id = expect(given, str, f"{where}.functionCall.id", "a string") if given else f"call_{c}_{p}"
                calls.append({"id": call_id, "type": "function",
                              "function": {"name": name, "arguments": _encode(args).decode()}})
                self.pending.append(_Call(call_id, name))
            elif "text" in part:
                value = expect(part["text"], str, f"{where}.text", "a string")
                (thoughts if part.get("thought") is True else text).append(value)
            elif "executableCode" in part or "codeExecutionResult" in part:
                kind = "executableCode" if "executableCode" in part else "codeExecutionResult"
                text.append(_code_text(kind, part[kind]))
            elif "functionResponse" in part:
                raise invalid(f"{where}: a functionResponse belongs in a user turn, not a model turn.",
                              param=f"{where}.functionResponse")
            signature = part.get("thoughtSignature")
            if signature is not None:
                signature = expect(signature, str, f"{where}.thoughtSignature", "a base64 string")
                details.extend(_signature_detail(signature, call_id, len(details) + 1))
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
        if calls:
            message["tool_calls"] = calls
        if thoughts:
            message["reasoning"] = "".join(thoughts)
        if details:
            message["reasoning_details"] = details
        self.messages.append(message)

    def user_turn(self, parts: list[dict[str, Any]], c: int) -> None:
        responses: list[tuple[dict[str, Any], str]] = []
        content: list[dict[str, Any]] = []
        for p, part in enumerate(parts):
            where = f"contents[{c}].parts[{p}]"
            if "functionResponse" in part:
                where += ".functionResponse"
                responses.append((fields(part["functionResponse"], RESPONSE_FIELDS, where), where))
            elif "text" in part:
                content.append({"type": "text", "text": expect(part["text"], str, f"{where}.text", "a string")})
            elif "inlineData" in part or "fileData" in part:
                uri = "fileData" in part
                content.append(_media(part["fileData" if uri else "inlineData"],
                                      f"{where}.{'fileData' if uri else 'inlineData'}", uri=uri))
            elif "executableCode" in part or "codeExecutionResult" in part:
                kind = "executableCode" if "executableCode" in part else "codeExecutionResult"
                content.append({"type": "text", "text": _code_text(kind, part[kind])})
            elif "functionCall" in part:
                raise invalid(f"{where}: a functionCall belongs in a model turn, not a user turn.",
                              param=f"{where}.functionCall")
        # responses that name their call's id first, then the others by name, in order
        answers = {n: self._answer(response, where) for n, (response, where) in enumerate(responses)
                   if response.get("id") is not None}
        answers.update({n: self._answer(response, where) for n, (response, where) in enumerate(responses)
                        if response.get("id") is None})
        self._check_answered(c)
        self.messages.extend(answers[n] for n in range(len(responses)))
        if content:
            if all(item["type"] == "text" for item in content):
                self.messages.append({"role": "user", "content": "".join(item["text"] for item in content)})
            else:
                self.messages.append({"role": "user", "content": content})

    def _answer(self, response: dict[str, Any], where: str) -> dict[str, Any]:
        name = expect(response.get("name"), str, f"{where}.name", "the function's name")
        expect(response.get("response"), dict, f"{where}.response", "an object")
        if not self.pending:
            raise invalid("Please ensure that function response turn comes immediately after a function "
                          f"call turn. ({where})", param=where)
        given = response.get("id")
        if given is not None:
            expect(given, str, f"{where}.id", "a string")
            match = next((call for call in self.pending if call.id == given and not call.answered), None)
        else:
            match = next((call for call in self.pending if call.name == name and not call.answered), None)
        if match is None or match.name != name:
            raise invalid(f"{where}: no function call named '{name}'" + (f" with id '{given}'" if given else "")
                          + " in the model turn before it.", param=where)
        match.answered = True
        return {"role": "tool", "tool_call_id": match.id, "content": _response_text(response["response"])}

    def _check_answered(self, c: int) -> None:
        """Every call of the model turn before is answered by this turn, and nothing else is."""
        if self.pending and not all(call.answered for call in self.pending):
            raise invalid("Please ensure that the number of function response parts is equal to the number "
                          f"of function call parts of the function call turn. (contents[{c}])",
                          param=f"contents[{c}]")
        self.pending = []


def check_part(value: Any, where: str) -> dict[str, Any]:
    part = fields(value, PART_FIELDS, where)
    present = [name for name in DATA_FIELDS if name in part]
    if len(present) != 1:
        what = "no data" if not present else "both " + " and ".join(present)
        raise invalid(f"Invalid value at '{where}': a part holds exactly one of text, inlineData, fileData, "
                      f"functionCall, functionResponse, executableCode, codeExecutionResult ({what}).",
                      param=where)
    if "thought" in part:
        expect(part["thought"], bool, f"{where}.thought", "true or false")
    return part


def check_content(value: Any, where: str, *, roles: tuple[str, ...] | None) -> tuple[str, list[dict[str, Any]]]:
    """A content's role (any, when ``roles`` is None: a system instruction's is ignored) and its parts."""
    content = fields(value, CONTENT_FIELDS, where)
    role = content.get("role") or "user"  # "Useful to set for multi-turn conversations, otherwise can be left unset"
    if roles is not None and role not in roles:
        raise invalid(f"Please use a valid role: {', '.join(roles)}. ({where}.role)", param=f"{where}.role")
    parts = content.get("parts")
    if isinstance(parts, dict):  # proto JSON reads a lone object as a one-element list (Google's curl samples)
        parts = [parts]
    if not isinstance(parts, list) or not parts:
        raise invalid(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.",
                      param=f"{where}.parts")
    return role, [check_part(part, f"{where}.parts[{n}]") for n, part in enumerate(parts)]


def messages(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The canonical messages of a validated request (``systemInstruction`` and ``contents``)."""
    out: list[dict[str, Any]] = []
    system = request.get("systemInstruction")
    if system is not None:
        if isinstance(system, str):  # some clients send the text alone
            text = system
        else:
            _, parts = check_content(system, "systemInstruction", roles=None)
            text = "\n\n".join(p["text"] for p in parts if isinstance(p.get("text"), str) and p["text"])
        if text:
            out.append({"role": "system", "content": text})
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        raise invalid("* GenerateContentRequest.contents: contents is not specified", param="contents")
    conversation = _Conversation()
    for c, value in enumerate(contents):
        role, parts = check_content(value, f"contents[{c}]", roles=("user", "model", "function"))
        if role == "model":
            conversation.model_turn(parts, c)
        else:
            conversation.user_turn(parts, c)
    out.extend(conversation.messages)
    return out


@dataclass
class GeminiRequest:
    """A validated request: its canonical body, and what the answer's encoding needs to know."""

    canonical: dict[str, Any]
    include_thoughts: bool


def canonical_request(request: dict[str, Any], model: str, *, stream: bool) -> GeminiRequest:
    """The canonical (chat-completions) body for a validated ``generateContent`` body."""
    request = fields(request, REQUEST_FIELDS, None)
    tier = request.get("serviceTier")
    if isinstance(tier, str) and tier.lower() in PRICED_TIERS:
        raise invalid("serviceTier priority is not available through this gateway: it is billed above the list "
                      "price.", param="serviceTier")
    if request.get("cachedContent"):
        raise invalid("cachedContent is not supported: this gateway serves no cachedContents resources; send "
                      "the content itself.", param="cachedContent")
    body: dict[str, Any] = {"model": model, "messages": messages(request)}
    include = generation_config(request, body)
    declared = tools(request)
    choice, declared = tool_choice(request, declared)
    if declared:
        body["tools"] = declared
        if choice is not None:
            body["tool_choice"] = choice
    elif choice == "required":
        raise invalid("functionCallingConfig mode ANY needs function declarations.",
                      param="toolConfig.functionCallingConfig.mode")
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}  # the last chunk always carries usageMetadata
    return GeminiRequest(body, include)


def count_request(request: dict[str, Any], model: str) -> dict[str, Any]:
    """A ``countTokens`` body (``contents``, or a whole ``generateContentRequest``) as a canonical body."""
    request = fields(request, COUNT_FIELDS, None)
    inner = request.get("generateContentRequest")
    if inner is not None:
        if "contents" in request:
            raise invalid("Set contents or generateContentRequest, not both.", param="contents")
        inner = dict(expect(inner, dict, "generateContentRequest", "an object"))
        inner.pop("model", None)
        return canonical_request(inner, model, stream=False).canonical
    return canonical_request({"contents": request.get("contents")}, model, stream=False).canonical
