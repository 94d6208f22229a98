"""Gemini's tool and response schemas: an OpenAPI subset, so JSON Schema is cleaned before it is sent.

Keys Gemini does not know make the whole request fail (``additionalProperties``, ``$schema``, ``default``,
``pattern`` …), so only the keys it accepts are kept: ``$ref`` is inlined (a recursive one becomes a plain
object), ``const`` becomes a one-value enum, ``oneOf`` becomes ``anyOf``, ``allOf`` is merged, and a
``null`` type becomes ``nullable``.
"""

from __future__ import annotations

from typing import Any


_KEPT_SCHEMA_KEYS = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "items", "properties", "required",
    "anyOf", "minItems", "maxItems", "minimum", "maximum", "minLength", "maxLength", "minProperties",
    "maxProperties", "propertyOrdering",
})
_FORMATS = {"string": {"enum", "date-time"}, "integer": {"int32", "int64"}, "number": {"float", "double"}}


def clean_schema(schema: Any) -> dict[str, Any]:
    """A JSON Schema reduced to the OpenAPI subset Gemini accepts, keeping as much meaning as it can.

    ``$ref`` is inlined from ``$defs``/``definitions`` (a recursive ref becomes a plain object), ``const``
    becomes a one-value enum, ``oneOf`` becomes ``anyOf``, ``allOf`` is merged, ``["x", "null"]`` types and
    null branches become ``nullable``; every other key (``additionalProperties``, ``$schema``, ``default``,
    ``pattern``, ``examples``…) is dropped.
    """
    if not isinstance(schema, dict):
        return {}
    defs: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            defs.update(schema[key])
    return _clean_node(schema, defs, ())


def _clean_node(node: Any, defs: dict[str, Any], seen: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(node, dict):
        return {}
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if name in seen or name not in defs:
            return {"type": "object", **_text(node)}
        resolved = {**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}
        return _clean_node(resolved, defs, seen + (name,))
    node = _merge_all_of(node, defs, seen)
    out: dict[str, Any] = {}
    nullable = bool(node.get("nullable"))
    types = node.get("type")
    if isinstance(types, list):
        nullable = nullable or "null" in types
        types = [t for t in types if t != "null"]
        if len(types) > 1:
            out["anyOf"] = [{"type": t} for t in types]
        types = types[0] if len(types) == 1 else None
    if isinstance(types, str):
        out["type"] = types
    branches = node.get("anyOf") or node.get("oneOf")
    if isinstance(branches, list):
        kept = [b for b in branches if not (isinstance(b, dict) and b.get("type") == "null")]
        nullable = nullable or len(kept) < len(branches)
        cleaned = [_clean_node(b, defs, seen) for b in kept]
        if len(cleaned) == 1:
            out = {**cleaned[0], **out}
        elif cleaned:
            out["anyOf"] = cleaned
    if "const" in node:
        node = {**node, "enum": [node["const"]]}
    for key, value in node.items():
        if key not in _KEPT_SCHEMA_KEYS or key in ("type", "anyOf", "nullable"):
            continue
        if key == "properties" and isinstance(value, dict):
            props = {str(k): _clean_node(v, defs, seen) for k, v in value.items()}
            if props:
                out["properties"] = props
        elif key == "items":
            item = value[0] if isinstance(value, list) and value else value
            out["items"] = _clean_node(item, defs, seen)
        elif key == "enum":
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                out["enum"] = value
                out.setdefault("type", "string")
        elif key == "format":
            if value in _FORMATS.get(out.get("type", ""), ()):
                out["format"] = value
        elif key == "required":
            if isinstance(value, list):
                out["required"] = [str(v) for v in value]
        else:
            out[key] = value
    if "required" in out:
        names = out.get("properties", {})
        out["required"] = [r for r in out["required"] if r in names]
        if not out["required"]:
            del out["required"]
    if nullable:
        out["nullable"] = True
    return out


def _merge_all_of(node: dict[str, Any], defs: dict[str, Any], seen: tuple[str, ...]) -> dict[str, Any]:
    parts = node.get("allOf")
    if not isinstance(parts, list):
        return node
    merged: dict[str, Any] = {k: v for k, v in node.items() if k != "allOf"}
    for part in parts:
        sub = _clean_node(part, defs, seen)
        props = {**sub.get("properties", {}), **merged.get("properties", {})}
        required = list(dict.fromkeys([*merged.get("required", []), *sub.get("required", [])]))
        merged = {**sub, **merged}
        if props:
            merged["properties"] = props
        if required:
            merged["required"] = required
    return merged


def _text(node: dict[str, Any]) -> dict[str, Any]:
    return {k: node[k] for k in ("description", "title") if isinstance(node.get(k), str)}
