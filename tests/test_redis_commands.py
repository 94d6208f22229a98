"""The Redis cost of a request stays what the README's scaling bound assumes (tests/redis_commands.py)."""

from __future__ import annotations

from tests.redis_commands import measure

BOUND = 16  # commands per request (INFO commandstats, Lua-internal calls included); README: 10.2 / 10.5 measured
# (sequential requests: each handed directly to the idle worker; ~14 through the queue)


def test_redis_commands_per_request_stay_within_the_documented_bound() -> None:
    result = measure(20)
    for label in ("json", "stream"):
        by_command = result[label]["by_command"]
        assert by_command.get("publish", 0) >= 1  # the measurement saw the requests at all
        assert by_command.get("evalsha", 0) >= 1  # the limits check (the claim too, for a queued job)
        assert 0 < result[label]["total"] <= BOUND, result
