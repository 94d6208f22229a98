"""The Activity page (README, Accounts) over plain HTTP through a real gateway: a request made a moment ago is
listed with what it was billed (the settlement's own record, the same ``GET /api/v1/generation`` answers),
another account never sees it, pages and filters walk every entry once, the CSV export holds a date range,
and no prompt or answer appears."""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from api.access.keys import KeyStore
from common.names import Names, new_request_id
from common.redis import connect
from common.settlement import Settlement, settle
from common.usage import Generation, generation_encoder
from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import GatewayHarness
from tests.pages import PAID, Browser, accounts_env, keys_in

PROMPT = "a prompt the activity page must never show"
_ROW = re.compile(r"<code>(chatcmpl-[A-Za-z0-9_\-]+)</code>")
_OLDER = re.compile(r'href="([^"]*)" rel="next"')


@pytest.fixture
def gw(redis_url: str, fake_openai: tuple[OpenAIFakeState, str], tmp_path: Path) -> Iterator[GatewayHarness]:
    with GatewayHarness.from_env(accounts_env(redis_url, fake_openai[1], tmp_path)) as harness:
        yield harness


def joined(gw: GatewayHarness, email: str) -> tuple[Browser, str]:
    browser = Browser(gw.url)
    (key,) = keys_in(browser.join(email).text)
    return browser, key


def ask(gw: GatewayHarness, key: str, *, stream: bool = False) -> str:
    """A request with ``key``; returns its generation id (what the Activity row and the lookup name)."""
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=20)
    messages = [{"role": "user", "content": PROMPT}]
    if stream:
        chunks = list(client.chat.completions.create(model=PAID, messages=messages, stream=True))
        return chunks[0].id
    return client.chat.completions.create(model=PAID, messages=messages).id


def listed(page: str) -> list[str]:
    return _ROW.findall(page)


def walk(browser: Browser, path: str) -> list[str]:
    """Every generation id of the Activity, page after page by its "Older" link."""
    ids: list[str] = []
    pages = 0
    while path:
        page = browser.get(path)
        assert page.status_code == 200
        ids += listed(page.text)
        found = _OLDER.search(page.text)
        path = html.unescape(found.group(1)) if found else ""
        pages += 1
        assert pages < 50
    return ids


def test_a_request_made_a_moment_ago_is_listed_with_its_cost(gw: GatewayHarness) -> None:
    browser, key = joined(gw, "active@example.org")
    streamed = ask(gw, key, stream=True)
    answered = ask(gw, key)
    page = browser.get("/profile/activity")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert listed(page.text) == [answered, streamed]  # newest first, both settled before their answers ended
    assert PROMPT not in page.text and "tok0" not in page.text and key not in page.text
    # the row's cost is the one the request was billed: the lookup's, to the last digit
    looked_up = httpx.get(gw.url + "/api/v1/generation", params={"id": answered},
                          headers={"authorization": f"Bearer {key}"}).json()["data"]
    row = page.text[page.text.index(answered) - 2000:page.text.index(answered)]
    row = row[row.rindex("<tr>"):]
    assert looked_up["total_cost"] > 0
    assert f"{looked_up['total_cost']:.6f}" in row
    assert "openai/gpt-4o" in row and "default" in row and "stop" in row
    assert str(looked_up["tokens_completion"]) in row
    profile = browser.get("/profile").text
    assert 'href="/profile/activity"' in profile  # reachable from the header


def test_another_account_never_sees_them(gw: GatewayHarness) -> None:
    first, first_key = joined(gw, "first@example.org")
    second, _ = joined(gw, "second@example.org")
    mine = ask(gw, first_key)
    first_key_id = gw.run(_key_id(gw, first_key))
    assert listed(first.get("/profile/activity").text) == [mine]
    assert listed(second.get("/profile/activity").text) == []
    # naming the other account's key as a filter shows nothing of it either
    assert listed(second.get("/profile/activity", params={"key": first_key_id}).text) == []
    export = second.get("/profile/activity.csv")
    assert export.status_code == 200 and mine not in export.text
    assert Browser(gw.url).get("/profile/activity").headers["location"].endswith("/login")
    assert Browser(gw.url).get("/profile/activity.csv").headers["location"].endswith("/login")


async def _key_id(gw: GatewayHarness, key: str) -> str:
    redis = connect(gw.settings.redis_url)
    try:
        record = await KeyStore(redis, Names(gw.settings.namespace)).lookup(key)
        assert record is not None
        return record.id
    finally:
        await redis.aclose()


