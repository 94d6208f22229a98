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
  → ``tool_choice``. Google's own tools that cost only tokens (code execution, URL context, computer use),
  ``safetySettings``, ``labels``, ``serviceTier`` and the other output modalities have no equivalent and
  are dropped when translating (a Gemini upstream gets them). Refused for every model, as the other
  routes refuse what changes a request's price: Google Search and Maps grounding (billed per request),
  file search, retrieval and MCP servers (the operator's account), ``serviceTier: priority``, and
  ``cachedContent`` (this gateway serves no cachedContents).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec

from api.formats.gemini_generate import signature_details
from common.errors import GatewayError, invalid

_encode = msgspec.json.encode

# What a GenerateContentRequest may hold (google-genai's request converters; ai.google.dev/api/generate-content)
REQUEST_FIELDS = frozenset({"model", "contents", "systemInstruction", "generationConfig", "safetySettings",
                            "tools", "toolConfig", "cachedContent", "labels", "serviceTier", "store",
                            "continuationToken"})
COUNT_FIELDS = frozenset({"model", "contents", "generateContentRequest"})
CONFIG_FIELDS = frozenset({
    "temperature", "topP", "topK", "candidateCount", "maxOutputTokens", "stopSequences", "presencePenalty",
    "frequencyPenalty", "seed", "responseMimeType", "responseSchema", "responseJsonSchema",
    "_responseJsonSchema", "responseLogprobs", "logprobs", "responseModalities", "mediaResolution",
    "speechConfig", "thinkingConfig", "imageConfig", "enableEnhancedCivicAnswers",
    "audioTranscriptionConfig", "enableAffectiveDialog",
})
THINKING_FIELDS = frozenset({"includeThoughts", "thinkingBudget", "thinkingLevel"})
CONTENT_FIELDS = frozenset({"role", "parts"})
DATA_FIELDS = ("text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
               "codeExecutionResult", "toolCall", "toolResponse")
PART_FIELDS = frozenset({*DATA_FIELDS, "thought", "thoughtSignature", "videoMetadata", "partMetadata",
                         "mediaResolution"})
CALL_FIELDS = frozenset({"id", "name", "args", "partialArgs", "willContinue"})
RESPONSE_FIELDS = frozenset({"id", "name", "response", "parts", "willContinue", "scheduling"})
BLOB_FIELDS = frozenset({"mimeType", "data", "displayName"})
FILE_FIELDS = frozenset({"mimeType", "fileUri", "displayName"})
TOOL_FIELDS = frozenset({"functionDeclarations", "googleSearch", "googleSearchRetrieval", "codeExecution",
                         "urlContext", "retrieval", "computerUse", "fileSearch", "googleMaps",
                         "enterpriseWebSearch", "mcpServers"})
DECLARATION_FIELDS = frozenset({"name", "description", "parameters", "parametersJsonSchema", "response",
                                "responseJsonSchema", "behavior"})
TOOL_CONFIG_FIELDS = frozenset({"functionCallingConfig", "retrievalConfig", "includeServerSideToolInvocations"})
CALLING_FIELDS = frozenset({"mode", "allowedFunctionNames", "streamFunctionCallArguments"})

# What Google bills beyond tokens, or what runs on the operator's Google account: refused with a 400 naming it,
# for every model (a gateway key pays for tokens at catalog prices; these would spend the operator's money).
PRICED_TOOLS = {
    "googleSearch": "Grounding with Google Search is billed per request",
    "googleSearchRetrieval": "Grounding with Google Search is billed per request",
    "enterpriseWebSearch": "Web Grounding for Enterprise is billed per request",
    "googleMaps": "Grounding with Google Maps is billed per request",
    "fileSearch": "file search stores live on the operator's Google account",
    "retrieval": "retrieval sources live on the operator's Google account",
    "mcpServers": "MCP servers would be called on the operator's account",
}
PRICED_TIERS = {"priority", "service_tier_priority"}  # ai.google.dev/gemini-api/docs/optimization: +75–100 %
MODES = {"AUTO": "auto", "VALIDATED": "auto", "MODE_UNSPECIFIED": "auto", "ANY": "required", "NONE": "none"}
LEVELS = {"MINIMAL": "minimal", "LOW": "low", "MEDIUM": "medium", "HIGH": "high"}
FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")  # Gemini's rule for declaration names
JSON_MIME = "application/json"
TEXT_MIMES = frozenset({"text/plain", "text/x.enum", JSON_MIME})
_COUNTS = frozenset({"minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties"})


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest) if rest else name


