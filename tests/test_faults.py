"""Faults that must stay one request's problem (issue 22), each as a process-level test: a flood on a pool
with free slots, a silent upstream, a dead embedded store, a huge answer, a burst of large bodies.

Floods are bounded in count and time and stay on 127.0.0.1; waits are events or bounded polls, never
assertions of speed.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import EXPECTED, ProcessGateway, auth, live_workers, wait_until

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def _flood(url: str, headers: dict[str, str], count: int, timeout: float) -> list[httpx.Response | Exception]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        return await asyncio.gather(*(client.post(url, headers=headers, json=BODY) for _ in range(count)),
                                    return_exceptions=True)


def test_a_pool_with_free_slots_claims_waiting_jobs_at_once(gateway_env: dict[str, str],
                                                            fake_openai: tuple[OpenAIFakeState, str]) -> None:
    """600 requests at once on a 100-slot pool: each slot that frees claims the next waiting job, whatever
    the worker was doing when it freed. The safety poll is 60 s here, beyond the 30 s pickup window, so a
    job that only the poll would move is refused: every refusal is a lost wake-up."""
    state, _ = fake_openai
    state.latency = 0.2
    env = {**gateway_env, "MEGABRAIN_WORKER_MAX_JOBS": "100", "MEGABRAIN_POLL_DELAY": "60",
           "MEGABRAIN_PICKUP_TIMEOUT": "30", "MEGABRAIN_HEARTBEAT_TIMEOUT": "30", "MEGABRAIN_REQUEST_TIMEOUT": "90"}
    with ProcessGateway(env, workers=1) as gw:
        assert wait_until(lambda: live_workers(gw.url) == 1, 15)
        answers = asyncio.run(_flood(gw.url + "/v1/chat/completions", auth(env), 600, timeout=80))
    failed = [a if isinstance(a, Exception) else (a.status_code, a.text[:200]) for a in answers
              if isinstance(a, Exception) or a.status_code != 200 or "error" in a.json()]
    assert failed == [], f"{len(failed)} of 600 not answered, e.g. {failed[:3]}"
    assert all(a.json()["choices"][0]["message"]["content"] == EXPECTED for a in answers)  # type: ignore[union-attr]
