"""README's compatibility table is generated from recorded results (tests/compat.py): rows merge by
cell, a later run replaces a cell's outcome, and the table lands between README's markers only."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import compat


def test_results_merge_and_the_table_is_rewritten_between_markers(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat, "RESULTS", tmp_path / "compat.json")
    cell = {"client": "Claude Code", "protocol": "Anthropic Messages", "version": "2.1.197", "at": 0}
    compat.record([{**cell, "family": "Claude", "status": "fail", "detail": "400"},
                   {**cell, "family": "OpenAI chat", "status": "pass", "detail": ""}])
    compat.record([{**cell, "family": "Claude", "status": "pass", "detail": ""},
                   {**cell, "client": "Codex CLI", "protocol": "OpenAI Responses", "family": "Gemini",
                    "status": "skip", "detail": "not installed"}])
    rows = list(compat.load().values())
    assert len(rows) == 3
    readme = f"intro\n{compat.BEGIN}\nold table\n{compat.END}\noutro\n"
    text = compat.rewrite(readme, rows)
    assert text.startswith("intro\n") and text.endswith(f"{compat.END}\noutro\n") and "old table" not in text
    lines = text.splitlines()
    assert "| client | protocol | Claude | OpenAI chat | Gemini |" in lines
    assert "| Claude Code 2.1.197 | Anthropic Messages | ✅ pass | ✅ pass | — |" in lines
    assert "| Codex CLI 2.1.197 | OpenAI Responses | — | — | ⏭ skipped |" in lines
