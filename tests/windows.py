"""Tests that count requests against the limits' fixed windows, judged within one window.

The limits count in fixed windows aligned to the epoch (api/access/limits.py): at each minute boundary every
per-minute counter starts again from zero, so a counting test that straddles a boundary sees more requests
allowed than the limit and fails without the gateway being wrong. Rather than sleeping past a boundary
when one is near (up to several seconds of every run), such a test is run as it comes, and only if it fails
*and* the clock crossed a minute boundary during that run is it run once more, with fresh fixtures: that
run proved nothing either way. Two boundaries cannot fall within one counting test, so the second run is
judged as any test is; a test that fails within one window fails at once.

A test opts in with the ``clear_of_window_edge`` fixture (``pytest.mark.usefixtures`` on a module or a
test). The clock read is this process's: the suite's Redis runs on the same machine (tests/conftest.py).
"""

from __future__ import annotations

import time

import pytest
from _pytest.runner import runtestprotocol

FIXTURE = "clear_of_window_edge"
WINDOW = 60  # seconds: the shortest counting window (api/access/limits.py MINUTE)


def _window() -> int:
    return int(time.time() // WINDOW)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    if FIXTURE not in getattr(item, "fixturenames", ()):
        return None
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    started = _window()
    reports = runtestprotocol(item, nextitem=nextitem, log=False)
    if any(report.failed for report in reports) and _window() != started:
        item.add_report_section("call", "windows", "a minute boundary fell within the run: run once more")
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
    for report in reports:
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True
