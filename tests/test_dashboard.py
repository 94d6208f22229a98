"""The operator's dashboard (README, Operations): who may see it, and that it shows what the gateway knows —
a worker killed with SIGKILL shown gone, a provider's opened circuit, today's spend per key and model, the
refusals by kind."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from api.pages.dashboard import quantile
from router.health import latency_bands, latency_field
from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import GatewayHarness, ProcessGateway, wait_until
from tests.pages import ADMIN_KEY, PAID, Browser, accounts_env, keys_in

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
OPERATOR = "ops@example.org"


@pytest.fixture
def gw(redis_url: str, fake_openai: tuple[OpenAIFakeState, str], tmp_path: Path) -> Iterator[GatewayHarness]:
    fake_openai[0].failures = []
    env = accounts_env(redis_url, fake_openai[1], tmp_path, MEGABRAIN_OPERATOR_EMAILS=f"{OPERATOR}, boss@example.org")
    with GatewayHarness.from_env(env) as harness:
        yield harness


def section(page: str, table_id: str) -> str:
    """The text of one table of the page, tags removed."""
    start = page.index(f'<table id="{table_id}">')
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page[start:page.index("</table>", start)]))


def test_the_admin_key_or_an_operator_account_sees_it_nobody_else(gw: GatewayHarness) -> None:
    assert httpx.get(gw.url + "/operator", headers=ADMIN).status_code == 200
    assert httpx.get(gw.url + "/operator", headers={"authorization": "Bearer " + "x" * 40}).status_code == 401
    assert httpx.get(gw.url + "/operator").headers["location"].endswith("/login")  # nobody signed in
    user = Browser(gw.url)
    user.join("user@example.org")
    refused = user.get("/operator")
    assert refused.status_code == 404 and refused.json()["error_type"] == "not_found"
    operator = Browser(gw.url)
    operator.join("OPS@example.org")  # emails compare normalised
    page = operator.get("/operator")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    assert "Pools" in page.text and "openai" in section(page.text, "pools")


def test_it_shows_todays_spend_per_key_and_model_and_the_refusals(gw: GatewayHarness) -> None:
    user = Browser(gw.url)
    (key,) = keys_in(user.join("spender@example.org").text)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=20)
    client.chat.completions.create(model=PAID, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.url + "/v1", api_key="mb-" + "z" * 40, max_retries=0).chat.completions.create(
            model=PAID, messages=[{"role": "user", "content": "hi"}])
    page = httpx.get(gw.url + "/operator", headers=ADMIN).text
    keys = section(page, "keys")
    assert f"default ({key[:8]}" in keys and " 1 " in keys
    assert "openai/gpt-4o" in section(page, "models")
    assert "401 authentication" in section(page, "refusals")
    pools = section(page, "pools")
    assert "live (" in pools and "gone" not in pools
    assert key not in page

    # p50/p95 of the last minute, from the workers' latency bands (written a few times a second)
    def p50() -> str:
        providers = section(httpx.get(gw.url + "/operator", headers=ADMIN).text, "providers")
        cells = re.search(r"openai closed \S+ (?:\d+ %|–) (\S+) (\S+) (\S+)", providers)
        assert cells, providers
        return cells.group(2)
    assert wait_until(lambda: p50() != "–", 10)
    assert float(p50()) <= 50.0  # the fake answers at once: the lowest band, interpolated


def test_a_killed_worker_is_gone_and_an_opened_circuit_shows(redis_url: str, tmp_path: Path,
                                                             fake_openai: tuple[OpenAIFakeState, str]) -> None:
    state, upstream = fake_openai
    env = accounts_env(redis_url, upstream, tmp_path, MEGABRAIN_UPSTREAM_MAX_RETRIES="0")
    with ProcessGateway(env) as gateway:
        def dashboard() -> str:
            return httpx.get(gateway.url + "/operator", headers=ADMIN, timeout=10).text

        state.failures = [503] * 6
        for _ in range(6):  # free model, no key: each one fails at the upstream, once
            answer = httpx.post(gateway.url + "/v1/chat/completions", timeout=20,
                                json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
            assert answer.status_code >= 500
        assert wait_until(lambda: re.search(r"\bopenai open\b", section(dashboard(), "providers")), 15), \
            section(dashboard(), "providers")
        # the worker's own counts arrive with its next metrics snapshot (every 5 s)
        assert wait_until(lambda: "503: 6" in section(dashboard(), "providers"), 15), section(dashboard(), "providers")

        (worker,) = gateway.workers
        assert "live (" in section(dashboard(), "pools")
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        assert wait_until(lambda: "gone (" in section(dashboard(), "pools"), 20), section(dashboard(), "pools")
        assert "no worker" not in section(dashboard(), "pools")  # listed as gone while its entry lasts
    state.failures = []


def test_quantiles_read_as_prometheus_reads_them() -> None:
    buckets = [(0.1, 50.0), (0.5, 90.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert quantile(buckets, 0.5) == pytest.approx(0.1)
    assert quantile(buckets, 0.7) == pytest.approx(0.3)
    assert quantile(buckets, 0.95) == pytest.approx(0.75)
    assert quantile([], 0.5) is None and quantile([(float("inf"), 0.0)], 0.5) is None


def test_latency_bands_count_each_answered_call_once() -> None:
    fields: dict[str, int] = {}
    for seconds in (0.01, 0.04, 0.2, 0.3, 3.0, 500.0):
        name = latency_field(seconds)
        fields[name] = fields.get(name, 0) + 1
    assert fields == {"lat<=0.05": 2, "lat<=0.25": 1, "lat<=0.5": 1, "lat<=4": 1, "lat>": 1}
    bands = latency_bands(fields)
    assert bands[0] == (0.05, 2) and bands[-1] == (float("inf"), 6)
    assert quantile(bands, 0.5) == pytest.approx(0.25)
