"""Access end to end, through the real gateway: the error table as the OpenAI SDK sees it, limits across two
API processes sharing one Redis, X-Forwarded-For spoofing, keys from ``megabrain keys``, revocation, logs.

Every gateway here sits "behind the Heroku router" (``trusted_proxy_hops = 1``), so each request names its
client in ``X-Forwarded-For`` and a request without one is ``missing_client_ip``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
import redis as sync_redis

from api.access.keys import hash_key
from common.names import Names
from common.usage import holds_key
from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import ADMIN_KEY, FREE, PAID, GatewayHarness, post, wait_until

MESSAGES = [{"role": "user", "content": "hi"}]
UNKNOWN_KEY = "mb-" + "u" * 43
pytestmark = pytest.mark.usefixtures("clear_of_window_edge")  # counts against per-minute limits (tests/windows.py)


@pytest.fixture
def two_apis(make_env: Callable[..., dict[str, str]], request: pytest.FixtureRequest
             ) -> Iterator[tuple[GatewayHarness, GatewayHarness]]:
    """Two API processes on one Redis namespace; the pools run beside the first."""
    rpm, per_day = getattr(request, "param", (3, 2))
    env = make_env(rpm=rpm, per_day=per_day)
    with GatewayHarness.from_env(env) as a, GatewayHarness.from_env(env, pools=()) as b:
        yield a, b


def sdk(gateway: GatewayHarness, key: str | None = None, ip: str | None = "198.51.100.1") -> openai.OpenAI:
    """An SDK client; ``key=None`` is anonymous (an empty Authorization header replaces the SDK's own)."""
    headers = {"Authorization": f"Bearer {key}" if key else ""}
    if ip:
        headers["X-Forwarded-For"] = ip
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="anonymous", default_headers=headers,
                         max_retries=0, timeout=20)


