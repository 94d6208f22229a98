"""The census's floor (tests/census.py): the last recorded whole run, less the tests removed on purpose since."""

from __future__ import annotations

from pathlib import Path

from tests.census import minimum, read_ledger, record_floor, write_record

HEADER = "# the ledger\n#   removed <n> <tests>: <why>\n"


def test_removals_lower_the_floor_recorded_before_them(tmp_path: Path) -> None:
    ledger, record = tmp_path / "census.txt", tmp_path / "census.json"
    ledger.write_text(HEADER + "removed 2 tests/test_a.py: old\nfloor 700\nremoved 3 tests/test_b.py::t: merged\n")
    assert read_ledger(ledger) == (700, ["removed 3 tests/test_b.py::t: merged"],
                                   ["removed 2 tests/test_a.py: old", "removed 3 tests/test_b.py::t: merged"])
    assert minimum(ledger, record)[0] == 697  # no whole run recorded here: the committed floor
    write_record(720, read_ledger(ledger)[2], record)  # a later whole run, which saw both removals
    assert minimum(ledger, record)[0] == 720  # adding tests raised the floor by itself
    with ledger.open("a") as f:
        f.write("removed 4 tests/test_c.py: replaced by test_d\n")  # the one edit a removal takes
    assert minimum(ledger, record) == (716, "last whole run 720 - 4 removed")


def test_the_committed_floor_rises_on_demand(tmp_path: Path) -> None:
    ledger, record = tmp_path / "census.txt", tmp_path / "census.json"
    ledger.write_text(HEADER + "floor 10\n")
    write_record(30, [], record)
    record_floor(ledger, record)
    assert read_ledger(ledger)[0] == 30
    record.unlink()  # a fresh checkout: only the ledger
    assert minimum(ledger, record)[0] == 30
