"""Metrics hooks called on the request path (web tier) and in the pools (workers).

Each function must stay cheap: a dictionary hit and an increment. The Prometheus implementation and the
exposition (``GET /metrics``) live here too.
"""

from __future__ import annotations


def request_done(route: str, model: str, provider: str | None, status: int, seconds: float,
                 ttft: float | None = None) -> None:
    """One finished client request (web tier)."""


def upstream_attempt(provider: str, model: str, status: int, seconds: float, ok: bool) -> None:
    """One upstream call made by a worker, successful or not (status 0 = transport failure)."""


def upstream_retry(provider: str) -> None:
    """A worker is about to retry the same provider."""


def fallback(from_provider: str, to_provider: str) -> None:
    """A request moved to the next candidate provider."""


def relay_event(lag_seconds: float) -> None:
    """An event reached the relay ``lag_seconds`` after the worker published it."""
