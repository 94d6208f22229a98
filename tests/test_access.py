"""The access decision table, revocation across processes, concurrency, and the envelope as the SDK sees it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import openai
import pytest

from api.access.check import PAID_MODEL_MESSAGE, AccessContext, bearer_token, build_access_context, check_access
from api.access.client_ip import client_ip
from api.access.keys import KeyStore, hash_key
from common.settlement import record_usage
from common.names import Names
from common.redis import connect
from common.settings import Limits
from tests.harness import EXPECTED, FREE, PAID, GatewayHarness

pytestmark = pytest.mark.usefixtures("clear_of_window_edge")
IP = "203.0.113.10"
LIMITS = Limits(free_requests_per_minute=3, anonymous_requests_per_day=5)


@pytest.fixture
def ctx(redis, names: Names) -> AccessContext:  # type: ignore[no-untyped-def]
    return build_access_context(redis, names)


@pytest.fixture
def ctx2(other_redis, names: Names) -> AccessContext:  # type: ignore[no-untyped-def]
    return build_access_context(other_redis, names)


async def access(
    ctx: AccessContext, key: str | None = None, *, free: bool = True, ip: str | None = IP, limits: Limits = LIMITS
) -> Any:
    header = None if key is None else f"Bearer {key}"
    return await check_access(ctx, authorization_header=header, model_is_free=free, client_ip=ip, limits=limits)


def error_of(result: Any) -> tuple[int, str]:
    assert result.error is not None, "expected a refusal"
    return result.error.status, result.error.error_type


# --- the decision table, row by row -------------------------------------------------------------------


@pytest.mark.parametrize("free", [True, False])
async def test_unknown_key_is_refused_free_or_not(ctx: AccessContext, free: bool) -> None:
    assert error_of(await access(ctx, "mb-" + "x" * 43, free=free)) == (401, "authentication_required")


@pytest.mark.parametrize("header", ["Bearer ", "Bearer", "Bearer sk-someone-elses-key", "Basic dXNlcjpwdw=="])
async def test_unusable_authorization_counts_as_unknown_key(ctx: AccessContext, header: str) -> None:
    result = await check_access(ctx, authorization_header=header, model_is_free=True, client_ip=IP, limits=LIMITS)
    assert error_of(result) == (401, "authentication_required")


async def test_revoked_key_is_refused(ctx: AccessContext, store: KeyStore) -> None:
    record, key = await store.create("r")
    await store.revoke(record.id)
    assert error_of(await access(ctx, key, free=True)) == (401, "authentication_required")


async def test_unknown_key_wins_over_missing_ip(ctx: AccessContext) -> None:
    assert error_of(await access(ctx, "mb-" + "y" * 43, ip=None)) == (401, "authentication_required")


@pytest.mark.parametrize("free", [True, False])
async def test_anonymous_without_ip_is_missing_client_ip(ctx: AccessContext, free: bool) -> None:
    assert error_of(await access(ctx, None, free=free, ip=None)) == (400, "missing_client_ip")


async def test_keyed_request_needs_an_ip_only_for_free_models(ctx: AccessContext, store: KeyStore) -> None:
    _, key = await store.create("k")
    assert error_of(await access(ctx, key, free=True, ip=None)) == (400, "missing_client_ip")
    assert (await access(ctx, key, free=False, ip=None)).allowed


async def test_anonymous_paid_model(ctx: AccessContext) -> None:
    result = await access(ctx, None, free=False)
    assert error_of(result) == (401, "paid_model_auth_required")
    assert result.error.code == "PAID_MODEL_AUTH_REQUIRED"
    assert result.error.message == PAID_MODEL_MESSAGE == "You need to sign in to use this model."


async def test_anonymous_free_minute_limit(ctx: AccessContext) -> None:
    results = [await access(ctx) for _ in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    assert [r.headers["x-ratelimit-remaining"] for r in results[:3]] == ["2", "1", "0"]
    assert error_of(results[3]) == (429, "rate_limit_exceeded")
    assert "retry-after" in results[3].error.response_headers()
    assert results[3].headers["x-ratelimit-limit"] == "3"


async def test_anonymous_free_day_limit(ctx: AccessContext) -> None:
    limits = Limits(free_requests_per_minute=100, anonymous_requests_per_day=2)
    results = [await access(ctx, limits=limits) for _ in range(3)]
    assert [r.allowed for r in results] == [True, True, False]
    assert error_of(results[2]) == (401, "promotion_limit_reached")


async def test_day_allowance_reported_before_minute_limit(ctx: AccessContext) -> None:
    limits = Limits(free_requests_per_minute=1, anonymous_requests_per_day=1)
    assert (await access(ctx, limits=limits)).allowed
    assert error_of(await access(ctx, limits=limits)) == (401, "promotion_limit_reached")


async def test_keyed_free_requests_share_the_per_ip_minute_limit(ctx: AccessContext, store: KeyStore) -> None:
    _, key = await store.create("k")
    for _ in range(3):
        assert (await access(ctx)).allowed
    assert error_of(await access(ctx, key, free=True)) == (429, "rate_limit_exceeded")
    assert (await access(ctx, key, free=False)).allowed  # paid models are not under the free limit
    assert (await access(ctx, key, free=True, ip="203.0.113.99")).allowed


async def test_keyed_requests_are_not_under_the_anonymous_day_allowance(ctx: AccessContext, store: KeyStore) -> None:
    limits = Limits(free_requests_per_minute=100, anonymous_requests_per_day=1)
    _, key = await store.create("k")
    assert (await access(ctx, limits=limits)).allowed
    assert error_of(await access(ctx, limits=limits)) == (401, "promotion_limit_reached")
    assert (await access(ctx, key, limits=limits)).allowed


async def test_key_rpm(ctx: AccessContext, store: KeyStore) -> None:
    _, key = await store.create("k", rpm=2)
    results = [await access(ctx, key, free=False) for _ in range(3)]
    assert [r.allowed for r in results] == [True, True, False]
    assert error_of(results[2]) == (429, "rate_limit_exceeded")
    assert results[0].headers["x-ratelimit-limit"] == "2"
    assert results[0].key is not None and results[0].key.name == "k"


async def test_monthly_budget(redis, names: Names, ctx: AccessContext, store: KeyStore) -> None:  # type: ignore[no-untyped-def]
    record, key = await store.create("b", monthly_budget=1.0)
    await record_usage(redis, names, record.id, "openai/gpt-4o", 100, 100, "0.6")
    assert (await access(ctx, key, free=False)).allowed
    await record_usage(redis, names, record.id, "openai/gpt-4o", 100, 100, "0.6")
    result = await access(ctx, key, free=False)
    assert error_of(result) == (402, "budget_exceeded")
    assert (await access(ctx, key, free=True)).allowed  # free models cost nothing


async def test_anonymous_free_allowed_carries_key_none(ctx: AccessContext) -> None:
    result = await access(ctx)
    assert result.allowed and result.key is None and result.error is None


async def test_last_use_is_recorded(ctx: AccessContext, store: KeyStore) -> None:
    record, key = await store.create("u")
    assert (await store.list())[0].last_used is None
    assert (await access(ctx, key, free=False)).allowed
    assert (await store.list())[0].last_used is not None


def test_bearer_parsing() -> None:
    assert bearer_token(None) is None
    assert bearer_token("") is None and bearer_token("  ") is None  # an empty header carries no key
    assert bearer_token("bearer mb-abc") == "mb-abc"
    assert bearer_token("BEARER   mb-abc  ") == "mb-abc"
    assert bearer_token("Bearer") == ""
    assert bearer_token("Token mb-abc") == ""


# --- across processes ---------------------------------------------------------------------------------


async def test_revoke_reaches_every_process_on_its_next_request(
    redis, other_redis, names: Names, store: KeyStore  # type: ignore[no-untyped-def]
) -> None:
    a = build_access_context(redis, names, cache_ttl=600)  # a long cache: revocation must not depend on it
    b = build_access_context(other_redis, names, cache_ttl=600)
    record, key = await store.create("leaver")
    assert (await access(a, key, free=False)).allowed
    assert (await access(b, key, free=False)).allowed
    await KeyStore(other_redis, names).revoke(record.id)
    assert error_of(await access(a, key, free=False)) == (401, "authentication_required")
    assert error_of(await access(b, key, free=True)) == (401, "authentication_required")
    assert error_of(await access(a, key, free=True)) == (401, "authentication_required")


async def test_fifty_concurrent_requests_through_two_processes(ctx: AccessContext, ctx2: AccessContext) -> None:
    limits = Limits(free_requests_per_minute=20, anonymous_requests_per_day=1000)
    results = await asyncio.gather(*(access((ctx, ctx2)[i % 2], limits=limits) for i in range(50)))
    assert sum(r.allowed for r in results) == 20
    assert {error_of(r) for r in results if not r.allowed} == {(429, "rate_limit_exceeded")}


async def test_concurrent_keyed_rpm_through_two_processes(
    ctx: AccessContext, ctx2: AccessContext, store: KeyStore
) -> None:
    _, key = await store.create("busy", rpm=20)
    results = await asyncio.gather(*(access((ctx, ctx2)[i % 2], key, free=False) for i in range(50)))
    assert sum(r.allowed for r in results) == 20


async def test_spoofed_forwarded_for_does_not_dodge_the_ip_limit(ctx: AccessContext) -> None:
    router_peer = "10.1.2.3"
    allowed = 0
    for i in range(6):
        spoof = f"198.51.100.{i}, 192.0.2.{i}"
        ip = client_ip(router_peer, [f"{spoof}, {IP}"], 1)
        allowed += (await access(ctx, ip=ip)).allowed
    assert allowed == 3


async def test_ipv6_clients_share_a_slash_64(ctx: AccessContext) -> None:
    allowed = [(await access(ctx, ip=f"2001:db8:5:6::{i:x}")).allowed for i in range(1, 5)]
    assert allowed == [True, True, True, False]


async def test_redis_down_fails_closed(store: KeyStore, names: Names) -> None:
    _, key = await store.create("k")
    dead = connect("redis://127.0.0.1:1")
    try:
        ctx = build_access_context(dead, names)
        for result in (await access(ctx, None, free=True), await access(ctx, key, free=False)):
            assert error_of(result) == (503, "temporarily_unavailable")
    finally:
        await dead.aclose()


async def test_no_log_line_contains_a_key_or_its_hash(
    caplog: pytest.LogCaptureFixture, redis, names: Names, ctx: AccessContext, store: KeyStore  # type: ignore[no-untyped-def]
) -> None:
    caplog.set_level(logging.DEBUG)
    record, key = await store.create("logged", rpm=1, monthly_budget=0.5)
    await access(ctx, key, free=False)
    await access(ctx, key, free=False)
    await record_usage(redis, names, record.id, "m", 1, 1, "1")
    await access(ctx, key, free=False)
    await store.list()
    await store.revoke(record.id)
    await access(ctx, key, free=True)
    assert record.id in caplog.text  # logging was captured at all
    assert key not in caplog.text and key[3:] not in caplog.text
    assert hash_key(key) not in caplog.text


# --- the envelope through HTTP, as the OpenAI SDK sees it -----------------------------------------------


async def test_error_rows_through_the_openai_sdk(make_env: Callable[..., dict[str, str]]) -> None:
    """The decision table through the real app (one trusted proxy hop; FREE free, PAID paid), as the SDK
    raises it."""
    env = make_env(rpm=3, per_day=3)
    names = Names(env["MEGABRAIN_NAMESPACE"])
    redis = connect(env["REDIS_URL"])
    try:
        store = KeyStore(redis, names)
        record, key = await store.create("sdk", monthly_budget=0.1)
        await record_usage(redis, names, record.id, PAID, 1, 1, "0.2")
        _, good = await store.create("good")
    finally:
        await redis.aclose()
    with GatewayHarness.from_env(env) as gateway:
        await asyncio.to_thread(_sdk_rows, gateway.url + "/v1", key, good)


def _sdk_rows(base_url: str, budget_key: str, good_key: str) -> None:
    def client(key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=20)

    def call(model: str, key: str | None = None, xff: str | None = "192.0.2.50") -> Any:
        headers: dict[str, Any] = {}
        if xff is not None:
            headers["X-Forwarded-For"] = xff
        if key is None:
            headers["Authorization"] = openai.omit
        return client(key or "unused").chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], extra_headers=headers
        )

    def refused(exc_class: type[Exception], error_type: str, **kwargs: Any) -> Any:
        with pytest.raises(exc_class) as info:
            call(**kwargs)
        response = info.value.response  # type: ignore[attr-defined]
        assert response.json()["error_type"] == error_type
        assert response.json()["error"]["type"] == error_type
        return info.value

    exc = refused(openai.AuthenticationError, "paid_model_auth_required", model=PAID, xff="192.0.2.40")
    assert exc.code == "PAID_MODEL_AUTH_REQUIRED"
    assert exc.response.json()["error"]["message"].startswith("You need to sign in to use this model.")
    refused(openai.AuthenticationError, "authentication_required", model=FREE, key="mb-" + "z" * 43, xff="192.0.2.40")
    refused(openai.BadRequestError, "missing_client_ip", model=FREE, xff=None)
    # README (Security): requests refused before their limit ran count against the client's limits too, so
    # the two refusals above and one answer fill this client's minute (3)
    assert call(FREE, xff="192.0.2.40").choices[0].message.content == EXPECTED
    refused(openai.RateLimitError, "rate_limit_exceeded", model=FREE, xff="192.0.2.40")

    assert call(FREE).choices[0].message.content == EXPECTED
    assert call(FREE, xff="6.6.6.6, 192.0.2.50").model == FREE  # spoofed left entry: same client
    assert call(FREE, key=good_key).model == FREE  # keyed, same IP: same per-minute counter
    exc = refused(openai.RateLimitError, "rate_limit_exceeded", model=FREE, key=good_key)
    assert int(exc.response.headers["retry-after"]) >= 1
    assert exc.response.headers["x-ratelimit-remaining"] == "0"
    assert exc.response.headers["x-ratelimit-limit"] == "3"
    exc = refused(openai.APIStatusError, "budget_exceeded", model=PAID, key=budget_key)
    assert exc.status_code == 402
    assert call(PAID, key=good_key).choices[0].message.content == EXPECTED
    for _ in range(3):
        assert call(FREE, xff="192.0.2.51").model == FREE
    refused(openai.AuthenticationError, "promotion_limit_reached", model=FREE, xff="192.0.2.51")