def create_key(gateway: GatewayHarness, name: str, **limits: Any) -> tuple[str, str]:
    response = httpx.post(gateway.url + "/admin/keys", json={"name": name, **limits},
                          headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["key"]


def sdk_error(call: Callable[[], Any]) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    return caught.value


def assert_envelope(error: openai.APIStatusError, cls: type, status: int, error_type: str) -> dict[str, Any]:
    assert type(error) is cls
    assert error.status_code == status
    body = error.response.json()
    assert body["error_type"] == error_type
    assert body["error"]["type"] == error_type
    assert body["error"]["code"] == error_type.upper()
    assert body["error"]["message"]
    return body


def has_rate_limit_headers(headers: httpx.Headers) -> bool:
    return all(name in headers for name in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"))


# --- the error table ----------------------------------------------------------------------------------------


def test_error_table_as_the_sdk_sees_it(two_apis: tuple[GatewayHarness, GatewayHarness]) -> None:
    gw, _ = two_apis

    def create(client: openai.OpenAI, model: str = FREE, **kw: Any) -> Any:
        return client.chat.completions.create(model=model, messages=MESSAGES, **kw)

    error = sdk_error(lambda: create(sdk(gw), temperature=5))
    assert_envelope(error, openai.BadRequestError, 400, "invalid_request")
    malformed = httpx.post(gw.url + "/v1/chat/completions", content=b"{nope", timeout=10,
                           headers={"content-type": "application/json", "x-forwarded-for": "198.51.100.1"})
    assert malformed.status_code == 400 and malformed.json()["error_type"] == "invalid_request"

    error = sdk_error(lambda: create(sdk(gw, ip=None)))  # behind a proxy, but no X-Forwarded-For
    assert_envelope(error, openai.BadRequestError, 400, "missing_client_ip")

    # refusals count against the caller's per-IP minute limit (3 here) like requests: one address each
    rows = ((UNKNOWN_KEY, FREE), (UNKNOWN_KEY, PAID), ("sk-someone-elses-openai-key", FREE))
    for n, (key, model) in enumerate(rows):
        error = sdk_error(lambda: create(sdk(gw, key, ip=f"198.51.100.2{n}"), model))
        assert_envelope(error, openai.AuthenticationError, 401, "authentication_required")

    error = sdk_error(lambda: create(sdk(gw, ip="198.51.100.30"), PAID))
    body = assert_envelope(error, openai.AuthenticationError, 401, "paid_model_auth_required")
    assert body["error"]["code"] == "PAID_MODEL_AUTH_REQUIRED"
    assert body["error"]["message"] == "You need to sign in to use this model. Create a free account and get your API key at /signup"

    anonymous = sdk(gw, ip="198.51.100.2")
    for _ in range(2):  # the day allowance is 2
        raw = anonymous.chat.completions.with_raw_response.create(model=FREE, messages=MESSAGES)
        assert raw.parse().choices[0].message.content
        assert has_rate_limit_headers(raw.headers)
    error = sdk_error(lambda: create(anonymous))
    assert_envelope(error, openai.AuthenticationError, 401, "promotion_limit_reached")
    assert error.response.headers["x-ratelimit-remaining"] == "0"

    _, key = create_key(gw, "free-user")
    keyed = sdk(gw, key, ip="198.51.100.3")
    for _ in range(3):  # keyed requests skip the day allowance but share the per-IP minute limit of 3
        raw = keyed.chat.completions.with_raw_response.create(model=FREE, messages=MESSAGES)
        assert raw.parse().choices[0].message.content and has_rate_limit_headers(raw.headers)
    error = sdk_error(lambda: create(keyed))
    assert_envelope(error, openai.RateLimitError, 429, "rate_limit_exceeded")
    assert int(error.response.headers["retry-after"]) >= 1
    assert has_rate_limit_headers(error.response.headers)

    _, rpm_key = create_key(gw, "rpm-user", rpm=2)
    for _ in range(2):
        raw = sdk(gw, rpm_key).chat.completions.with_raw_response.create(model=PAID, messages=MESSAGES)
        assert raw.headers["x-ratelimit-limit"] == "2"
    error = sdk_error(lambda: create(sdk(gw, rpm_key), PAID))
    assert_envelope(error, openai.RateLimitError, 429, "rate_limit_exceeded")
    assert "API key" in error.message


def test_budget_is_fed_by_the_workers_accounting(two_apis: tuple[GatewayHarness, GatewayHarness]) -> None:
    gw, other = two_apis
    _, key = create_key(gw, "thrifty", monthly_budget=0.0001)
    # 5 output tokens of gpt-4o fit the budget's reservation; 16,384 (its output limit) would not
    unlimited = sdk(gw, key).chat.completions.with_raw_response.create(model=PAID, messages=MESSAGES, max_tokens=5)
    assert not has_rate_limit_headers(unlimited.headers)  # no limit applies to a keyed paid request without rpm

    def usage() -> dict[str, Any]:
        return httpx.get(other.url + "/v1/usage", headers={"authorization": f"Bearer {key}"}, timeout=10).json()

    assert wait_until(lambda: usage()["month_spend"] > 0, 10)
    row = usage()["data"][0]
    assert (row["model"], row["requests"], row["completion_tokens"]) == (PAID, 1, 5)
    error = sdk_error(lambda: sdk(other, key).chat.completions.create(model=PAID, messages=MESSAGES))
    body = assert_envelope(error, openai.APIStatusError, 402, "budget_exceeded")
    assert "$0.0001 " in body["error"]["message"] and "e-0" not in body["error"]["message"]  # money as money
    error = sdk_error(lambda: sdk(other, key).chat.completions.create(model=PAID, messages=MESSAGES, max_tokens=5))
    assert_envelope(error, openai.APIStatusError, 402, "budget_exceeded")  # spent + this one's worst case > budget
    assert sdk(other, key).chat.completions.create(model=FREE, messages=MESSAGES).choices  # free: no budget


def test_a_budget_hold_ends_on_the_documented_bound(make_env: Callable[..., dict[str, str]],
                                                    fake_openai: tuple[OpenAIFakeState, str]) -> None:
    """README ("Reservations end on a bound traffic cannot extend"): each admitted request with a budget
    holds its worst case as its own entry, ending MEGABRAIN_REQUEST_TIMEOUT + 60 s after its admission: read
    while the request is in flight (the upstream held), on a gateway whose request timeout is 30 s."""
    state, _ = fake_openai
    state.hold_answers = True
    env = {**make_env(), "MEGABRAIN_REQUEST_TIMEOUT": "30"}
    try:
        with GatewayHarness.from_env(env) as gw, ThreadPoolExecutor(1) as pool:
            key_id, key = create_key(gw, "reserving", monthly_budget=5)
            admitted = time.time()
            answer = pool.submit(sdk(gw, key).chat.completions.create, model=PAID, messages=MESSAGES)
            assert wait_until(lambda: len(state.requests) == 1, 10)  # admitted, held, and waiting upstream
            read = time.time()
            client = sync_redis.Redis.from_url(env["REDIS_URL"])
            try:
                holds = client.zrange(holds_key(Names(env["MEGABRAIN_NAMESPACE"]), key_id), 0, -1, withscores=True)
            finally:
                client.close()
            state.hold_answers = False
            assert answer.result(30).choices
        [(member, ends_ms)] = holds  # one hold: this request's
        assert float(member.decode().rsplit("|", 1)[1]) > 0  # its worst case, in USD
        # its end: the request timeout (30 s) + 60 s after the admission, which fell between these two reads
        assert admitted + 30 + 60 - 0.01 <= ends_ms / 1000 <= read + 30 + 60
    finally:
        state.hold_answers = False


def test_anonymous_sdk_calls_free_models(two_apis: tuple[GatewayHarness, GatewayHarness]) -> None:
    """The two ways the README gives for calling free models with the SDK and no key."""
    gw, _ = two_apis
    client_wide = sdk(gw)  # default_headers={"Authorization": ""}
    assert client_wide.chat.completions.create(model=FREE, messages=MESSAGES).choices
    per_request = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=20)
    completion = per_request.chat.completions.create(
        model=FREE, messages=MESSAGES,
        extra_headers={"Authorization": openai.omit, "X-Forwarded-For": "198.51.100.9"})
    assert completion.choices
    error = sdk_error(lambda: per_request.chat.completions.create(  # the dummy key itself is not "no key"
        model=FREE, messages=MESSAGES, extra_headers={"X-Forwarded-For": "198.51.100.9"}))
    assert_envelope(error, openai.AuthenticationError, 401, "authentication_required")


# --- limits across processes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("two_apis", "refusal"), [((5, 1000), "rate_limit_exceeded"),
                                                   ((1000, 5), "promotion_limit_reached")],
                         indirect=["two_apis"], ids=["per-minute", "per-day"])
