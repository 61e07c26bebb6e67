"""The shape of the code, checked: config is a leaf, no module grows into a room of its own,
no error is told apart by its message, and the tools a contributor runs pass."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYNCER = ROOT / "syncer"


def test_config_is_a_leaf():
    code = (
        "import sys, syncer.config; "
        "print(sorted(m for m in sys.modules if m.startswith('syncer.') and m != 'syncer.config'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    loaded = eval(out)
    assert "syncer.pipeline" not in loaded and "syncer.sink" not in loaded, loaded
    assert not [m for m in loaded if not m.startswith("syncer.errors")], loaded


def test_no_module_over_450_lines():
    big = {
        p.relative_to(ROOT).as_posix(): n for p in SYNCER.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450
    }
    assert not big, big


def test_no_error_is_classified_by_its_text():
    pattern = re.compile(r"in str\(e\)|in msg\b|in str\(exc\)|\.args\[0\] ==")
    hits = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in SYNCER.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, hits


def test_only_syncer_aim_touches_aim_internals():
    internal = re.compile(
        r"^\s*(from|import) aim\.(storage|sdk\.(tracker|index_manager|lock_manager|repo_utils))|"
        r"^\s*(from|import) aimrocks"
    )
    hits = [
        p.relative_to(ROOT).as_posix()
        for p in SYNCER.rglob("*.py")
        if "aim" not in p.relative_to(SYNCER).parts[:1] and any(internal.match(ln) for ln in p.read_text().splitlines())
    ]
    assert not hits, hits
