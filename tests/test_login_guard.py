"""Log-in attempts are counted before they are checked, in one atomic step; Argon2 runs a few at a time
(issue 23, finding 5).

The audit: 60 concurrent guesses against limits of 5 per email and 30 per IP were all tried, and the right
password as guess 60 logged in; five wrong passwords from anywhere locked the owner out for 15 minutes;
Argon2 ran for every guess at once, without a bound.

Argon2's ``verify`` is held at a gate in these tests (a threading.Event), so "concurrent" means exactly
that: every guess is in flight before any of them is answered by the hash.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.access import accounts
from api.access.accounts import HashingSlots
from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import GatewayHarness, wait_until
from tests.pages import PASSWORD, Browser, accounts_env, csrf_of


class GatedVerify:
    """Argon2's verify, counted and held until ``open()``: how many ran, and how many at once."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.calls = 0
        self.inside = 0
        self.most_inside = 0

    def __call__(self, *args: Any) -> Any:
        with self.lock:
            self.calls += 1
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            self.gate.wait(30)
            return self.real(*args)
        finally:
            with self.lock:
                self.inside -= 1


@pytest.fixture
def start(redis_url: str, fake_openai: tuple[OpenAIFakeState, str], tmp_path: Path
          ) -> Iterator[Callable[..., GatewayHarness]]:
    started: list[GatewayHarness] = []

    def run(**options: Any) -> GatewayHarness:
        harness = GatewayHarness.from_env(accounts_env(redis_url, fake_openai[1], tmp_path, hops=1, **options),
                                          pools=()).start()
        started.append(harness)
        return harness

    yield run
    for harness in started:
        harness.stop()


class _Hasher:
    """argon2's PasswordHasher (its attributes are read-only) with ``verify`` gated."""

    def __init__(self, real: Any, verify: GatedVerify) -> None:
        self.hash = real.hash
        self.verify = verify


@pytest.fixture
def gated(monkeypatch: pytest.MonkeyPatch) -> Iterator[GatedVerify]:
    gate = GatedVerify(accounts._hasher.verify)
    monkeypatch.setattr(accounts, "_hasher", _Hasher(accounts._hasher, gate))
    yield gate
    gate.gate.set()


def post_login(url: str, ip: str, email: str, password: str) -> Callable[[], int]:
    """A log-in form ready to post (its page fetched, its token read): the call posts it, returns the status."""
    http = httpx.Client(base_url=url, follow_redirects=False, timeout=60,
                        headers={"origin": url, "x-forwarded-for": ip})
    token = csrf_of(http.get("/login").text)

    def send() -> int:
        try:
            return http.post("/login", data={"csrf_token": token, "email": email, "password": password}).status_code
        finally:
            http.close()

    return send


def test_sixty_concurrent_guesses_count_sixty_and_the_right_one_last_does_not_log_in(
        start: Callable[..., GatewayHarness], gated: GatedVerify) -> None:
    gw = start(per_email_ip=5, per_ip=30)
    gated.gate.set()
    Browser(gw.url, {"x-forwarded-for": "198.51.100.1"}).join("owner@example.org")  # its own log-in: 1 verify
    gated.gate.clear()
    gated.calls = 0
    ip = "203.0.113.60"
    wrong = [post_login(gw.url, ip, "owner@example.org", f"guess number {n}") for n in range(59)]
    right = post_login(gw.url, ip, "owner@example.org", PASSWORD)
    answers: list[int] = []
    with ThreadPoolExecutor(max_workers=60) as pool:
        futures = [pool.submit(send) for send in wrong]
        # every guess is in: those the limit let through wait at Argon2's gate, the others were answered
        assert wait_until(lambda: sum(f.done() for f in futures) >= 54, 30)
        assert right() == 429  # guess 60, the right password: refused, the 5 in flight count already
        gated.gate.set()
        answers = [f.result(30) for f in futures]
    assert sorted(answers) == [401] * 5 + [429] * 54
    assert gated.calls == 5  # only the counted attempts reached Argon2


def test_a_strangers_failures_do_not_lock_the_owner_out(start: Callable[..., GatewayHarness]) -> None:
    gw = start()  # production defaults: 5 per email and address, 100 per email, 30 per address
    Browser(gw.url, {"x-forwarded-for": "198.51.100.2"}).join("mine@example.org")
    stranger = {"x-forwarded-for": "192.0.2.5"}
    assert [Browser(gw.url, stranger).login("mine@example.org", "not it, sorry").status_code
            for _ in range(5)] == [401] * 5
    assert Browser(gw.url, stranger).login("mine@example.org").status_code == 429
    assert Browser(gw.url, {"x-forwarded-for": "198.51.100.2"}).login("mine@example.org").status_code == 303
    assert Browser(gw.url, {"x-forwarded-for": "198.51.100.77"}).login("mine@example.org").status_code == 303


def test_argon2_runs_a_few_at_a_time_and_a_crowd_beyond_the_queue_gets_503(
        start: Callable[..., GatewayHarness], gated: GatedVerify) -> None:
    gw = start()
    gateway = gw.server.config.app.state.gateway  # type: ignore[union-attr]
    gateway.hashing = HashingSlots(size=2, waiting=6)
    logins = [post_login(gw.url, f"198.51.100.{100 + n}", f"user{n}@example.org", "whatever it is")
              for n in range(12)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        futures = [pool.submit(send) for send in logins]
        # 2 hash (at the gate), 6 wait for a slot, 4 are told to come back
        assert wait_until(lambda: sum(f.done() for f in futures) >= 4 and gated.inside == 2, 30)
        assert gated.most_inside == 2
        refused = [f.result() for f in futures if f.done()]
        gated.gate.set()
        answers = [f.result(30) for f in futures]
    assert refused == [503] * 4
    assert sorted(answers) == [401] * 8 + [503] * 4  # unknown emails: the same hashing, the same answer
    assert gated.most_inside == 2 and gated.calls == 8