def unknown_field(name: str, where: str | None) -> GatewayError:
    at = f" at '{where}'" if where else ""
    return invalid(f'Invalid JSON payload received. Unknown name "{name}"{at}: Cannot find field.',
                   param=f"{where}.{name}" if where else name)


def fields(value: Any, known: frozenset[str], where: str | None) -> dict[str, Any]:
    """``value`` as an object whose keys are all ``known`` (snake_case spellings read as camelCase)."""
    if not isinstance(value, dict):
        raise invalid(f"Invalid value at '{where or 'request'}': expected an object.", param=where)
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = _camel(key) if "_" in key[1:] else key
        if name not in known:
            raise unknown_field(key, where)
        out[name] = item
    return out


def _expect(value: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):  # JSON true is no number
        raise invalid(f"Invalid value at '{where}': expected {what}.", param=where)
    return value


def _number(value: Any, where: str) -> float | int:
    return _expect(value, (int, float), where, "a number")


def _integer(value: Any, where: str) -> int:
    if isinstance(value, str) and value.lstrip("-").isdigit():  # proto3 JSON may spell int64 as a string
        return int(value)
    return _expect(value, int, where, "an integer")


# ------------------------------------------------------------------------------------------- schemas


def json_schema(schema: Any, where: str) -> dict[str, Any]:
    """A Gemini schema (OpenAPI subset: upper-case types, ``nullable``, counts as strings) or a JSON Schema
    with Gemini's upper-case types, as the JSON Schema every other provider reads."""
    if not isinstance(schema, dict):
        raise invalid(f"Invalid value at '{where}': a schema must be an object.", param=where)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type":
            if isinstance(value, str):
                if value.upper() != "TYPE_UNSPECIFIED":
                    out["type"] = value.lower()
            elif isinstance(value, list):
                out["type"] = [t.lower() if isinstance(t, str) else t for t in value]
            else:
                out["type"] = value
        elif key in ("nullable", "propertyOrdering"):
            continue
        elif key in ("properties", "$defs", "definitions", "patternProperties") and isinstance(value, dict):
            out[key] = {name: json_schema(sub, f"{where}.{key}.{name}") for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = json_schema(value, f"{where}.{key}")
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems") and isinstance(value, list):
            out[key] = [json_schema(sub, f"{where}.{key}[{n}]") for n, sub in enumerate(value)]
        elif key in _COUNTS:
            out[key] = _integer(value, f"{where}.{key}")
        else:
            out[key] = value
    if schema.get("nullable") is True:
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
        elif "anyOf" in out:
            out["anyOf"] = [*out["anyOf"], {"type": "null"}]
    return out


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
        url = _expect(blob.get("fileUri"), str, f"{where}.fileUri", "a string")
    else:
        data = _expect(blob.get("data"), str, f"{where}.data", "base64 data")
        mime = _expect(mime, str, f"{where}.mimeType", "a MIME type")
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
                name = _expect(call.get("name"), str, f"{where}.functionCall.name", "a function name")
                args = call.get("args") if call.get("args") is not None else {}
                _expect(args, dict, f"{where}.functionCall.args", "an object")
                given = call.get("id")
                call_id = _expect(given, str, f"{where}.functionCall.id", "a string") if given else f"call_{c}_{p}"
                calls.append({"id": call_id, "type": "function",
                              "function": {"name": name, "arguments": _encode(args).decode()}})
                self.pending.append(_Call(call_id, name))
            elif "text" in part:
                value = _expect(part["text"], str, f"{where}.text", "a string")
                (thoughts if part.get("thought") is True else text).append(value)
            elif "executableCode" in part or "codeExecutionResult" in part:
                kind = "executableCode" if "executableCode" in part else "codeExecutionResult"
                text.append(_code_text(kind, part[kind]))
            elif "functionResponse" in part:
                raise invalid(f"{where}: a functionResponse belongs in a user turn, not a model turn.",
                              param=f"{where}.functionResponse")
            signature = part.get("thoughtSignature")
            if signature is not None:
                signature = _expect(signature, str, f"{where}.thoughtSignature", "a base64 string")
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
                content.append({"type": "text", "text": _expect(part["text"], str, f"{where}.text", "a string")})
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
        name = _expect(response.get("name"), str, f"{where}.name", "the function's name")
        _expect(response.get("response"), dict, f"{where}.response", "an object")
        if not self.pending:
            raise invalid("Please ensure that function response turn comes immediately after a function "
                          f"call turn. ({where})", param=where)
        given = response.get("id")
        if given is not None:
            _expect(given, str, f"{where}.id", "a string")
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
        _expect(part["thought"], bool, f"{where}.thought", "true or false")
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


# ------------------------------------------------------------------------------------- tools, config


def tools(request: dict[str, Any]) -> list[dict[str, Any]]:
    """Function declarations as canonical tools; Google's own tools are checked but have no translation."""
    out: list[dict[str, Any]] = []
    raw = request.get("tools")
    if raw is None:
        return out
    for t, tool in enumerate(_expect(raw, list, "tools", "a list")):
        tool = fields(tool, TOOL_FIELDS, f"tools[{t}]")
        for name in tool:
            if name in PRICED_TOOLS:
                raise invalid(f"tools[{t}].{name} is not available through this gateway: {PRICED_TOOLS[name]}.",
                              param=f"tools[{t}].{name}")
        for d, declaration in enumerate(_expect(tool.get("functionDeclarations") or [], list,
                                                f"tools[{t}].functionDeclarations", "a list")):
            where = f"tools[{t}].functionDeclarations[{d}]"
            declaration = fields(declaration, DECLARATION_FIELDS, where)
            name = declaration.get("name")
            if not isinstance(name, str) or not FUNCTION_NAME.match(name):
                raise invalid(f"Invalid function name at '{where}.name': must start with a letter or an "
                              "underscore, then letters, digits, '_', '.', ':' or '-', 64 at most.",
                              param=f"{where}.name")
            if "parameters" in declaration and "parametersJsonSchema" in declaration:
                raise invalid(f"{where}: set parameters or parametersJsonSchema, not both.", param=where)
            schema = declaration.get("parameters", declaration.get("parametersJsonSchema"))
            function: dict[str, Any] = {"name": name}
            if declaration.get("description"):
                function["description"] = _expect(declaration["description"], str, f"{where}.description", "a string")
            function["parameters"] = (json_schema(schema, f"{where}.parameters") if schema is not None
                                      else {"type": "object", "properties": {}})
            out.append({"type": "function", "function": function})
    return out


def tool_choice(request: dict[str, Any], declared: list[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]]]:
    """(canonical ``tool_choice`` or None, the tools it leaves): ``ANY`` with allowed names keeps only those."""
    raw = request.get("toolConfig")
    if raw is None:
        return None, declared
    config = fields(raw, TOOL_CONFIG_FIELDS, "toolConfig")
    calling = config.get("functionCallingConfig")
    if calling is None:
        return None, declared
    calling = fields(calling, CALLING_FIELDS, "toolConfig.functionCallingConfig")
    mode = str(calling.get("mode") or "AUTO").upper()
    if mode not in MODES:
        raise invalid(f"Invalid value at 'toolConfig.functionCallingConfig.mode': \"{calling.get('mode')}\" "
                      f"is not one of {', '.join(MODES)}.", param="toolConfig.functionCallingConfig.mode")
    allowed = calling.get("allowedFunctionNames")
    if allowed is not None:
        allowed = _expect(allowed, list, "toolConfig.functionCallingConfig.allowedFunctionNames", "a list")
        if mode != "ANY":
            raise invalid("allowedFunctionNames may only be set when the mode is ANY.",
                          param="toolConfig.functionCallingConfig.allowedFunctionNames")
        declared = [t for t in declared if t["function"]["name"] in allowed]
        if len(allowed) == 1 and declared:
            return {"type": "function", "function": {"name": allowed[0]}}, declared
    return MODES[mode], declared


