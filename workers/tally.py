"""Redis writes that can wait, buffered in memory and sent in one pipeline every fraction of a second.

Provider-health successes are plain increments: nobody needs them the same millisecond, and losing a
quarter second of them with a killed worker costs nothing. What bills a request never waits here: it is
written by the request's settlement, with its answer (``common/settlement.py``). The tally takes the
same calls as a redis-py pipeline (``hincrby``, ``hincrbyfloat``, ``incrbyfloat``, ``expire``, and ``set``
with a TTL for generation records), sums the increments, and the pool's ticker flushes them. A failed
flush keeps the sums for the next one, so a Redis blip loses no counts (a flush cut off half-way may
count some twice).
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any


class Tally:
    def __init__(self) -> None:
        self._ints: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._floats: defaultdict[tuple[str, str | None], Decimal] = defaultdict(Decimal)
        self._expires: dict[str, int] = {}
        self._sets: dict[str, tuple[bytes, int]] = {}

    def __bool__(self) -> bool:
        return bool(self._ints or self._floats or self._sets)

    def set(self, key: str, value: bytes, ex: int) -> None:
        """A whole value with a TTL (the last one queued for a key wins)."""
        self._sets[key] = (value, int(ex))

    def hincrby(self, key: str, field: str, amount: int = 1) -> None:
        self._ints[(key, field)] += int(amount)

    def hincrbyfloat(self, key: str, field: str, amount: str | float) -> None:
        self._floats[(key, field)] += Decimal(str(amount))

    def incrbyfloat(self, key: str, amount: str | float) -> None:
        self._floats[(key, None)] += Decimal(str(amount))

    def expire(self, key: str, seconds: int) -> None:
        self._expires[key] = int(seconds)

    async def flush(self, redis: Any) -> None:
        """Write everything summed so far in one round trip."""
        if not self:
            return
        ints, floats, expires, sets = self._ints, self._floats, self._expires, self._sets
        self._ints, self._floats, self._expires, self._sets = defaultdict(int), defaultdict(Decimal), {}, {}
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for (key, field), amount in ints.items():
                    pipe.hincrby(key, field, amount)
                for (key, field), total in floats.items():
                    if field is None:
                        pipe.incrbyfloat(key, format(total, "f"))
                    else:
                        pipe.hincrbyfloat(key, field, format(total, "f"))
                for key, seconds in expires.items():
                    pipe.expire(key, seconds)
                for key, (value, seconds) in sets.items():
                    pipe.set(key, value, ex=seconds)
                await pipe.execute()
        except BaseException:
            self._merge(ints, floats, expires)
            for key, item in sets.items():
                self._sets.setdefault(key, item)
            raise

    def _merge(self, ints: dict[tuple[str, str], int], floats: dict[tuple[str, str | None], Decimal],
               expires: dict[str, int]) -> None:
        for k, v in ints.items():
            self._ints[k] += v
        for k2, d in floats.items():
            self._floats[k2] += d
        for key, seconds in expires.items():
            self._expires.setdefault(key, seconds)
