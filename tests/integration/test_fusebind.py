"""imapfs's FUSE binding on its own, without IMAP."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.helpers import sh
from tests.support.mounts import is_mounted

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("delay_ms", [0, 2], ids=["as-is", "preempted-after-checking"])
def test_unmount_while_the_kernel_is_being_told_to_forget_is_clean(tmp_path, delay_ms):
    # libfuse frees the node table fuse_invalidate_path walks before it calls
    # destroy(); KernelCache must stop first. A filesystem that invalidates
    # nonstop is unmounted at random moments: it must exit cleanly each time
    # (without the guard, this crashed with a segfault every time). With
    # delay_ms, the invalidating thread pauses between finding libfuse alive
    # and calling it, as a busy machine preempts it: checks alone crashed so
    # every time (3 runs in 10 in a loaded full run without the pause); the
    # main loop must stop KernelCache before fuse_destroy.
    rng = random.Random(3)
    for attempt in range(5):
        mountpoint = tmp_path / f"mnt{attempt}"
        mountpoint.mkdir()
        proc = subprocess.Popen([sys.executable, "-m", "tests.support.hammer_fs", str(mountpoint)], cwd=REPO_ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONFAULTHANDLER": "1", "HAMMER_DELAY_MS": str(delay_ms)})
        try:
            deadline = time.monotonic() + 20
            while not is_mounted(mountpoint):
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
                time.sleep(0.05)
            assert len(os.listdir(mountpoint / "d")) == 500
            sh("ls", "-l", mountpoint / "d")
            time.sleep(rng.uniform(0.0, 0.3))
            sh("fusermount3", "-u", mountpoint)
            output = proc.communicate(timeout=20)[0].decode(errors="replace")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if is_mounted(mountpoint):  # also after a crash: a dead mount stays until unmounted
                subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
        assert proc.returncode == 0 and "Fatal Python error" not in output, output[-3000:]
