"""Floods of refused requests: admitted (per-IP or per-key limits) before planning, counted under bounded
metric labels, the "did you mean" search bounded (issue 23, finding 1).

The audit: no key, 3,000 random model ids, never a 429; ``/metrics`` grew from 601 to 3,601 series (one per
id, never freed, rewritten to Redis every 5 s); crafted ids cost 14 ms of CPU each in difflib over the
catalog; ``/metrics`` was public and showed every caller's ids.
"""

from __future__ import annotations

import random
import string
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.catalog import HINT_CANDIDATES, HINT_NAMES_PER_PIECE, HINT_RARE_PIECES, Catalog
from tests.harness import METRICS_HEADERS, GatewayHarness, create_key, env_for

FREE_RPM = 20
FLOOD = 3000


@pytest.fixture
def gw(redis_url: str, tmp_path: Path, fake_openai: Any) -> Iterator[GatewayHarness]:
    config = tmp_path / "megabrain.toml"
    config.write_text(f'[limits]\nfree_requests_per_minute = {FREE_RPM}\n\n[[models]]\nid = "openai/gpt-4o-mini"\n'
                      'free = true\n')
    env = env_for(redis_url, MEGABRAIN_CONFIG=str(config), OPENAI_BASE_URL=fake_openai[1],
                  OPENAI_API_KEY="sk-upstream-test")
    with GatewayHarness.from_env(env) as harness:
        yield harness


def catalog_of(gw: GatewayHarness) -> Catalog:
    return gw.server.config.app.state.gateway.catalog  # type: ignore[union-attr]


def series(gw: GatewayHarness) -> list[str]:
    response = httpx.get(gw.url + "/metrics", headers=METRICS_HEADERS, timeout=10)
    assert response.status_code == 200
    return [line for line in response.text.splitlines() if line and not line.startswith("#")]


def model_label(line: str) -> str | None:
    start = line.find('model="')
    return line[start + 7:line.index('"', start + 7)] if start >= 0 else None


def count_searches(catalog: Catalog) -> list[str]:
    """Every "did you mean" search the catalog makes from now on (an instance attribute shadows the method)."""
    searched: list[str] = []
    search = catalog.suggest

    def counted(model_id: str, limit: int = 3) -> list[str]:
        searched.append(model_id)
        return search(model_id, limit)

    catalog.suggest = counted  # type: ignore[method-assign]
    return searched


def random_id(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_lowercase + "-/.", k=rng.randint(8, 40)))


def test_thousands_of_unknown_ids_from_one_ip_get_429_and_mint_no_series(gw: GatewayHarness) -> None:
    rng = random.Random(23)
    searched = count_searches(catalog_of(gw))
    before = series(gw)
    started = time.monotonic()
    statuses: Counter[int] = Counter()
    with httpx.Client(base_url=gw.url, timeout=20) as http:
        for _ in range(FLOOD):
            response = http.post("/v1/chat/completions",
                                 json={"model": random_id(rng), "messages": [{"role": "user", "content": "hi"}]})
            statuses[response.status_code] += 1
            if response.status_code == 429:
                assert int(response.headers["retry-after"]) >= 1
    windows = int((time.monotonic() - started) // 60) + 2  # fixed minute windows the flood touched
    assert set(statuses) <= {404, 429}, statuses
    assert statuses[404] <= FREE_RPM * windows  # the per-IP limit holds for refusals too
    assert statuses[429] >= FLOOD - FREE_RPM * windows
    assert len(searched) == statuses[404]  # past the limit nothing is searched (refused before planning)
    after = series(gw)
    # the first refusal adds the route's latency histogram (17 series) and a counter per status; the
    # other 2,999 ids add nothing (the audit: one series per id, 3,000 more)
    assert len(after) - len(before) <= 17 + 2, sorted(set(after) - set(before))
    new_models = {m for m in (model_label(line) for line in after) if m} - {model_label(x) for x in before}
    assert new_models <= {"unknown", "none"}  # 404s name no id; 429s come before the body is read
    assert any('model="none"' in line and 'status="429"' in line for line in after)
    assert any('model="unknown"' in line and 'status="404"' in line for line in after)


def test_a_key_past_its_rpm_is_refused_before_planning(gw: GatewayHarness) -> None:
    key = create_key(gw.settings.redis_url or "", gw.settings.namespace)
    searched = count_searches(catalog_of(gw))
    with httpx.Client(base_url=gw.url, timeout=20) as http:
        admin = gw.server.config.app.state.gateway  # type: ignore[union-attr]
        record = gw.run(admin_key_store(admin).lookup(key))
        gw.run(set_rpm(admin, record.id, 5))
        statuses = [http.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                              json={"model": f"nosuch/model-{n}", "messages": [{"role": "user", "content": "hi"}]}
                              ).status_code for n in range(12)]
    assert statuses.count(404) <= 10 and statuses[-1] == 429, statuses  # 5 a minute (two windows at most)
    assert len(searched) == statuses.count(404)


