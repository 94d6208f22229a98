"""``megabrain worker --processes N``: N worker processes under one parent, so one dyno uses every core.

Like ``megabrain web --workers N`` (uvicorn's supervisor): the parent forks the children before any event
loop exists, forwards SIGTERM/SIGINT to them (each drains its in-flight jobs within the shutdown grace),
and starts a child again if one dies on its own. Every child is a complete worker process with its own
worker id, liveness entries and Redis connections, so nothing is shared between them but the queue.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess

log = logging.getLogger("megabrain.worker")

RESTART_DELAY = 1.0  # seconds before a child that died on its own is started again


def supervise(processes: int, target: Callable[[], None], *, grace: float) -> None:
    """Run ``target`` in ``processes`` forked children until SIGTERM/SIGINT; then wait ``grace`` + 5 s for
    them to drain, and kill what is left."""
    context = multiprocessing.get_context("fork")  # children inherit the loaded settings and imports
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    def spawn(index: int) -> BaseProcess:
        child = context.Process(target=_child, args=(target,), name=f"megabrain-worker-{index}", daemon=False)
        child.start()
        return child

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    children = [spawn(i) for i in range(processes)]
    log.info("worker supervisor: %d processes (pids %s)", processes, ", ".join(str(c.pid) for c in children))
    try:
        while not stopping:
            for i, child in enumerate(children):
                if not child.is_alive() and not stopping:
                    log.warning("worker process %s exited with %s; starting another", child.pid, child.exitcode)
                    time.sleep(RESTART_DELAY)
                    children[i] = spawn(i)
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for child in children:
            if child.is_alive():
                child.terminate()  # SIGTERM: the child drains, like a lone worker does
        deadline = time.monotonic() + grace + 5.0
        for child in children:
            child.join(max(0.1, deadline - time.monotonic()))
            if child.is_alive():
                child.kill()
                child.join()


def _child(target: Callable[[], None]) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)  # the child's event loop installs its own handlers
    target()
