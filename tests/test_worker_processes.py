"""``megabrain worker --processes N``: N worker processes under one parent, each a full worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.harness import ProcessGateway, assert_serves_chat, wait_until


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue
        if int(raw[raw.rindex(")") + 2:].split()[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw[raw.rindex(")") + 2] != "Z"


def _live_workers(url: str) -> int:
    ready = httpx.get(url + "/ready", timeout=2).json()
    return int(ready.get("pools", {}).get("openai", {}).get("live_workers", 0))


def test_worker_processes_serve_and_stop_together(gateway_env: dict[str, str]) -> None:
    env = {**gateway_env, "MEGABRAIN_WORKER_PROCESSES": "2"}  # the default --processes comes from here
    with ProcessGateway(env, workers=0) as gateway:
        parent = subprocess.Popen([sys.executable, "-m", "api.cli.main", "worker", "--providers", "openai"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert wait_until(lambda: _live_workers(gateway.url) == 2, 30)  # two processes, two worker ids
            children = _children(parent.pid)
            assert len(children) == 2
            assert_serves_chat(gateway.url, env["MEGABRAIN_TEST_API_KEY"], requests=4)

            # a child that dies on its own is replaced; the pool keeps two live processes
            os.kill(children[0], signal.SIGKILL)
            assert wait_until(lambda: children[0] not in _children(parent.pid)
                              and len(_children(parent.pid)) == 2, 30)
            children = _children(parent.pid)

            # SIGTERM to the parent stops every child, which leave the liveness set on their way out
            parent.send_signal(signal.SIGTERM)
            assert parent.wait(30) == 0
            assert not [pid for pid in children if _running(pid)]
            assert _live_workers(gateway.url) <= 1  # only the SIGKILLed child, which never said goodbye
        finally:
            if parent.poll() is None:
                parent.kill()
                parent.wait()
            if parent.stderr:
                parent.stderr.close()