def test_concurrent_requests_through_two_api_processes(two_apis: tuple[GatewayHarness, GatewayHarness],
                                                       refusal: str) -> None:
    a, b = two_apis
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda i: post((a, b)[i % 2], FREE, ip="203.0.113.50"), range(12)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 5
    refused = [r for r in responses if r.status_code != 200]
    assert len(refused) == 7
    assert {r.json()["error_type"] for r in refused} == {refusal}
    assert all(has_rate_limit_headers(r.headers) for r in responses)


@pytest.mark.parametrize("two_apis", [(3, 1000)], indirect=True)
def test_spoofed_forwarded_for_cannot_dodge_the_per_ip_limit(two_apis: tuple[GatewayHarness, GatewayHarness]
                                                             ) -> None:
    gw, other = two_apis
    # The router appends the real peer; everything to its left is whatever the client sent.
    for i in range(3):
        assert post(gw, FREE, ip=f"10.0.0.{i}, 198.51.100.7").status_code == 200
    assert post(gw, FREE, ip="10.0.0.99, 198.51.100.7").json()["error_type"] == "rate_limit_exceeded"
    assert post(other, FREE, ip="198.51.100.7").status_code == 429
    two_headers = httpx.post(other.url + "/chat/completions", json={"model": FREE, "messages": MESSAGES},
                             headers=[("x-forwarded-for", "10.9.9.9"), ("x-forwarded-for", "198.51.100.7")],
                             timeout=20)
    assert two_headers.status_code == 429
    assert post(gw, FREE, ip="198.51.100.7, 198.51.100.8").status_code == 200  # a different real client


