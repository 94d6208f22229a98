"""Recording upstream outcomes for provider health (circuit breakers), shared through Redis."""

from __future__ import annotations

from common.wire import Route
from workers.runtime import Runtime


async def record(runtime: Runtime, route: Route, ok: bool, seconds: float, status: int) -> None:
    """Count one upstream call's outcome for ``route``'s provider and model."""
