"""Percentiles, per-phase summaries, medians across rounds, and the printed table."""

from __future__ import annotations

import statistics
from typing import Any

from bench.client import PhaseResult

# Absolute targets from issue 2 (2-core machine).
TARGETS = {
    "pickup_p50_ms": 1.0,
    "added_latency_p50_ms_c1": 3.0,
    "added_ttft_p50_ms_c1": 3.0,
    "cpu_per_1k_json": 2.0,
    "cpu_per_1k_stream": 4.0,
}
# Targets against LiteLLM proxy in the same run (issue 15): (ratio, "<=" or ">=").
RATIO_TARGETS = {
    "cpu_json": (0.15, "<="),
    "cpu_stream": (0.08, "<="),
    "added_latency_json_c1": (0.2, "<="),
    "added_ttft_stream_c1": (0.2, "<="),
    "throughput_json": (8.0, ">="),
    "throughput_stream": (14.0, ">="),
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


def ratios(phases: dict[str, Any], saturate: int) -> dict[str, Any]:
    """Gateway / LiteLLM for the issue's targets: CPU per request and throughput in the saturated phase, added
    latency and TTFT at concurrency 1 (p50). Empty without LiteLLM in the run."""
    out: dict[str, Any] = {}
    for kind in ("json", "stream"):
        c1, sat = phases.get(f"{kind}_c1"), phases.get(f"{kind}_c{saturate}")
        if sat and "litellm" in sat:
            out[f"cpu_{kind}"] = _div(sat["gateway"]["cpu_per_1k"]["total"], sat["litellm"]["cpu_per_1k"]["total"])
            out[f"cpu_{kind}_c1"] = _div(c1["gateway"]["cpu_per_1k"]["total"], c1["litellm"]["cpu_per_1k"]["total"]) if c1 else None
            out[f"throughput_{kind}"] = _div(sat["gateway"]["rps"], sat["litellm"]["rps"])
        if c1 and "litellm" in c1:
            key = "ttft_ms" if kind == "stream" else "latency_ms"
            name = f"added_{'ttft' if kind == 'stream' else 'latency'}_{kind}_c1"
            out[name] = _div(c1["gateway"]["added"][key]["p50"], c1["litellm"]["added"][key]["p50"])
    return out


def _div(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def verdict(value: float | None, target: float, op: str = "<=") -> str:
    if value is None:
        return "-"
    return "ok" if (value <= target if op == "<=" else value >= target) else "MISS"


def render(results: dict[str, Any]) -> str:
    config = results["config"]
    lines = [f"Megabrain bench: {results['machine']['cpus']} CPUs, redis-server {results['machine']['redis']}, "
             f"fake upstream {config['tokens']} tokens, {config['rounds']} round(s), medians; "
             f"{'megabrain serve (embedded store)' if config['serve'] else 'web + worker + redis'}"
             f"{', worker --processes %d' % config['worker_processes'] if config['worker_processes'] > 1 else ''}; "
             f"LiteLLM proxy {config['litellm'] or 'not installed (python -m bench --setup-litellm)'}",
             "The machine is shared: wall-clock figures (latency, requests/s) are noisy; CPU per request and Redis",
             "commands per request are the figures that hold.", ""]
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
    targets = [t for t in ("direct", "gateway", "litellm") if any(t in ph for ph in results["phases"].values())]
    header = f"{'phase':<14}{'metric':<26}" + "".join(f"{t:>12}" for t in targets)
    lines += [header, "-" * len(header)]
    for name, phase in results["phases"].items():
        stream = phase["stream"]
        rows: list[tuple[str, Any]] = []
        key = "ttft_ms" if stream else "latency_ms"
        what = "TTFT" if stream else "latency"
        for q in ("p50", "p99"):
            rows.append((f"{what} {q} ms", lambda t, q=q: phase[t][key][q]))
            rows.append((f"  added {q} ms", lambda t, q=q: phase[t].get("added", {}).get(key, {}).get(q, "")))
        if stream:
            rows.append(("total p50 ms", lambda t: phase[t]["latency_ms"]["p50"]))
        rows.append(("requests/s", lambda t: phase[t]["rps"]))
        rows.append(("CPU s/1k req (own procs)", lambda t: phase[t]["cpu_per_1k"]["total"] if t != "direct" else ""))
        rows.append(("  upstream CPU s/1k", lambda t: phase[t]["cpu_per_1k"]["upstream"]))
        rows.append(("upstream conns/1k req", lambda t: phase[t]["upstream_connections_per_1k"]))
        rows.append(("syscalls/req (own procs)", lambda t: sum(phase[t]["syscalls_per_request"].values()) if t != "direct" else ""))
        label = name
        for metric, get in rows:
            cells = "".join(f"{_cell(get(t)):>12}" for t in targets)
            lines.append(f"{label:<14}{metric:<26}{cells}")
            label = ""
        g = phase["gateway"]
        cpu = g["cpu_per_1k"]
        t = TARGETS["cpu_per_1k_stream" if stream else "cpu_per_1k_json"]
        lines.append(f"{'':<14}gateway CPU by process: " + ", ".join(f"{k} {v:.3f}" for k, v in cpu.items()
                                                            if k not in ("total", "upstream"))
                     + f"  (target <= {t} s/1k: {verdict(cpu['total'], t)})")
        commands = g.get("redis_commands_per_request")
        if commands:
            ranked = sorted(((k, v) for k, v in commands.items() if k != "total"), key=lambda kv: -kv[1])
            lines.append(f"{'':<14}Redis commands/request {commands['total']:.2f}: "
                         + ", ".join(f"{k} {v:g}" for k, v in ranked[:10]))
        logged = g.get("logged_queue_ms")
        if logged:
            lines.append(f"{'':<14}enqueue->pickup (web log) p50 {logged['p50']:.3f} ms, p99 {logged['p99']:.3f} ms")
        errors = {t: phase[t]["errors"] for t in targets if phase[t]["errors"]}
        if errors:
            lines.append(f"{'':<14}!! failed requests: {errors}")
        lines.append("")
    if results.get("ratios"):
        lines.append("gateway / LiteLLM (CPU and throughput: saturated phase; added latency/TTFT: c=1 p50):")
        for name, value in results["ratios"].items():
            target = RATIO_TARGETS.get(name)
            goal = f"target {target[1]} {target[0]}: {verdict(value, *target)}" if target else ""
            lines.append(f"  {name:<26}{_cell(value):>10}   {goal}")
        lines.append("")
    for name, text in results.get("profiles", {}).items():
        lines += [f"py-spy top 20, {name}:", text, ""]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value == "" or value is None:
        return "-" if value is None else ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)
