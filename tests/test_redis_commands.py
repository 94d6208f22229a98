"""The Redis cost of a request stays what the README's scaling bound assumes (tests/redis_commands.py)."""

from __future__ import annotations

from tests.redis_commands import measure

# Commands per request (INFO commandstats, Lua-internal calls included), sequential requests (each handed
# directly to the idle worker; ~4 more through the queue). README: 22.2 / 22.2–22.4 measured, 32.2–32.4 with a
# monthly budget (its reservation held and returned): the settlement writes usage, spend, the generation
# record and the fence with the answer, in the worker's one round trip (common/settlement.py); the key's
# place among its requests in flight is taken by the limits script and left by the settlement (4 commands).
# An account's key with prepaid credits: 44.3 measured (33.0–33.4 for the same key before credits), in
# the same two round trips: the hold rides in the admission script, the charge and ledger entry in the settlement.
BOUNDS = {"json": 25, "stream": 25, "json_budget": 35, "stream_budget": 35, "json_credits": 49, "stream_credits": 49}


def test_redis_commands_per_request_stay_within_the_documented_bound() -> None:
    result = measure(20)
    for label, bound in BOUNDS.items():
        by_command = result[label]["by_command"]
        assert by_command.get("publish", 0) >= 1  # the measurement saw the requests at all
        assert by_command.get("evalsha", 0) >= 1.5  # the limits check (the claim too, if queued), the settlement
        assert 0 < result[label]["total"] <= bound, result