# --- keys from the CLI, revocation, logs --------------------------------------------------------------------


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "api.cli.main", "keys", *args], env=env, capture_output=True,
                          text=True, timeout=30)


def assert_key_lifecycle(cli_env: dict[str, str], a: GatewayHarness, b: GatewayHarness,
                         caplog: pytest.LogCaptureFixture, *via: str) -> None:
    """create → works on both API processes → listed → usage counted → revoke → refused on both at once."""
    created = run_cli(cli_env, "create", "--name", "cli-user", "--rpm", "100", *via)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("mb-") and "\n" not in key
    for gw in (a, b):
        assert sdk(gw, key).chat.completions.create(model=PAID, messages=MESSAGES).choices
    listing = run_cli(cli_env, "list", *via)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if "cli-user" in line)
    key_id = row.split()[0]
    assert key[:8] in row and "active" in row and key not in listing.stdout

    assert wait_until(lambda: _requests(run_cli(cli_env, "usage", key_id, *via).stdout) == 2, 10)

    revoked = run_cli(cli_env, "revoke", key_id, *via)
    assert revoked.returncode == 0 and key_id in revoked.stdout
    for gw in (b, a):  # both processes have the key cached; neither may serve it again
        error = sdk_error(lambda: sdk(gw, key).chat.completions.create(model=FREE, messages=MESSAGES))
        assert_envelope(error, openai.AuthenticationError, 401, "authentication_required")

    secrets = (key, hash_key(key), ADMIN_KEY)
    outputs = [created.stderr, listing.stdout, listing.stderr, revoked.stdout, revoked.stderr]  # not the key's line
    assert [s for s in secrets for text in outputs if s in text] == []
    assert caplog.records, "the gateway's logs were not captured"
    assert [r.getMessage() for r in caplog.records if any(s in r.getMessage() for s in secrets)] == []


def _requests(table: str) -> int:
    """The REQUESTS column of the ``keys usage`` row for the paid model."""
    for line in table.splitlines():
        cells = line.split()
        if len(cells) >= 3 and cells[1] == PAID:
            return int(cells[2])
    return 0


def test_cli_key_through_the_admin_api(two_apis: tuple[GatewayHarness, GatewayHarness],
                                       caplog: pytest.LogCaptureFixture) -> None:
    """With ``--url`` the CLI manages a running gateway's keys through its admin API."""
    caplog.set_level(logging.DEBUG)
    a, b = two_apis
    cli_env = {k: v for k, v in a.settings.env.items() if k != "REDIS_URL"}
    assert_key_lifecycle(cli_env, a, b, caplog, "--url", a.url)

    no_admin = run_cli({k: v for k, v in cli_env.items() if k != "MEGABRAIN_ADMIN_KEY"}, "list", "--url", a.url)
    assert no_admin.returncode == 1 and "MEGABRAIN_ADMIN_KEY" in no_admin.stderr
    wrong = run_cli({**cli_env, "MEGABRAIN_ADMIN_KEY": "wrong-admin-key"}, "list", "--url", a.url)
    assert wrong.returncode == 1 and "refused the admin key" in wrong.stderr


def test_cli_key_through_redis(two_apis: tuple[GatewayHarness, GatewayHarness],
                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    a, b = two_apis
    cli_env = {k: v for k, v in a.settings.env.items() if k != "MEGABRAIN_ADMIN_KEY"}  # Redis needs none
    assert cli_env.get("REDIS_URL")
    assert_key_lifecycle(cli_env, a, b, caplog)
