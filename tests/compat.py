"""README's compatibility table (client × protocol × model family), generated from test results.

**Recording (the whole API).** A test that proves one cell says so with a marker::

    @pytest.mark.compat(client="Claude Code", npm="@anthropic-ai/claude-code",
                        protocol="Anthropic Messages", family="Claude")

(or ``pytest.param(..., marks=pytest.mark.compat(...))`` per parameter). ``npm=`` or ``pypi=`` names the
package whose installed version the row shows; ``family`` is the model family behind the gateway
("Claude", "OpenAI chat", "OpenAI reasoning", "Gemini"). This plugin (``conftest.py`` loads it) writes
each marked test's outcome (pass, fail with its first line, or skip with its reason) to
``.results/compat.json`` (gitignored) at the end of the run, merged with earlier runs' rows, so a
partial run updates only the rows it ran.

**The table.** ``python -m tests.compat`` rewrites README.md between the ``compat-table`` markers from
that file (``--check`` only says whether README is current).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / ".results" / "compat.json"
README = ROOT / "README.md"
BEGIN, END = "<!-- compat-table:begin -->", "<!-- compat-table:end -->"
FAMILIES = ("Claude", "OpenAI chat", "OpenAI reasoning", "Gemini")  # column order; others follow
PROTOCOLS = ("Anthropic Messages", "OpenAI Responses", "OpenAI Chat Completions", "Gemini API")
MARK = {"pass": "✅ pass", "fail": "❌ fail", "skip": "⏭ skipped"}

_outcomes: dict[str, dict[str, Any]] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "compat(client, protocol, family, npm=None, pypi=None): a compatibility "
                                       "table cell (tests/compat.py)")


def version_of(row: dict[str, Any]) -> str:
    """The installed version of the row's ``npm`` or ``pypi`` package ("" when unknown)."""
    if row.get("npm"):
        from tests.agent_clients import module_path, package_version

        location = module_path(row["npm"])
        return package_version(location) if location is not None else ""
    try:
        return metadata.version(row["pypi"]) if row.get("pypi") else ""
    except metadata.PackageNotFoundError:
        return ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    marker = item.get_closest_marker("compat")
    if marker is None:
        return
    report = outcome.get_result()
    if report.when == "call" or (report.when == "setup" and not report.passed):
        row = dict(marker.kwargs)
        if report.skipped:
            status, detail = "skip", _skip_reason(report)
        elif report.passed:
            status, detail = "pass", ""
        else:
            status, detail = "fail", _first_line(report)
        row.update(status=status, detail=detail[:300], test=item.nodeid, version=version_of(row),
                   at=int(time.time()))
        _outcomes[_key(row)] = row


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _outcomes:
        record(list(_outcomes.values()))


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    return str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)


def _first_line(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    return text.strip().splitlines()[0] if text.strip() else "failed"


def _key(row: dict[str, Any]) -> str:
    return " | ".join(str(row.get(k, "")) for k in ("client", "protocol", "family"))


def record(rows: list[dict[str, Any]]) -> None:
    """Merge rows into the results file under an exclusive lock (parallel pytest runs may finish together)."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        known = load()
        known.update({_key(row): row for row in rows})
        tmp = RESULTS.with_suffix(".tmp")
        tmp.write_text(json.dumps(known, indent=1, sort_keys=True, ensure_ascii=False))
        tmp.replace(RESULTS)


def load() -> dict[str, dict[str, Any]]:
    try:
        return json.loads(RESULTS.read_text())
    except (FileNotFoundError, ValueError):
        return {}


# ------------------------------------------------------------------------------------------------ table


def _order(value: str, preferred: tuple[str, ...]) -> tuple[int, str]:
    return (preferred.index(value) if value in preferred else len(preferred), value)


def table(rows: list[dict[str, Any]]) -> str:
    """Rows: client and protocol; columns: model families; cells: the recorded outcome."""
    families = sorted({r["family"] for r in rows}, key=lambda f: _order(f, FAMILIES))
    clients: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for row in rows:
        name = f"{row['client']} {row.get('version') or ''}".strip()
        clients.setdefault((name, row["protocol"]), {})[row["family"]] = row
    order = sorted(clients, key=lambda k: (k[0].lower(), _order(k[1], PROTOCOLS)))
    lines = ["| client | protocol | " + " | ".join(families) + " |",
             "|---|---|" + "---|" * len(families)]
    for name, protocol in order:
        cells = [MARK[c["status"]] if (c := clients[(name, protocol)].get(f)) else "—" for f in families]
        lines.append(f"| {name} | {protocol} | " + " | ".join(cells) + " |")
    stamp = time.strftime("%Y-%m-%d", time.gmtime(max(r.get("at", 0) for r in rows)))
    return "\n".join(lines) + (f"\n\n— not tested. Generated by `python -m tests.compat` from the tests' results "
                                f"of {stamp}.")


def rewrite(readme: str, rows: list[dict[str, Any]]) -> str:
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return readme[:start] + "\n" + table(rows) + "\n" + readme[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rewrite README's compatibility table from the recorded results.")
    parser.add_argument("--check", action="store_true", help="only say whether README is current (exit 1 if not)")
    args = parser.parse_args(argv)
    rows = list(load().values())
    if not rows:
        print(f"no results in {RESULTS}: run the tests first (pytest, or .ci/run)", file=sys.stderr)
        return 1
    current = README.read_text()
    updated = rewrite(current, rows)
    if args.check:
        print("README's table is current" if updated == current else "README's table differs from the results")
        return 0 if updated == current else 1
    README.write_text(updated)
    print(f"README.md: {len(rows)} results written into the compatibility table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
