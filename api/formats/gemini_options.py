"""Gemini's request options, checked as Google checks them and translated into the canonical request:
``generationConfig`` (sampling, output cap, stop sequences, JSON output, ``thinkingConfig``),
``functionDeclarations`` and ``toolConfig``, with the proto3-JSON field checks the whole Gemini format
shares (``gemini_request.py`` reads the contents with them).

Field names are lowerCamelCase or their snake_case originals (proto3 JSON accepts both); an unknown one
is a 400 naming it, as Google words it. Gemini's schema subset (upper-case types, ``nullable``, counts as
strings) becomes the JSON Schema every other provider reads.
"""

from __future__ import annotations

import re
from typing import Any

from common.errors import GatewayError, invalid

CONFIG_FIELDS = frozenset({
    "temperature", "topP", "topK", "candidateCount", "maxOutputTokens", "stopSequences", "presencePenalty",
    "frequencyPenalty", "seed", "responseMimeType", "responseSchema", "responseJsonSchema",
    "_responseJsonSchema", "responseLogprobs", "logprobs", "responseModalities", "mediaResolution",
    "speechConfig", "thinkingConfig", "imageConfig", "enableEnhancedCivicAnswers",
    "audioTranscriptionConfig", "enableAffectiveDialog",
})
THINKING_FIELDS = frozenset({"includeThoughts", "thinkingBudget", "thinkingLevel"})
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


def expect(value: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):  # JSON true is no number
        raise invalid(f"Invalid value at '{where}': expected {what}.", param=where)
    return value


def number(value: Any, where: str) -> float | int:
    return expect(value, (int, float), where, "a number")


def integer(value: Any, where: str) -> int:
    if isinstance(value, str) and value.lstrip("-").isdigit():  # proto3 JSON may spell int64 as a string
        return int(value)
    return expect(value, int, where, "an integer")


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
            out[key] = integer(value, f"{where}.{key}")
        else:
            out[key] = value
    if schema.get("nullable") is True:
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
        elif "anyOf" in out:
            out["anyOf"] = [*out["anyOf"], {"type": "null"}]
    return out


# ------------------------------------------------------------------------------------- tools, config


def tools(request: dict[str, Any]) -> list[dict[str, Any]]:
    """Function declarations as canonical tools; Google's own tools are checked but have no translation."""
    out: list[dict[str, Any]] = []
    raw = request.get("tools")
    if raw is None:
        return out
    for t, tool in enumerate(expect(raw, list, "tools", "a list")):
        tool = fields(tool, TOOL_FIELDS, f"tools[{t}]")
        for name in tool:
            if name in PRICED_TOOLS:
                raise invalid(f"tools[{t}].{name} is not available through this gateway: {PRICED_TOOLS[name]}.",
                              param=f"tools[{t}].{name}")
        for d, declaration in enumerate(expect(tool.get("functionDeclarations") or [], list,
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
                function["description"] = expect(declaration["description"], str, f"{where}.description", "a string")
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
        allowed = expect(allowed, list, "toolConfig.functionCallingConfig.allowedFunctionNames", "a list")
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
    include = bool(expect(thinking.get("includeThoughts", False), bool,
                           "generationConfig.thinkingConfig.includeThoughts", "true or false"))
    budget = thinking.get("thinkingBudget")
    level = thinking.get("thinkingLevel")
    if budget is not None and level is not None:
        raise invalid("You can only set one of thinking budget and thinking level.",
                      param="generationConfig.thinkingConfig")
    reasoning: dict[str, Any] = {}
    if budget is not None:
        budget = integer(budget, "generationConfig.thinkingConfig.thinkingBudget")
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
            body[ours] = number(config[theirs], where + theirs)
    for ours, theirs in (("top_k", "topK"), ("n", "candidateCount"), ("max_tokens", "maxOutputTokens"),
                         ("seed", "seed")):
        if config.get(theirs) is not None:
            body[ours] = integer(config[theirs], where + theirs)
    if body.get("max_tokens") is not None and body["max_tokens"] < 1:
        raise invalid("maxOutputTokens must be positive.", param=where + "maxOutputTokens")
    if body.get("n") is not None and body["n"] < 1:
        raise invalid("candidateCount must be positive.", param=where + "candidateCount")
    stop = config.get("stopSequences")
    if stop:
        stop = expect(stop, list, where + "stopSequences", "a list of strings")
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