def _reasoning(config: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """(canonical ``reasoning`` or None, include thoughts). ``includeThoughts`` alone asks for no reasoning
    (Gemini CLI sends it to every model): it only says to show what the model thinks anyway."""
    raw = config.get("thinkingConfig")
    if raw is None:
        return None, False
    thinking = fields(raw, THINKING_FIELDS, "generationConfig.thinkingConfig")
    include = bool(_expect(thinking.get("includeThoughts", False), bool,
                           "generationConfig.thinkingConfig.includeThoughts", "true or false"))
    budget = thinking.get("thinkingBudget")
    level = thinking.get("thinkingLevel")
    if budget is not None and level is not None:
        raise invalid("You can only set one of thinking budget and thinking level.",
                      param="generationConfig.thinkingConfig")
    reasoning: dict[str, Any] = {}
    if budget is not None:
        budget = _integer(budget, "generationConfig.thinkingConfig.thinkingBudget")
        if budget == 0:
            return {"enabled": False}, include
        reasoning = {"enabled": True} if budget < 0 else {"max_tokens": budget}  # -1: the model decides
    elif level is not None:
        effort = LEVELS.get(str(level).upper())
        if effort is None:
            raise invalid(f"Invalid value at 'generationConfig.thinkingConfig.thinkingLevel': \"{level}\".",
                          param="generationConfig.thinkingConfig.thinkingLevel")
        reasoning = {"effort": effort}
    # Without includeThoughts Gemini still thinks but shows no thoughts: the encoder leaves out the thought
    # text, never the reasoning itself (``exclude`` would drop the signatures a tool loop must send back).
    return reasoning or None, include


def generation_config(request: dict[str, Any], body: dict[str, Any]) -> bool:
    """``generationConfig`` into the canonical ``body``; returns whether thoughts are to be shown."""
    raw = request.get("generationConfig")
    if raw is None:
        return False
    config = fields(raw, CONFIG_FIELDS, "generation_config")
    where = "generationConfig."
    for ours, theirs in (("temperature", "temperature"), ("top_p", "topP"),
                         ("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty")):
        if config.get(theirs) is not None:
            body[ours] = _number(config[theirs], where + theirs)
    for ours, theirs in (("top_k", "topK"), ("n", "candidateCount"), ("max_tokens", "maxOutputTokens"),
                         ("seed", "seed")):
        if config.get(theirs) is not None:
            body[ours] = _integer(config[theirs], where + theirs)
    if body.get("max_tokens") is not None and body["max_tokens"] < 1:
        raise invalid("maxOutputTokens must be positive.", param=where + "maxOutputTokens")
    if body.get("n") is not None and body["n"] < 1:
        raise invalid("candidateCount must be positive.", param=where + "candidateCount")
    stop = config.get("stopSequences")
    if stop:
        stop = _expect(stop, list, where + "stopSequences", "a list of strings")
        if not all(isinstance(s, str) for s in stop):
            raise invalid(f"Invalid value at '{where}stopSequences': expected strings.", param=where + "stopSequences")
        body["stop"] = stop
    mime = config.get("responseMimeType")
    if mime is not None and mime not in TEXT_MIMES:
        raise invalid(f"Invalid value at '{where}responseMimeType': \"{mime}\" is not one of "
                      f"{', '.join(sorted(TEXT_MIMES))}.", param=where + "responseMimeType")
    schema = config.get("responseJsonSchema", config.get("_responseJsonSchema", config.get("responseSchema")))
    if schema is not None and mime != JSON_MIME:
        raise invalid("responseSchema needs responseMimeType application/json.", param=where + "responseMimeType")
    if mime == JSON_MIME:
        if schema is None:
            body["response_format"] = {"type": "json_object"}
        else:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "response", "schema": json_schema(schema, where + "responseSchema")}}
    reasoning, include = _reasoning(config)
    if reasoning is not None:
        body["reasoning"] = reasoning
    return include


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
        inner = dict(_expect(inner, dict, "generateContentRequest", "an object"))
        inner.pop("model", None)
        return canonical_request(inner, model, stream=False).canonical
    return canonical_request({"contents": request.get("contents")}, model, stream=False).canonical
