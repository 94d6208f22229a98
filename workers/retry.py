"""When to try an upstream again: exponential backoff with jitter, honouring Retry-After, within a deadline."""

from __future__ import annotations

import random
import time

from workers.providers.base import UpstreamError

BASE_DELAY = 0.25
MAX_DELAY = 8.0
MAX_RETRY_AFTER = 30.0  # a provider asking for longer is better left for the next provider


def backoff_delay(retry: int, error: UpstreamError) -> float:
    """Seconds to wait before retry number ``retry`` (0-based): the server's word if it gave one."""
    if error.retry_after is not None:
        return error.retry_after
    return min(MAX_DELAY, BASE_DELAY * 2**retry) * (0.5 + random.random() / 2)


def next_delay(retry: int, max_retries: int, error: UpstreamError, deadline: float) -> float | None:
    """The delay before retrying, or None when this provider should not be tried again."""
    if not error.retry_here or retry >= max_retries:
        return None
    delay = backoff_delay(retry, error)
    if delay > MAX_RETRY_AFTER or time.time() + delay >= deadline:
        return None
    return delay