def admin_key_store(gateway: Any) -> Any:
    from api.access.keys import KeyStore
    return KeyStore(gateway.redis, gateway.names)


async def set_rpm(gateway: Any, key_id: str, rpm: int) -> None:
    """Give a key an rpm in the store (the process's key cache is bypassed: it is new to it)."""
    import msgspec

    from api.access.keys import KeyNames, KeyRecord
    names = KeyNames(gateway.names)
    key_hash = (await gateway.redis.hget(names.ids, key_id)).decode()
    record = msgspec.msgpack.decode(await gateway.redis.get(names.record(key_hash)), type=KeyRecord)
    record.rpm = rpm
    await gateway.redis.set(names.record(key_hash), msgspec.msgpack.encode(record))


def test_metrics_need_the_metrics_or_admin_key(gw: GatewayHarness, caplog: pytest.LogCaptureFixture) -> None:
    assert httpx.get(gw.url + "/metrics", timeout=10).status_code == 401
    wrong = httpx.get(gw.url + "/metrics", headers={"authorization": "Bearer wrong-key-for-metrics"}, timeout=10)
    assert wrong.status_code == 401 and wrong.json()["error_type"] == "authentication_required"
    assert "wrong-key-for-metrics" not in caplog.text and "admin key refused" in caplog.text
    assert httpx.get(gw.url + "/metrics", headers=METRICS_HEADERS, timeout=10).status_code == 200


def test_the_did_you_mean_search_is_bounded_whatever_the_id(gw: GatewayHarness,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Bounded by construction (counts), with the CPU it takes printed: ids made of two listed names were
    the costly kind for difflib over every name sharing a word (7 ms each here)."""
    catalog = catalog_of(gw)
    rng = random.Random(7)
    names = list(catalog.models)
    crafted = [rng.choice(names)[:-2] + "x/" + rng.choice(names) for _ in range(200)]
    crafted += ["-".join(rng.choices(["gpt", "4o", "mini", "llama", "qwen", "instruct", "free"], k=60))
                for _ in range(100)]
    index = catalog._piece_index
    for model_id in crafted:  # the work per id: at most this many names counted, this many scored
        pieces = {model_id[:80].lower()[i:i + 3] for i in range(len(model_id[:80]) - 2)}
        rarest = sorted((len(index[p]) for p in pieces if p in index))[:HINT_RARE_PIECES]
        assert sum(min(n, HINT_NAMES_PER_PIECE) for n in rarest) <= HINT_RARE_PIECES * HINT_NAMES_PER_PIECE
    started = time.process_time()
    for model_id in crafted:
        assert len(catalog.suggest(model_id)) <= 3
    per_id = (time.process_time() - started) / len(crafted)
    assert HINT_CANDIDATES <= 16
    assert any(s.endswith("gpt-4o-mini") for s in catalog.suggest("gpt-4o-mni"))  # still useful for a typo
    with capsys.disabled():
        print(f"\n  did-you-mean search: {per_id * 1e6:.0f} µs of CPU per crafted id ({len(crafted)} ids)")
