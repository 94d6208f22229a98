"""Percentiles, per-phase summaries, medians across rounds, and the printed table."""

from __future__ import annotations

import statistics
from typing import Any

from bench.client import PhaseResult

# Targets from issue 2 (2-core machine).
TARGETS = {
    "pickup_p50_ms": 1.0,
    "added_latency_p50_ms_c1": 3.0,
    "added_ttft_p50_ms_c1": 3.0,
    "cpu_per_1k_nonstream": 2.0,
    "cpu_per_1k_stream": 4.0,
}


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def p50_p99_ms(values: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 0.5) * 1000, 3), "p99": round(percentile(values, 0.99) * 1000, 3)}


def summarize(result: PhaseResult, stream: bool) -> dict[str, Any]:
    ok = [s for s in result.samples if s.status == 200]
    out: dict[str, Any] = {
        "requests": len(result.samples),
        "errors": result.errors,
        "rps": round(len(result.samples) / result.wall, 1) if result.wall else 0.0,
        "latency_ms": p50_p99_ms([s.total for s in ok]),
    }
    if stream:
        out["ttft_ms"] = p50_p99_ms([s.first_token for s in ok if s.first_token is not None])
    return out


def added(direct: dict[str, Any], gateway: dict[str, Any], key: str) -> dict[str, float]:
    return {q: round(gateway[key][q] - direct[key][q], 3) for q in ("p50", "p99")}


def median_of(rounds: list[Any]) -> Any:
    """Element-wise median of nested dicts of numbers (a key missing from a round counts as 0)."""
    first = rounds[0]
    if isinstance(first, dict):
        keys = dict.fromkeys(k for r in rounds for k in r)
        return {k: median_of([r.get(k, 0) for r in rounds]) for k in keys}
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return round(statistics.median(rounds), 3)
    return first


def verdict(value: float, target: float) -> str:
    return "ok" if value <= target else "MISS"


def render(results: dict[str, Any]) -> str:
    lines = [f"Megabrain bench: {results['machine']['cpus']} CPUs, redis-server {results['machine']['redis']}, "
             f"fake upstream {results['config']['tokens']} tokens, {results['config']['rounds']} round(s); "
             "medians across rounds", ""]
    pickup = results.get("pickup")
    if pickup:
        t = TARGETS["pickup_p50_ms"]
        lines += [
            f"enqueue -> pickup (n={pickup['jobs']}, idle worker):",
            f"  worker's queued_ms (enqueue call -> job picked up)  p50 {pickup['worker_queued_ms']['p50']:7.3f} ms   "
            f"p99 {pickup['worker_queued_ms']['p99']:7.3f} ms   target p50 <= {t} ms: "
            f"{verdict(pickup['worker_queued_ms']['p50'], t)}",
            f"  enqueue call -> first event (pickup + upstream call + hop)  p50 "
            f"{pickup['start_event_ms']['p50']:7.3f} ms   p99 {pickup['start_event_ms']['p99']:7.3f} ms",
            f"  (one PUBLISH hop alone          p50 {pickup['publish_hop_ms']['p50']:7.3f} ms)", ""]
    header = f"{'phase':<16}{'metric':<24}{'direct':>10}{'gateway':>10}{'added':>10}{'gw/dir':>8}   target"
    lines += [header, "-" * len(header)]
    for name, phase in results["phases"].items():
        stream = phase["stream"]
        c = phase["concurrency"]
        d, g = phase["direct"], phase["gateway"]
        label = f"{'stream' if stream else 'non-stream'} c={c}"
        key = "ttft_ms" if stream else "latency_ms"
        what = "TTFT" if stream else "latency"
        for q in ("p50", "p99"):
            target = ""
            if q == "p50" and c == 1:
                t = TARGETS["added_ttft_p50_ms_c1" if stream else "added_latency_p50_ms_c1"]
                target = f"added <= {t} ms: {verdict(phase['added'][key][q], t)}"
            lines.append(f"{label:<16}{what + ' ' + q + ' ms':<24}{d[key][q]:>10.3f}{g[key][q]:>10.3f}"
                         f"{phase['added'][key][q]:>10.3f}{_ratio(g[key][q], d[key][q]):>8}   {target}")
            label = ""
        if stream:
            lines.append(f"{'':<16}{'total p50 ms':<24}{d['latency_ms']['p50']:>10.3f}"
                         f"{g['latency_ms']['p50']:>10.3f}{phase['added']['latency_ms']['p50']:>10.3f}"
                         f"{_ratio(g['latency_ms']['p50'], d['latency_ms']['p50']):>8}")
        lines.append(f"{'':<16}{'requests/s':<24}{d['rps']:>10.1f}{g['rps']:>10.1f}{'':>10}"
                     f"{_ratio(g['rps'], d['rps']):>8}")
        cpu = phase["cpu_per_1k"]
        t = TARGETS["cpu_per_1k_stream" if stream else "cpu_per_1k_nonstream"]
        lines.append(f"{'':<16}{'CPU s/1k req, gateway':<24}{'':>10}{cpu['gateway']:>10.3f}{'':>10}{'':>8}   "
                     f"<= {t}: {verdict(cpu['gateway'], t)}  (web {cpu['web']:.3f}, worker {cpu['worker']:.3f}, "
                     f"redis {cpu['redis']:.3f}; upstream {cpu['upstream']:.3f} vs {cpu['upstream_direct']:.3f} direct)")
        commands = phase.get("redis_commands_per_request")
        if commands:
            ranked = sorted(((k, v) for k, v in commands.items() if k != "total"), key=lambda kv: -kv[1])
            top = ", ".join(f"{k} {v:g}" for k, v in ranked[:8])
            lines.append(f"{'':<16}{'Redis cmds/request':<24}{'':>10}{commands['total']:>10.2f}{'':>10}{'':>8}   ({top})")
        logged = phase.get("logged_queue_ms")
        if logged:
            lines.append(f"{'':<16}{'enqueue->pickup (log)':<24}{'':>10}{logged['p50']:>10.3f}{'':>10}{'':>8}   "
                         f"p50 ms; p99 {logged['p99']:.3f} (queue_ms of the web's request log)")
        sys_ = phase.get("syscalls_per_request")
        if sys_:
            lines.append(f"{'':<16}{'read+write syscalls/req':<24}{'':>10}{sum(sys_.values()):>10.1f}{'':>10}{'':>8}   "
                         f"(web {sys_['web']:g}, worker {sys_['worker']:g}, redis {sys_['redis']:g})")
        errors = d["errors"] + g["errors"]
        if errors:
            lines.append(f"{'':<16}!! {d['errors']} direct and {g['errors']} gateway requests failed")
        lines.append("")
    return "\n".join(lines)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"