async def _seed(gw: GatewayHarness, key: str, models: list[str]) -> list[str]:
    """One settled request per model, through the settlement script itself; their generation ids, oldest first."""
    redis = connect(gw.settings.redis_url)
    names = Names(gw.settings.namespace)
    try:
        record = await KeyStore(redis, names).lookup(key)
        assert record is not None and record.owner
        ids = []
        for model in models:
            request_id = new_request_id()
            generation = Generation(id=f"chatcmpl-{request_id}", key_id=record.id, model=model, canonical=model,
                                    provider=model.split("/")[0], created=time.time(), prompt_tokens=3,
                                    completion_tokens=5, cost="0.000125")
            settled = await settle(redis, names, Settlement(
                request_id=request_id, attempt=0, key_id=record.id, model=model, deadline=time.time() + 60,
                prompt_tokens=3, completion_tokens=5, cost="0.000125", account=record.owner,
                generation=generation_encoder.encode(generation)))
            assert not settled.refused
            ids.append(generation.id)
        return ids
    finally:
        await redis.aclose()


def test_pages_and_filters_walk_every_request_once(gw: GatewayHarness) -> None:
    browser, key = joined(gw, "busy@example.org")
    models = ["openai/gpt-4o" if i % 3 else "openai/gpt-4o-mini" for i in range(130)]
    seeded = gw.run(_seed(gw, key, models), timeout=60)  # one settlement after another
    newest_first = list(reversed(seeded))  # each settled after the one before: a later microsecond
    assert walk(browser, "/profile/activity") == newest_first
    mini = [g for g, m in zip(seeded, models) if m == "openai/gpt-4o-mini"]
    assert walk(browser, "/profile/activity?model=openai/gpt-4o-mini") == list(reversed(mini))
    key_id = gw.run(_key_id(gw, key))
    assert walk(browser, f"/profile/activity?key={key_id}") == newest_first


def test_the_csv_export_holds_a_date_range(gw: GatewayHarness) -> None:
    browser, key = joined(gw, "export@example.org")
    answered = ask(gw, key)
    today = dt.datetime.now(dt.timezone.utc).date()
    export = browser.get("/profile/activity.csv", params={"from": today.isoformat(), "to": today.isoformat()})
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
    assert "attachment" in export.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert [r["request_id"] for r in rows] == [answered]
    assert rows[0]["model"] == "openai/gpt-4o" and rows[0]["key"] == "default" and float(rows[0]["cost_usd"]) > 0
    assert PROMPT not in export.text and key not in export.text
    yesterday = (today - dt.timedelta(days=1)).isoformat()
    earlier = browser.get("/profile/activity.csv", params={"from": yesterday, "to": yesterday})
    assert list(csv.DictReader(io.StringIO(earlier.text))) == []


async def _seed_ties(gw: GatewayHarness, key: str, count: int) -> list[str]:
    """``count`` entries written straight into the account's Activity, a third of them at each of three
    microseconds (settlements on several workers can tie); their generation ids."""
    redis = connect(gw.settings.redis_url)
    names = Names(gw.settings.namespace)
    try:
        record = await KeyStore(redis, names).lookup(key)
        assert record is not None and record.owner
        ids = []
        for i in range(count):
            request_id = new_request_id()
            generation = Generation(id=f"chatcmpl-{request_id}", key_id=record.id, model="openai/gpt-4o",
                                    canonical="openai/gpt-4o", provider="openai", created=time.time())
            await redis.set(names.generation(request_id), generation_encoder.encode(generation))
            await redis.zadd(names.activity(record.owner),
                             {f"{request_id}|{record.id}|openai/gpt-4o": 1_796_000_000_000_000 + i % 3})
            ids.append(generation.id)
        return ids
    finally:
        await redis.aclose()


def test_requests_settled_in_the_same_microsecond_are_each_listed_once(gw: GatewayHarness) -> None:
    browser, key = joined(gw, "ties@example.org")
    seeded = gw.run(_seed_ties(gw, key, 120), timeout=60)
    walked = walk(browser, "/profile/activity")
    assert len(walked) == len(set(walked)) == 120 and set(walked) == set(seeded)


def test_a_request_the_worker_failed_is_listed_with_its_status_and_no_cost(
        gw: GatewayHarness, fake_openai: tuple[OpenAIFakeState, str]) -> None:
    browser, key = joined(gw, "failed@example.org")
    fake_openai[0].failures = [400]  # the provider refuses it: neither retried nor handed on
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=20)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=PAID, messages=[{"role": "user", "content": PROMPT}])
    request_id = refused.value.response.headers["x-request-id"]
    answered = ask(gw, key)
    page = browser.get("/profile/activity").text
    assert listed(page) == [answered, f"chatcmpl-{request_id}"]
    row = page[page.index(f"chatcmpl-{request_id}") - 2000:page.index(f"chatcmpl-{request_id}")]
    row = row[row.rindex("<tr>"):]
    assert "400 invalid_request" in row and "0.000000" in row and PROMPT not in page
    rows = list(csv.DictReader(io.StringIO(browser.get("/profile/activity.csv").text)))
    assert [(r["status"], r["cost_usd"]) for r in rows][1] == ("400", "0")
    # the generation lookup stays for answered requests
    lookup = httpx.get(gw.url + "/api/v1/generation", params={"id": f"chatcmpl-{request_id}"},
                       headers={"authorization": f"Bearer {key}"})
    assert lookup.status_code == 404
