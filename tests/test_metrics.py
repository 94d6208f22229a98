"""The metrics README lists ("Health, metrics, dashboard, traces, Sentry") move with the requests they
describe: request duration, queue wait per pool, relay lag (and fallbacks: tests/test_fallback.py), read through ``/metrics``
as Prometheus would, before and after (the registry is the process's, shared by every gateway of the run).
"""

from __future__ import annotations

import openai

from tests.harness import GatewayHarness, Families, metric_value, reassemble, scrape, wait_until

MESSAGES = [{"role": "user", "content": "hi"}]


def _moved(before: Families, after: Families, family: str, sample: str, **labels: str) -> float:
    return metric_value(after, family, sample, **labels) - metric_value(before, family, sample, **labels)


def test_a_request_moves_duration_queue_wait_and_relay_lag(gateway: GatewayHarness, client: openai.OpenAI) -> None:
    before = scrape(gateway.url)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert reassemble(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))["text"]
    duration = ("megabrain_request_duration_seconds", "megabrain_request_duration_seconds_count")
    # a stream is counted when its body generator ends, just after the client read [DONE]
    assert wait_until(lambda: _moved(before, scrape(gateway.url), *duration, route="chat", provider="openai") >= 2,
                      10, 0.05)
    after = scrape(gateway.url)
    assert _moved(before, after, *duration, route="chat", provider="openai") == 2
    assert _moved(before, after, "megabrain_request_duration_seconds", "megabrain_request_duration_seconds_sum",
                  route="chat", provider="openai") > 0
    assert _moved(before, after, "megabrain_request_duration_seconds", "megabrain_request_duration_seconds_bucket",
                  route="chat", provider="openai", le="+Inf") == 2
    # each job's wait for a worker (handed or queued), in its pool
    assert _moved(before, after, "megabrain_queue_wait_seconds", "megabrain_queue_wait_seconds_count",
                  pool="openai") == 2
    # each attempt's first event, timed from the worker's publish to the relay's delivery
    assert _moved(before, after, "megabrain_relay_lag_seconds", "megabrain_relay_lag_seconds_count") == 2
    assert _moved(before, after, "megabrain_relay_lag_seconds", "megabrain_relay_lag_seconds_bucket", le="+Inf") == 2
