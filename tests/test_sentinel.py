"""Sentinel: ``REDIS_URL=redis+sentinel://…`` and a failover the web and worker processes ride through.

A real master, a replica and a Sentinel (the store's server binary in ``--sentinel`` mode) on this
machine; ``megabrain web`` and ``megabrain worker`` as separate processes. After ``SENTINEL FAILOVER`` the
same processes serve again (chat and streams) from the new master, without a restart.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import redis as sync_redis

from common.redis import connect
from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import EXPECTED, ProcessGateway, RedisServer, create_key, env_for, reassemble, wait_until

MESSAGES = [{"role": "user", "content": "hi"}]
SERVICE = "mymaster"


class Sentinelled:
    """master + replica + one Sentinel watching them (quorum 1)."""

    def __init__(self, directory: Path) -> None:
        self.master = RedisServer("--repl-diskless-sync-delay", "0", directory=str(directory))
        self.replica = RedisServer("--replicaof", "127.0.0.1", "0", directory=str(directory))
        self.sentinel = RedisServer(sentinel=True, directory=str(directory))

    def start(self) -> "Sentinelled":
        self.master.start()
        self.replica.extra = ("--replicaof", "127.0.0.1", str(self.master.port))
        self.replica.start()
        assert wait_until(lambda: self._client(self.replica).info("replication").get("master_link_status") == "up",
                          20)
        self.sentinel.extra = (f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 1",
                               f"sentinel down-after-milliseconds {SERVICE} 2000",
                               f"sentinel failover-timeout {SERVICE} 10000")
        self.sentinel.start()
        assert wait_until(lambda: self._replicas_known() >= 1, 20), "the Sentinel never saw the replica"
        return self

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{SERVICE}/0"

    def _client(self, server: RedisServer) -> sync_redis.Redis:
        return sync_redis.Redis(port=server.port, socket_timeout=5)

    def _replicas_known(self) -> int:
        try:
            return len(self._client(self.sentinel).sentinel_slaves(SERVICE))
        except sync_redis.RedisError:
            return 0

    def master_port(self) -> int:
        try:
            _, port = self._client(self.sentinel).sentinel_get_master_addr_by_name(SERVICE)
        except sync_redis.RedisError:
            return 0
        return int(port)

    def replicated(self) -> bool:
        return self._client(self.master).wait(1, 5000) >= 1

    def failover(self) -> None:
        self._client(self.sentinel).sentinel_failover(SERVICE)

    def stop(self) -> None:
        for server in (self.sentinel, self.replica, self.master):
            server.stop()


@pytest.fixture
def sentinelled(tmp_path: Path) -> Iterator[Sentinelled]:
    group = Sentinelled(tmp_path)
    try:
        yield group.start()
    finally:
        group.stop()


def _serves(client: openai.OpenAI) -> bool:
    try:
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        chunks = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        streamed = reassemble(chunks)["text"]
    except openai.APIError:
        return False
    return answer.choices[0].message.content == EXPECTED and streamed == EXPECTED


def test_requests_recover_through_a_sentinel_failover(sentinelled: Sentinelled,
                                                      fake_openai: tuple[OpenAIFakeState, str]) -> None:
    env = env_for(sentinelled.url, OPENAI_BASE_URL=fake_openai[1], OPENAI_API_KEY="sk-upstream-test",
                  MEGABRAIN_POLL_DELAY="0.5")
    key = create_key(sentinelled.url, env["MEGABRAIN_NAMESPACE"])
    assert sentinelled.replicated()  # the key is on the replica too, before the master changes
    with ProcessGateway(env, workers=1) as gw:
        client = openai.OpenAI(api_key=key, base_url=gw.url + "/v1", max_retries=0, timeout=15)
        assert _serves(client)
        old_master = sentinelled.master_port()
        sentinelled.failover()
        assert wait_until(lambda: sentinelled.master_port() != old_master, 30), "no failover happened"
        assert sentinelled.master_port() == sentinelled.replica.port
        assert wait_until(lambda: _serves(client), 30), "requests did not recover after the failover"
        for _ in range(3):
            assert _serves(client)
        processes = [gw.web, *gw.workers]
        assert all(p is not None and p.poll() is None for p in processes)  # the same processes, never restarted
        assert len(gw.workers) == 1


def test_the_sentinel_url_names_sentinels_service_db_and_password() -> None:
    client = connect("redis+sentinel://:s3cret@10.0.0.1:26380,sentinel-b/cache/3")
    pool = client.connection_pool
    assert pool.service_name == "cache"
    assert pool.connection_kwargs["db"] == 3 and pool.connection_kwargs["password"] == "s3cret"
    sentinels = [c.connection_pool.connection_kwargs for c in pool.sentinel_manager.sentinels]
    assert [(s["host"], s["port"]) for s in sentinels] == [("10.0.0.1", 26380), ("sentinel-b", 26379)]
    with pytest.raises(ValueError, match="service name"):
        connect("redis+sentinel://127.0.0.1:26379")
