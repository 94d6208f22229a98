"""Provider health as the router sees it: failure rates, latencies and circuit breakers.

Pure: the decisions and the snapshot live here; ``workers/health.py`` writes the counts to Redis after
every upstream attempt and ``api/provider_health.py`` reads them back every couple of seconds.

Counts are kept per provider and per provider+model ("scopes": ``"openai"`` and ``"openai|openai/gpt-4o"``)
in time buckets of ``BUCKET_SECONDS``; the window is the last ``WINDOW_BUCKETS`` of them. A circuit opens
when a scope's window holds at least ``MIN_FAILURES`` failures that are at least ``FAILURE_RATIO`` of its
calls. It stays open for ``COOLDOWN_SECONDS``, then is half-open: the next request is a trial, whose success
closes the circuit (and forgets the window) and whose failure opens it again for another cool-down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BUCKET_SECONDS = 10
WINDOW_BUCKETS = 6  # the current bucket and the five before it: about the last minute
MIN_FAILURES = 5
FAILURE_RATIO = 0.5
COOLDOWN_SECONDS = 30.0
PROVIDER_FIELD = "*"  # the circuit-hash field of the provider scope itself


def scope_of(provider: str, model: str | None = None) -> str:
    """The name of a provider's (``model`` None) or a provider+model's counters and circuit."""
    return provider if not model else f"{provider}|{model}"


def bucket_scope(provider: str, bucket: int) -> str:
    """The ``Names.health`` scope of a provider's counters for one time bucket."""
    return f"{provider}@{bucket}"


def circuit_scope(provider: str) -> str:
    """The ``Names.health`` scope of a provider's circuits (the provider's own and its models')."""
    return f"{provider}#circuit"


def counts_as_failure(status: int) -> bool:
    """Whether an upstream status says the *provider* is in trouble (not the client's request).

    Transport errors and timeouts (0), 408, 429 and every 5xx (including Anthropic's 529) count; other 4xx
    mean the provider answered and said no, which is no reason to route around it.
    """
    return status == 0 or status in (408, 429) or status >= 500


def bucket_of(now: float) -> int:
    return int(now // BUCKET_SECONDS)


def window(now: float) -> list[int]:
    """The bucket numbers that make up the current window, oldest first."""
    current = bucket_of(now)
    return list(range(current - WINDOW_BUCKETS + 1, current + 1))


def should_open(failures: int, calls: int) -> bool:
    """The trip rule: enough failures, and a high enough share of the calls."""
    return failures >= MIN_FAILURES and calls > 0 and failures / calls >= FAILURE_RATIO


@dataclass
class Counts:
    """One scope's calls in the window: answered (ok), failed, and the summed duration of answered ones."""

    ok: int = 0
    fail: int = 0
    ms: int = 0

    @property
    def calls(self) -> int:
        return self.ok + self.fail

    def add(self, other: "Counts") -> None:
        self.ok += other.ok
        self.fail += other.fail
        self.ms += other.ms


LATENCY_BANDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)  # seconds, upper bounds


def latency_field(seconds: float) -> str:
    """The bucket-hash field counting a provider's answered calls this slow: ``lat<=<bound>`` (or ``lat>``);
    the dashboard reads p50/p95 of the last minute from them (``api/pages/dashboard.py``)."""
    for bound in LATENCY_BANDS:
        if seconds <= bound:
            return f"lat<={bound:g}"
    return "lat>"


def latency_bands(fields: dict[str, int]) -> list[tuple[float, float]]:
    """Cumulative ``(upper bound, calls)`` from a window's ``lat…`` fields, as a histogram's buckets."""
    per_band = {bound: fields.get(f"lat<={bound:g}", 0) for bound in LATENCY_BANDS}
    per_band[float("inf")] = fields.get("lat>", 0)
    total, out = 0.0, []
    for bound in sorted(per_band):
        total += per_band[bound]
        out.append((bound, total))
    return out


def counter_field(kind: str, model: str | None) -> str:
    """Field name in a bucket hash: ``ok``/``fail``/``ms`` for the provider, ``ok|<model>`` … per model."""
    return kind if not model else f"{kind}|{model}"


def hash_numbers(raw: dict[bytes | str, bytes | str], kind: type = float) -> dict[str, Any]:
    """A Redis hash's fields as text → numbers, skipping anything unreadable (never trust Redis blindly)."""
    result: dict[str, Any] = {}
    for name, value in raw.items():
        try:
            result[_text(name)] = kind(_text(value))
        except ValueError:
            continue
    return result


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def parse_bucket(provider: str, fields: dict[str, int]) -> dict[str, Counts]:
    """A bucket hash of one provider → counts per scope."""
    result: dict[str, Counts] = {}
    for name, value in fields.items():
        kind, _, model = name.partition("|")
        if kind not in ("ok", "fail", "ms"):
            continue
        counts = result.setdefault(scope_of(provider, model or None), Counts())
        setattr(counts, kind, getattr(counts, kind) + int(value))
    return result


