"""Redis commands per request, measured with ``INFO commandstats`` deltas over N requests.

``python -m tests.redis_commands [N]`` starts its own Redis (the store's binary), the fake upstream and a
gateway (API and the openai pool in one process, as ``megabrain serve``), sends N JSON and N streaming
chat requests with a key, and prints the commands each request cost, by command; then the same with a key
that has a monthly budget (each request also holds and returns a reservation), and with a key of an account
that has prepaid credits (each request holds its worst case against the balance, and its settlement
charges it and writes a ledger entry: common/ledger.py). The background loops
(liveness, health, metrics, the safety-net poll) are measured over an idle stretch of the same length and
subtracted. The README's scaling bound comes from these numbers. ``stream_resumable`` is a stream sent with
``x-megabrain-resumable: true`` (its events kept: ``api/exchange/background.py``); ``background_response``
a ``background: true`` Response, then its events streamed to their end (``GET /v1/responses/{id}?stream=true``).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import httpx
import redis as sync_redis

from tests.fakes.openai_server import OpenAIFakeState, create_openai_app
from tests.fakes.server import ThreadedServer
from tests.harness import GatewayHarness, RedisServer, create_key, env_for

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def command_counts(client: sync_redis.Redis) -> dict[str, int]:
    """Calls per command so far (``INFO commandstats``)."""
    return {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in client.info("commandstats").items()}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}


def per_request(harness: GatewayHarness, client: sync_redis.Redis, key: str, n: int, stream: bool,
                extra: dict[str, str] | None = None) -> dict[str, float]:
    """Commands per request of ``n`` requests, background activity over the same time subtracted."""
    body = {**BODY, "stream": stream}
    headers = {"authorization": f"Bearer {key}", **(extra or {})}

    def send(http: httpx.Client) -> None:
        if extra and extra.get("background"):  # a background Response, then its events streamed to the end
            made = http.post("/v1/responses", json={"model": BODY["model"], "input": "hi", "background": True})
            made.raise_for_status()
            with http.stream("GET", f"/v1/responses/{made.json()['id']}", params={"stream": "true"}) as events:
                for _ in events.iter_lines():
                    pass
            return
        http.post("/v1/chat/completions", json=body).raise_for_status()

    with httpx.Client(base_url=harness.url, headers=headers, timeout=30) as http:
        send(http)  # warm: scripts loaded, key cached
        time.sleep(0.5)  # the warm-up's batched writes land
        before, started = command_counts(client), time.monotonic()
        for _ in range(n):
            send(http)
        time.sleep(0.5)  # this run's batched writes land
        busy = delta(command_counts(client), before)
        elapsed = time.monotonic() - started
    idle_before = command_counts(client)
    time.sleep(elapsed)
    idle = delta(command_counts(client), idle_before)
    idle.pop("info", None)
    busy.pop("info", None)
    net = {k: (busy.get(k, 0) - idle.get(k, 0)) / n for k in set(busy) | set(idle)}
    return {k: round(v, 2) for k, v in sorted(net.items()) if abs(v) >= 0.01}


def grant_credits(redis_url: str, namespace: str, account: str, usd: str) -> None:
    """Prepaid credits for ``account`` (a ledger grant), so its keys can call paid models."""
    import asyncio

    from common.ledger import Ledger, nanos
    from common.names import Names
    from common.redis import connect

    async def grant() -> None:
        client = connect(redis_url)
        try:
            await Ledger(client, Names(namespace)).apply(account, "grant", nanos(usd))
        finally:
            await client.aclose()

    asyncio.run(grant())


def measure(n: int = 100, budgets: bool = True) -> dict[str, Any]:
    server = RedisServer().start()
    state = OpenAIFakeState()
    try:
        with ThreadedServer(create_openai_app(state)) as upstream:
            # no safety-net poll during the measurement (workers are woken on enqueue): the background it would
            # add is subtracted anyway, but its few claims per window are the noise that matters at small N
            env = env_for(server.url, OPENAI_BASE_URL=upstream.url + "/v1", OPENAI_API_KEY="sk-upstream-test",
                          MEGABRAIN_POLL_DELAY="3600")

            key = create_key(server.url, env["MEGABRAIN_NAMESPACE"], "bench")
            budgeted = create_key(server.url, env["MEGABRAIN_NAMESPACE"], "budget", monthly_budget=1000.0)
            account_key = create_key(server.url, env["MEGABRAIN_NAMESPACE"], "credits", owner="bench-acct")
            grant_credits(server.url, env["MEGABRAIN_NAMESPACE"], "bench-acct", "1000")
            client = sync_redis.Redis(port=server.port)
            with GatewayHarness.from_env(env) as harness:
                result = {}
                resumable = {"x-megabrain-resumable": "true"}  # a detached stream: its events kept
                runs: tuple[tuple[str, str, bool, dict[str, str]], ...] = (
                    ("json", key, False, {}), ("stream", key, True, {}), ("stream_resumable", key, True, resumable),
                    ("background_response", key, True, {"background": "true"}))
                if budgets:
                    runs += (("json_budget", budgeted, False, {}), ("stream_budget", budgeted, True, {}),
                             ("json_credits", account_key, False, {}), ("stream_credits", account_key, True, {}))
                for label, api_key, stream, extra in runs:
                    by_command = per_request(harness, client, api_key, n, stream, extra)
                    result[label] = {"total": round(sum(by_command.values()), 1), "by_command": by_command}
                return {"requests": n, **result}
    finally:
        server.stop()


if __name__ == "__main__":
    import logging

    logging.getLogger("megabrain").setLevel(logging.WARNING)  # no request log lines between the numbers
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 100), indent=2))
