"""scripts/bench itself: a quick run must finish and check every result it times.

No timing is asserted here (timings stay out of the test suite); the bench
checks its own answers (grep counts, ls lines, the bytes head printed) and
fails on a wrong one, so a quick run keeps it from rotting unnoticed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ROWS = ("1", "1b", "2", "3", "3f", "3rw", "4", "5", "5f", "5rw", "6", "7", "8", "8m", "9", "9s",
        "10", "10f", "11", "11f", "12", "13", "14", "14b")


# About 90 s here: a minute of it the fts index catching up with the 12,700 messages seeded,
# the rest two dozen mounts; a slow machine takes longer.
@pytest.mark.timeout(600)
def test_quick_bench_run_completes_with_every_row(tmp_path):
    out = tmp_path / "bench.md"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "bench.py"), "--quick", "--repeat", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=580)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = out.read_text()
    for row in ROWS:
        line = re.search(rf"^\| {row} \|.*$", table, re.MULTILINE)
        assert line, f"row {row} missing:\n{table}"
        ratio = line.group(0).split("|")[5].strip()
        assert re.fullmatch(r"[0-9.]+( MB| B/message)?", ratio), (row, ratio)


@pytest.mark.timeout(300)  # about 30 s here (no fts index to wait for)
def test_the_cache_and_scale_steps_run_alone(tmp_path):
    """--steps cache,scale: the cache step measures rows 1's and 5's baselines itself."""
    out = tmp_path / "bench.md"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "bench.py"), "--quick", "--repeat", "1",
                           "--fts", "none", "--steps", "cache,scale", "--out", str(out)],
                          capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    numbers = re.findall(r"^\| ([0-9]+[a-z]*) \|", out.read_text(), re.MULTILINE)
    assert numbers == ["10", "10f", "11", "11f", "12", "13", "14", "14b"]
