"""Usage accounting, done in the worker so counting never slows the web tier's request path."""

from __future__ import annotations

from typing import Any

from common.wire import Job, Route
from workers.runtime import Runtime


async def record(runtime: Runtime, job: Job, route: Route, usage: dict[str, Any] | None) -> None:
    """Count one served request (tokens, cost) for its API key (``job.meta['key_id']``), day and model."""
