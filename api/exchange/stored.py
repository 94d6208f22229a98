"""Responses objects kept for the stateful Responses API (``store``, ``previous_response_id``,
``item_reference``, ``GET``/``DELETE /v1/responses/{id}``).

One record per stored response, under ``Names.stored_response``, for ``MEGABRAIN_RESPONSE_TTL`` seconds
(default 30 days): the key and account that made it, this turn's input items (ids given), the Response
object as the client got it, and the ids of the responses before it in its chain, oldest first. A
continuation reads its previous record, then every ancestor in one ``MGET``: two round trips whatever
the conversation's length, and memory linear in it (no record repeats another's items).

Only the key that made a response, or a key of the same account, can read, continue, reference or
delete it; anyone else gets the same 404 as for an id that never existed, so ids cannot be probed.
The record is written before the client gets the answer's end (``Exchange.keep``), so the next turn,
sent the moment the first ends, finds it.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from redis.asyncio import Redis

from common.errors import GatewayError
from common.names import Names

MAX_CHAIN = 1000  # ancestors a conversation may have: bounds one continuation's MGET
_ITEM_ID = re.compile(r"^[a-z]+_([0-9a-f]{24})(?:_[0-9a-z]+)?$")  # our item ids name their response
_INPUT_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}


class Owner(msgspec.Struct, frozen=True):
    key_id: str
    account: str | None = None

    def may_read(self, record: Any) -> bool:
        """``record``: anything with the ``key_id`` and ``account`` that made it (a stored response, the
        owner of a detached answer's events)."""
        return record.key_id == self.key_id or (self.account is not None and record.account == self.account)


class StoredResponse(msgspec.Struct, kw_only=True):
    id: str
    key_id: str
    account: str | None = None
    chain: list[str] = []  # earlier responses of the conversation, oldest first
    input: list[dict[str, Any]] = []  # this turn's input items, each with its id
    response: msgspec.Raw = msgspec.Raw(b"null")  # the Response object, as the client got it
    follower: str = ""  # a background answer: the reply channel of the web process following it
    kept: bool = False  # a background answer whose worker keeps its events: any web process rebuilds them

    def status(self) -> str:
        return str(msgspec.json.decode(self.response).get("status") or "")

    def output(self) -> list[dict[str, Any]]:
        return list(msgspec.json.decode(self.response).get("output") or [])


_decoder = msgspec.json.Decoder(StoredResponse)


def not_found(response_id: str, param: str | None = None) -> GatewayError:
    return GatewayError("not_found", f"Response with id {response_id!r} not found (stored responses are read by "
                        "the API key that made them, while they are kept).", param=param)


def with_ids(items: list[dict[str, Any]], base: str) -> list[dict[str, Any]]:
    """This turn's input items as OpenAI lists them: each with an id (the client's, or
    ``<kind>_<base>_in<n>``) and a type, a message's text content as a list of parts."""
    out = []
    for n, item in enumerate(items):
        kind = str(item.get("type") or ("message" if "role" in item else "item"))
        item = {**item, "id": item.get("id") or f"{_INPUT_PREFIX.get(kind, 'item')}_{base}_in{n}", "type": kind}
        if kind == "message" and isinstance(item.get("content"), str):
            part = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": part, "text": item["content"]}]
        out.append(item)
    return out


class ResponseStore:
    def __init__(self, redis: Redis, names: Names, ttl: float, max_bytes: int) -> None:
        self.redis = redis
        self.names = names
        self.ttl = max(1, int(ttl))
        self.max_bytes = max_bytes  # one record's most: a tenant's huge conversations stay out of Redis

    async def save(self, record: StoredResponse, update: bool = False) -> bool:
        """Store the record; ``update``: only if it is still there (a background answer's later writes: one
        deleted while it ran stays deleted). False when it is larger than a record may be: not stored."""
        encoded = msgspec.json.encode(record)
        if len(encoded) > self.max_bytes:
            return False
        await self.redis.set(self.names.stored_response(record.id), encoded, ex=self.ttl, xx=update)
        return True

    async def get(self, response_id: str, owner: Owner | None, param: str | None = None) -> StoredResponse:
        """The record, if ``owner`` may read it; 404 otherwise."""
        raw = await self.redis.get(self.names.stored_response(response_id)) if owner else None
        record = _decode(raw)
        if record is None or owner is None or not owner.may_read(record):
            raise not_found(response_id, param)
        return record

    async def delete(self, response_id: str, owner: Owner | None) -> None:
        await self.get(response_id, owner)
        await self.redis.delete(self.names.stored_response(response_id))

    async def conversation(self, previous_id: str, owner: Owner | None) -> tuple[list[str], list[dict[str, Any]]]:
        """(the new response's chain, the items to put before its input): every turn of the conversation
        up to and including ``previous_id``, input then output. An expired ancestor is a 404 (its
        conversation can no longer be rebuilt whole)."""
        previous = await self.get(previous_id, owner, "previous_response_id")
        chain = [*previous.chain, previous.id][-MAX_CHAIN:]
        records = [previous]
        if previous.chain:
            raws = await self.redis.mget([self.names.stored_response(i) for i in previous.chain])
            ancestors = [_decode(raw) for raw in raws]
            for ancestor_id, ancestor in zip(previous.chain, ancestors):
                if ancestor is None or not owner or not owner.may_read(ancestor):
                    raise not_found(ancestor_id, "previous_response_id")
            records = [*ancestors, previous]  # type: ignore[list-item]
        items: list[dict[str, Any]] = []
        for record in records:
            items.extend(record.input)
            items.extend(record.output())
        return chain, items

    async def resolve_references(self, items: list[dict[str, Any]], owner: Owner | None) -> list[dict[str, Any]]:
        """``item_reference`` items replaced by the stored items they name (one read per response named)."""
        if not any(item.get("type") == "item_reference" for item in items):
            return items
        found: dict[str, dict[str, Any]] = {}
        out = []
        for item in items:
            if item.get("type") != "item_reference":
                out.append(item)
                continue
            item_id = str(item.get("id") or "")
            if item_id not in found:
                match = _ITEM_ID.match(item_id)
                if match is None:
                    raise GatewayError("not_found", f"Item with id {item_id!r} not found.", param="input")
                try:
                    record = await self.get(f"resp_{match.group(1)}", owner, "input")
                except GatewayError:
                    raise GatewayError("not_found", f"Item with id {item_id!r} not found.", param="input") from None
                for known in (*record.input, *record.output()):
                    found[str(known.get("id"))] = known
                if item_id not in found:
                    raise GatewayError("not_found", f"Item with id {item_id!r} not found.", param="input")
            out.append(found[item_id])
        return out


def _decode(raw: bytes | None) -> StoredResponse | None:
    if not raw:
        return None
    try:
        return _decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
