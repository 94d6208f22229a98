"""The suite's census: a whole run must run as many tests as before, and no test module may vanish into a skip.

A test that silently stops running is worse than a failing one: a broken import turned into a module-level
skip, a guard that skips when an attribute disappears, a parametrization that lost its cases. So every
*whole* run (``pytest`` with no selection, as ``.ci/run`` runs it) is counted, and with
``MEGABRAIN_TEST_CENSUS=strict`` (``.ci/run`` sets it; so does ``CI``) the run fails when

- a test module is skipped as a whole (its collection skipped, or every test in it), or
- it executed fewer tests than the floor: the count of the last recorded whole run, less the tests removed
  on purpose since then.

Elsewhere the same findings are printed under the summary, and nothing fails: a laptop without Chromium or
the npm clients skips those modules, saying why.

**Adding tests** needs nothing: the floor rises by itself. Each whole run that passes the census records
its count in ``.results/census/<git branch>.json`` (gitignored, like the compatibility results; per branch,
so a workspace that runs several branches compares each with itself); ``tests/census.txt`` holds a committed
floor for machines without that file (a fresh CI checkout), raised now and then with ``python -m
tests.census --record`` (optional: a stale committed floor is only a weaker one).

**Removing tests on purpose** is one edit: append a line to ``tests/census.txt``::

    removed 3 tests/test_old.py::test_thing: merged into tests/test_new.py::test_things

(the number of tests that no longer run, then what and why). Removals count against the floor recorded
before them. ``tests/census.txt`` merges as a union (``.gitattributes``), so lines appended on two
branches both survive the merge.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
LEDGER = ROOT / "tests" / "census.txt"
REMOVED = re.compile(r"^removed\s+(\d+)\s+\S")
FLOOR = re.compile(r"^floor\s+(\d+)\s*$")


def _branch() -> str:
    try:
        name = subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        name = ""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "default"


RECORD = ROOT / ".results" / "census" / f"{_branch()}.json"


def strict() -> bool:
    """Failures fail the run: on CI (``.ci/run`` sets ``MEGABRAIN_TEST_CENSUS=strict``; so does ``CI``)."""
    value = os.environ.get("MEGABRAIN_TEST_CENSUS", "")
    return value == "strict" or (value != "report" and bool(os.environ.get("CI")))


# -- the ledger (tests/census.txt) and the record (.results/census.json) ------------------------------------


def read_ledger(path: Path = LEDGER) -> tuple[int, list[str], list[str]]:
    """The committed floor, the removal lines after it (they lower it), and every removal line."""
    floor, after, every = 0, [], []
    if path.exists():
        for line in path.read_text().splitlines():
            line = line.strip()
            if (match := FLOOR.match(line)) is not None:
                floor, after = int(match.group(1)), []
            elif REMOVED.match(line):
                after.append(line)
                every.append(line)
    return floor, after, every


def removed_count(lines: list[str]) -> int:
    return sum(int(m.group(1)) for line in lines if (m := REMOVED.match(line)) is not None)


def read_record(path: Path = RECORD) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
        return record if isinstance(record.get("executed"), int) else None
    except (OSError, ValueError, AttributeError):
        return None


def minimum(ledger: Path = LEDGER, record_path: Path = RECORD) -> tuple[int, str]:
    """The fewest tests a whole run may execute, and how that number came about."""
    floor, after, every = read_ledger(ledger)
    committed = floor - removed_count(after)
    how = f"committed floor {floor}" + (f" - {removed_count(after)} removed" if after else "")
    record = read_record(record_path)
    if record is not None:
        new = [line for line in every if line not in set(record.get("removed", []))]
        recorded = record["executed"] - removed_count(new)
        if recorded > committed:
            return recorded, f"last whole run {record['executed']}" + (f" - {removed_count(new)} removed" if new else "")
    return committed, how


# -- the plugin ---------------------------------------------------------------------------------------------


class Census:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.items: dict[str, list[str]] = defaultdict(list)  # module path -> outcomes of its tests
        self.skipped_modules: dict[str, str] = {}  # module path -> why its collection was skipped
        self.executed = 0
        self.findings: list[str] = []
        self.verdict = ""

    def whole_run(self) -> bool:
        """No selection of any kind: the suite as ``.ci/run`` runs it."""
        option = self.config.option
        return (self.config.args_source == pytest.Config.ArgsSource.TESTPATHS and not option.collectonly
                and not option.keyword and not option.markexpr and not getattr(option, "deselect", None)
                and not getattr(option, "lf", False) and not getattr(option, "stepwise", False))

    @pytest.hookimpl
    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.skipped and report.nodeid.endswith(".py"):
            self.skipped_modules[report.nodeid] = _reason(report)

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """A test ran unless its setup or its body skipped it (a setup error counts as run: it fails anyway)."""
        outcomes = self.items[report.nodeid.split("::", 1)[0]]
        if report.when == "setup":
            outcomes.append("skipped" if report.skipped else "ran")
            self.executed += not report.skipped
        elif report.when == "call" and report.skipped and outcomes and outcomes[-1] == "ran":
            outcomes[-1] = "skipped"
            self.executed -= 1

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if not self.whole_run() or session.shouldstop or session.shouldfail \
                or exitstatus == pytest.ExitCode.INTERRUPTED:
            return  # a selection, or a run cut short: its count says nothing
        for module, why in sorted(self.skipped_modules.items()):
            self.findings.append(f"{module} was skipped as a whole: {why}")
        for module, outcomes in sorted(self.items.items()):
            if outcomes and all(outcome == "skipped" for outcome in outcomes):
                self.findings.append(f"{module}: every one of its {len(outcomes)} tests was skipped")
        least, how = minimum()
        if self.executed < least:
            self.findings.append(f"{self.executed} tests ran, fewer than {least} ({how}): a test that stopped "
                                 "running, or a removal not listed in tests/census.txt")
        self.verdict = f"census: {self.executed} tests ran (at least {least}: {how})"
        if self.executed >= least and not self.findings:
            write_record(self.executed, read_ledger()[2])
        if self.findings and strict() and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.verdict:
            return
        terminalreporter.write_line(self.verdict)
        for finding in self.findings:
            terminalreporter.write_line(("CENSUS FAILED: " if strict() else "census: ") + finding,
                                        red=strict(), yellow=not strict())


def _reason(report: pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def write_record(executed: int, removed: list[str], path: Path = RECORD) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"executed": executed, "removed": removed, "at": int(time.time())}, indent=1))


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(Census(config), "megabrain-census")


# -- the command: raise the committed floor ----------------------------------------------------------------


def record_floor(ledger: Path = LEDGER, record_path: Path = RECORD) -> str:
    """Append ``floor N`` (the last whole run's count) to the ledger: removals listed before it stop counting."""
    record = read_record(record_path)
    if record is None:
        raise SystemExit(f"no whole run recorded yet ({record_path}): run the whole suite first")
    with ledger.open("a") as f:
        f.write(f"floor {record['executed']}\n")
    return f"floor {record['executed']} appended to {ledger}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", action="store_true", help="raise the committed floor to the last whole run")
    args = parser.parse_args(argv)
    if args.record:
        print(record_floor())
        return
    least, how = minimum()
    print(f"a whole run must execute at least {least} tests ({how})")


if __name__ == "__main__":
    main(sys.argv[1:])
