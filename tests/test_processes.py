"""The production shape: ``megabrain web`` and ``megabrain worker`` as separate processes on a real Redis."""

from __future__ import annotations

import os

import httpx
import pytest
import redis as sync_redis

from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import TEST_SECRET, ProcessGateway, assert_serves_chat, wait_until


def relay_channels(env: dict[str, str]) -> list[bytes]:
    """The reply channels web processes of ``env``'s namespace subscribe to: one per process (its relay)."""
    client = sync_redis.Redis.from_url(env["REDIS_URL"])
    try:
        return client.pubsub_channels(f"{env['MEGABRAIN_NAMESPACE']}:reply:*")
    finally:
        client.close()


def test_web_and_worker_processes(gateway_env: dict[str, str], fake_openai: tuple[OpenAIFakeState, str]) -> None:
    """A worker process behind ``megabrain web --workers 2`` (README, "Processes"): two web processes on the
    one port, each a whole web tier with its own relay subscription, all stopped with the command. (Several
    worker processes of a pool: tests/test_worker_processes.py, tests/test_resilience.py.)"""
    with ProcessGateway(gateway_env, workers=1, web_args=("--workers", "2")) as gateway:
        assert wait_until(lambda: len(relay_channels(gateway_env)) == 2, 30)
        assert_serves_chat(gateway.url, gateway_env["MEGABRAIN_TEST_API_KEY"])
    assert relay_channels(gateway_env) == []


@pytest.mark.usefixtures("clear_of_window_edge")  # counts per minute (tests/windows.py)
def test_forwarded_for_is_ignored_without_trusted_hops(gateway_env: dict[str, str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``megabrain web`` counts the TCP peer, whatever X-Forwarded-For claims, when no proxy hop is trusted
    (uvicorn's own proxy-header rewriting would otherwise hand the peer over to the client's header)."""
    config = tmp_path / "megabrain.toml"
    config.write_text('[limits]\nfree_requests_per_minute = 2\nanonymous_requests_per_day = 100\n'
                      'trusted_proxy_hops = 0\n\n[[models]]\nid = "openai/gpt-4o-mini"\nfree = true\n')
    env = {**gateway_env, "MEGABRAIN_CONFIG": str(config)}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    with ProcessGateway(env) as gateway:
        statuses = [
            httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=20,
                       headers={"x-forwarded-for": f"198.51.100.{n}"}).status_code
            for n in range(3)
        ]
    assert statuses == [200, 200, 429]


@pytest.mark.parametrize(("argv", "environ", "processes"), [
    (["web"], {"WEB_CONCURRENCY": "3"}, 3),  # the buildpack's variable
    (["web", "--workers", "2"], {"WEB_CONCURRENCY": "3"}, 2),  # the flag wins
    (["web"], {}, 1),
])
def test_web_concurrency_sets_the_number_of_web_processes(monkeypatch: pytest.MonkeyPatch, argv: list[str],
                                                          environ: dict[str, str], processes: int) -> None:
    """How many processes ``megabrain web`` asks uvicorn for (the processes themselves:
    test_web_and_worker_processes)."""
    import uvicorn

    from api.cli.main import main

    started: list[int] = []
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # never reached: nothing is served
    monkeypatch.setenv("MEGABRAIN_CONFIG", os.devnull)
    monkeypatch.setenv("MEGABRAIN_SECRET", TEST_SECRET)
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: started.append(kwargs["workers"]))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *args, **kwargs: started.append(1))
    main(argv)
    assert started == [processes]