def sum_buckets(provider: str, buckets: list[dict[str, int]]) -> dict[str, Counts]:
    total: dict[str, Counts] = {}
    for bucket in buckets:
        for scope, counts in parse_bucket(provider, bucket).items():
            total.setdefault(scope, Counts()).add(counts)
    return total


@dataclass(frozen=True)
class Transition:
    """What an outcome does to a scope's circuit: ``open`` (set until ``until``), ``close``, or nothing."""

    action: str  # "open" | "reopen" | "close" | ""
    until: float = 0.0


def decide(open_until: float | None, failed: bool, counts: Counts, now: float) -> Transition:
    """The circuit transition one attempt's outcome causes.

    ``open_until`` is the scope's circuit (None when closed); ``counts`` is its window including this
    attempt. While the circuit is open (before ``open_until``) outcomes of requests already in flight
    change nothing; after it, the circuit is half-open and the first outcome decides.
    """
    if open_until is None:
        if failed and should_open(counts.fail, counts.calls):
            return Transition("open", now + COOLDOWN_SECONDS)
        return Transition("")
    if now < open_until:
        return Transition("")
    if failed:
        return Transition("reopen", now + COOLDOWN_SECONDS)
    return Transition("close")


@dataclass(frozen=True)
class HealthSnapshot:
    """The router's view, loaded every couple of seconds. Keys are scopes (see ``scope_of``).

    A half-open scope is granted as healthy to exactly one ``healthy()`` call per snapshot (the trial);
    later calls see it unhealthy until the trial's outcome shows up in the next snapshot.
    """

    open_circuits: frozenset[str] = frozenset()  # "provider" or "provider|model"
    half_open: frozenset[str] = frozenset()  # cool-down over, waiting for a trial request
    error_rates: dict[str, float] = field(default_factory=dict)  # same keys, 0..1, over the window
    latencies: dict[str, float] = field(default_factory=dict)  # same keys, mean seconds of answered calls
    calls: dict[str, int] = field(default_factory=dict)  # same keys, calls in the window
    _trials: set[str] = field(default_factory=set, compare=False, repr=False)

    def healthy(self, provider: str, model: str) -> bool:
        for scope in (scope_of(provider), scope_of(provider, model)):
            if scope in self.open_circuits:
                return False
            if scope in self.half_open:
                if scope in self._trials:
                    return False
                self._trials.add(scope)
        return True

    def error_rate(self, provider: str, model: str) -> float | None:
        return self.error_rates.get(scope_of(provider, model), self.error_rates.get(provider))

    def latency(self, provider: str, model: str) -> float | None:
        return self.latencies.get(scope_of(provider, model), self.latencies.get(provider))

    def score(self, provider: str, model: str) -> float | None:
        """Badness in [0, 1] for ``router/auto.py``: 1 when a circuit is open, else the error rate."""
        scopes = (scope_of(provider), scope_of(provider, model))
        if any(s in self.open_circuits for s in scopes):
            return 1.0
        return self.error_rate(provider, model)

    def state(self, provider: str, model: str | None = None) -> str:
        """``open``, ``half_open`` or ``closed`` — for ``/providers`` and the status CLI."""
        scope = scope_of(provider, model)
        if scope in self.open_circuits:
            return "open"
        return "half_open" if scope in self.half_open else "closed"


def build_snapshot(
    circuits: dict[str, dict[str, float]], counts: dict[str, dict[str, Counts]], now: float
) -> HealthSnapshot:
    """Per provider: its circuit hash (field ``*`` or a model id → open until) and its window counts."""
    open_: set[str] = set()
    half: set[str] = set()
    for provider, fields in circuits.items():
        for name, until in fields.items():
            scope = scope_of(provider, None if name == PROVIDER_FIELD else name)
            (open_ if now < until else half).add(scope)
    rates: dict[str, float] = {}
    latencies: dict[str, float] = {}
    calls: dict[str, int] = {}
    for per_scope in counts.values():
        for scope, c in per_scope.items():
            if c.calls:
                rates[scope] = c.fail / c.calls
                calls[scope] = c.calls
            if c.ok:
                latencies[scope] = c.ms / c.ok / 1000
    return HealthSnapshot(open_circuits=frozenset(open_), half_open=frozenset(half), error_rates=rates,
                          latencies=latencies, calls=calls)
