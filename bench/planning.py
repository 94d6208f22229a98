"""Catalog build time and planning cost per request: ``python -m bench.planning``.

No Redis, no processes: the catalog is built as a web process builds it at start-up (every provider
configured, so plans are as long as they get), then ``plan_for`` runs for typical ids — a pinned endpoint,
a bare id, a canonical id with ~30 endpoints, the same with ``provider`` preferences and a variant, and an
auto id — and the time per call (best of five rounds) is printed. ``auto`` walks every configured chat
model, so with all 67 providers configured it is the slow case by design.
"""

from __future__ import annotations

import argparse
import time
import timeit

from common.settings import load_settings
from common.wire import ProviderPreferences
from router.health import HealthSnapshot

CASES = (
    ("pinned endpoint", "openai/gpt-4o-mini", None),
    ("bare id", "gpt-4o-mini", None),
    ("canonical, ~30 endpoints", "meta-llama/llama-3.3-70b-instruct", None),
    ("canonical + order/ignore/max_price", "meta-llama/llama-3.3-70b-instruct",
     {"order": ["groq", "cerebras"], "ignore": ["novita"], "max_price": {"prompt": 1.0}}),
    ("canonical :floor", "meta-llama/llama-3.3-70b-instruct:floor", None),
    ("auto", "auto", None),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    started = time.perf_counter()
    from router.catalog import build_catalog
    from router.plan import plan_for
    from router.providers import REGISTRY, resolve_providers

    env = {f"{spec.id.upper().replace('-', '_')}_API_KEY": "k" for spec in REGISTRY}
    settings = load_settings(env)
    catalog = build_catalog(settings, resolve_providers(settings))
    print(f"catalog: {len(catalog)} endpoints, {len(catalog.endpoints)} canonical ids, "
          f"built in {time.perf_counter() - started:.2f} s (imports included)")
    health = HealthSnapshot(error_rates={"groq": 0.01}, latencies={"groq": 0.3, "cerebras": 0.2})
    messages = [{"role": "user", "content": "Hello"}]
    import msgspec

    for name, model, prefs in CASES:
        preferences = msgspec.convert(prefs, ProviderPreferences) if prefs else None
        routes = plan_for(catalog, model, health=health, messages=messages, preferences=preferences,
                          affinity="bench")
        def plan() -> None:
            plan_for(catalog, model, health=health, messages=messages, preferences=preferences, affinity="bench")

        # the best of five rounds: the machine's other load only ever adds time
        per_call = min(timeit.repeat(plan, number=args.calls, repeat=5)) / args.calls
        print(f"{name:<36} {len(routes):>3} candidates  {per_call * 1e6:8.1f} µs per plan")


if __name__ == "__main__":
    main()
