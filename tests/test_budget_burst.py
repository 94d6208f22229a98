"""Budgets that hold under bursts: 20 concurrent paid requests of one key through two real web processes.

Each admitted request reserves its worst case in the admission script, so however the burst interleaves
across the processes, the key's spend never passes its budget; every reservation is settled with its
answer (common/settlement.py), so the spend is exact the moment the last client has its answer.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis

from common.names import Names
from common.usage import held_key, holds_key
from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import ProcessGateway, env_for

ADMIN_KEY = "admin-" + "b" * 32
PAID = "openai/gpt-4o"  # $2.50 in, $10 out per million tokens
MESSAGES = [{"role": "user", "content": "Summarise the plot of Hamlet in a sentence."}]


@pytest.fixture
def two_web_processes(redis_url: str, fake_openai: tuple[OpenAIFakeState, str],
                      tmp_path: Path) -> Iterator[tuple[ProcessGateway, ProcessGateway]]:
    state, upstream = fake_openai
    state.latency = 0.3  # keeps the burst in flight together: the reservations, not luck, must hold the line
    env = env_for(redis_url, OPENAI_BASE_URL=upstream, OPENAI_API_KEY="sk-upstream-test",
                  MEGABRAIN_ADMIN_KEY=ADMIN_KEY)
    with ProcessGateway(env) as first, ProcessGateway(env, workers=0) as second:
        yield first, second


def test_twenty_concurrent_requests_never_overspend(two_web_processes: tuple[ProcessGateway, ProcessGateway],
                                                    redis_url: str) -> None:
    first, second = two_web_processes
    created = httpx.post(first.url + "/admin/keys", json={"name": "burst", "monthly_budget": 0.001},
                         headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
    assert created.status_code == 201, created.text
    key, key_id = created.json()["key"], created.json()["id"]

    async def one(n: int) -> int | float:
        client = openai.AsyncOpenAI(base_url=(first, second)[n % 2].url + "/v1", api_key=key, max_retries=0,
                                    timeout=30)
        try:
            completion = await client.chat.completions.create(model=PAID, messages=MESSAGES, max_tokens=16)
        except openai.APIStatusError as error:
            assert error.status_code == 402 and error.response.json()["error_type"] == "budget_exceeded"
            return 402
        finally:
            await client.close()
        return completion.usage.model_dump()["cost"]  # type: ignore[union-attr]

    async def burst() -> list[int | float]:
        return await asyncio.gather(*(one(n) for n in range(20)))

    outcomes = asyncio.run(burst())
    costs = [Decimal(str(c)) for c in outcomes if isinstance(c, float)]
    assert costs and outcomes.count(402) >= 1
    budget = Decimal("0.001")
    assert 20 * costs[0] > budget  # without reservations this burst would overspend
    assert sum(costs) <= budget

    def spend() -> Decimal:
        usage = httpx.get(second.url + "/v1/usage", headers={"authorization": f"Bearer {key}"}, timeout=10).json()
        return Decimal(str(usage["month_spend"]))

    # settled before each answer reached its client: nothing left to wait for
    assert spend() == sum(costs) and spend() <= budget
    names = Names(first.env["MEGABRAIN_NAMESPACE"])
    store = redis.Redis.from_url(redis_url)
    try:
        assert store.zcard(holds_key(names, key_id)) == 0  # every reservation settled or released
        assert store.get(held_key(names, key_id)) is None
    finally:
        store.close()
