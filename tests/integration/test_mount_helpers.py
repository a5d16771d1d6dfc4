"""The mount fixture's helpers: the Traceback rule and process/mount lookups it relies on."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.support.mounts import end_processes, is_mounted, pids_with_argument, unexpected_tracebacks

TRACE = """Traceback (most recent call last):
  File "/x/fs.py", line 1, in getxattr
    raise refuse(errno.ENOTSUP)
mfusepy.FuseOSError: [Errno 95] Operation not supported"""


@pytest.mark.parametrize(
    "log",
    [
        "imapfs: INFO: mounted\n",
        f"imapfs: DEBUG: FUSE operation getxattr raised\n{TRACE}\nimapfs: INFO: unmounted\n",
        f"2024-05-01 12:00:00,123 DEBUG mfusepy: operation raised\n{TRACE}\n",
        f"imapfs: DEBUG: retrying\n{TRACE}\n\nDuring handling of the above exception, another exception"
        f" occurred:\n\n{TRACE}\n",
    ],
    ids=["none", "debug", "debug-file-format", "debug-chained"],
)
def test_tracebacks_logged_at_debug_are_allowed(log: str) -> None:
    assert unexpected_tracebacks(log) == []


@pytest.mark.parametrize(
    "log",
    [
        f"imapfs: ERROR: read failed\n{TRACE}\n",
        f"2024-05-01 12:00:00,123 WARNING imapfs.pool: reconnect failed\n{TRACE}\n",
        f"imapfs: DEBUG: fine\nException in thread watcher:\n{TRACE}\n",
        f"{TRACE}\n",
        f"imapfs: DEBUG: fine\n{TRACE}\n\nDuring handling of the above exception:\n\n{TRACE}\n"
        f"imapfs: ERROR: boom\n{TRACE}\n",
        "imapfs: DEBUG: fine\nFatal Python error: Segmentation fault\n",
    ],
    ids=["error", "warning-file-format", "uncaught-in-thread", "bare", "error-after-debug", "faulthandler"],
)
def test_other_tracebacks_are_reported(log: str) -> None:
    found = unexpected_tracebacks(log)
    assert len(found) == 1
    assert "Traceback" in found[0] or "Fatal Python error" in found[0]


def test_is_mounted_reads_mountinfo(tmp_path: Path) -> None:
    assert is_mounted(Path("/proc"))
    assert not is_mounted(tmp_path)


def test_processes_are_found_by_exact_argument_and_ended() -> None:
    marker = f"/tmp/imapfs-test-marker-{uuid.uuid4().hex}"
    code = "import sys, time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code, marker])
    try:
        deadline = time.monotonic() + 10
        while not pids_with_argument(marker) and time.monotonic() < deadline:
            time.sleep(0.01)  # until the child has exec'd: before that its argv is pytest's
        assert pids_with_argument(marker) == [proc.pid]
        assert pids_with_argument(marker[:-1]) == []  # exact element, not a substring
        end_processes([proc.pid], timeout=0.2)
        assert proc.wait(timeout=5) is not None
        assert pids_with_argument(marker) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
