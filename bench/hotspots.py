"""Top functions of a py-spy ``--format raw`` profile (collapsed stacks): self and inclusive share.

``python -m bench.hotspots bench/results/profile-<stamp>-worker.txt`` — used after ``python -m bench --profile``.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path


def load(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def short(frame: str) -> str:
    """``func (path/to/module.py:12)`` → ``func (module.py)``: lines split one function into many rows."""
    name, _, where = frame.partition(" (")
    file = where.split(":")[0].rstrip(")")
    parts = file.split("/")
    tail = "/".join(parts[-2:]) if "site-packages" not in file else parts[parts.index("site-packages") + 1] + ":" + parts[-1]
    return f"{name} ({tail})"


def top(stacks: list[tuple[list[str], int]], limit: int = 25) -> str:
    total = sum(c for _, c in stacks) or 1
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        names = [short(f) for f in frames]
        own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    lines = [f"{total} samples", "  self%  function"]
    lines += [f"  {100 * c / total:5.1f}  {n}" for n, c in own.most_common(limit)]
    lines += ["  incl%  function"]
    lines += [f"  {100 * c / total:5.1f}  {n}" for n, c in inclusive.most_common(limit)]
    return "\n".join(lines)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(f"== {arg}")
        print(top(load(Path(arg))))
