"""The Redis cost of a request stays what the README's scaling bound assumes (tests/redis_commands.py)."""

from __future__ import annotations

from tests.redis_commands import measure

BOUND = 20  # commands per request (INFO commandstats, Lua-internal calls included); README: ~17 measured


def test_redis_commands_per_request_stay_within_the_documented_bound() -> None:
    result = measure(20)
    for label in ("json", "stream"):
        by_command = result[label]["by_command"]
        assert by_command.get("publish", 0) >= 1  # the measurement saw the requests at all
        assert by_command.get("evalsha", 0) >= 2  # the limits check and the worker's claim
        assert 0 < result[label]["total"] <= BOUND, result
