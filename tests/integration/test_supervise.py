"""scripts/test's supervisor: a run ends by itself whatever a mount does."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.support.mounts import is_mounted, process_state

REPO_ROOT = Path(__file__).resolve().parents[2]

# A test that leaves its FUSE daemon stopped (SIGSTOP), a reader of the
# mount in D state, and then hangs itself on the mount: pytest-timeout's
# signal method never got control back from such a hang, and even after
# pytest ends, the daemon and its waiters stay.
HANGING_TEST = '''
import os, signal, subprocess, sys
from pathlib import Path

def test_hangs_on_a_stopped_mount(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    daemon = subprocess.Popen([sys.executable, "-m", "tests.support.hammer_fs", str(mnt)], stdout=subprocess.PIPE)
    assert daemon.stdout.readline() == b"ready\\n"
    os.kill(daemon.pid, signal.SIGSTOP)
    reader = subprocess.Popen(["cat", str(mnt / "d" / "file0001")])
    Path(os.environ["HANG_INFO"]).write_text(f"{daemon.pid} {reader.pid} {mnt}\\n")
    os.listdir(mnt / "d")  # nobody answers
'''


def test_a_run_that_hangs_on_a_stopped_mount_ends_and_leaves_nothing(tmp_path):
    (tmp_path / "test_hang.py").write_text(HANGING_TEST)
    info = tmp_path / "hang-info"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.supervise", "--limit", "120", "--", str(tmp_path / "test_hang.py"),
         "-q", "-p", "no:cacheprovider", "-o", "timeout=5", "-o", "timeout_method=thread"],
        cwd=REPO_ROOT, env={**os.environ, "HANG_INFO": str(info), "TMPDIR": str(tmp_path)},  # it keeps its dir: failed
        capture_output=True, text=True, timeout=150)
    elapsed = time.monotonic() - started
    assert done.returncode != 0, done.stdout + done.stderr
    assert elapsed < 60, f"took {elapsed:.0f} s\n{done.stdout}{done.stderr}"
    daemon, reader, mountpoint = info.read_text().split()
    for pid in (int(daemon), int(reader)):
        assert process_state(pid) in (None, "Z"), f"{pid} left in state {process_state(pid)}\n{done.stderr}"
    assert not is_mounted(Path(mountpoint)), done.stderr
    assert "ended leftover process" in done.stderr or "ended process" in done.stderr, done.stderr
