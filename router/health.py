"""Provider health as the router sees it: a read-only snapshot of failure rates and open circuits.

Pure: the snapshot is data loaded elsewhere (``api`` reads it from Redis, ``workers`` write the counts).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class HealthSnapshot:
    open_circuits: frozenset[str] = frozenset()  # "provider" or "provider|model"
    error_rates: dict[str, float] = field(default_factory=dict)  # same keys, 0..1
    latencies: dict[str, float] = field(default_factory=dict)  # same keys, seconds (median-ish)

    def healthy(self, provider: str, model: str) -> bool:
        return provider not in self.open_circuits and f"{provider}|{model}" not in self.open_circuits

    def error_rate(self, provider: str, model: str) -> float | None:
        return self.error_rates.get(f"{provider}|{model}", self.error_rates.get(provider))
