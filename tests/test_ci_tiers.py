"""Every slow test runs in CI: each test file with a ``slow`` mark is named by one of the Makefile
targets that ``.ci/run`` runs (tests CI never runs rot)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _target_files(makefile: str, target: str) -> set[str]:
    body = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n)+)", makefile, re.M)
    assert body, f"no target {target} in the Makefile"
    return set(re.findall(r"tests/[\w/]+\.py", body.group(1)))


def test_every_slow_test_file_is_run_by_a_ci_target():
    makefile = (ROOT / "Makefile").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    targets = re.findall(r"^make ([\w-]+)$", ci, re.M)
    assert targets[0] == "test", ".ci/run runs make test first"
    covered = set().union(*(_target_files(makefile, t) for t in targets[1:]))
    marked = re.compile(r"^[^#\n]*pytest\.mark\.slow", re.M)
    slow = {
        f"tests/{p.name}"
        for p in (ROOT / "tests").glob("test_*.py")
        if p.name != Path(__file__).name and marked.search(p.read_text())
    }
    assert slow and slow <= covered, f"slow tests no CI target runs: {sorted(slow - covered)}"
    assert covered <= {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py")}, "a target names a missing file"
