"""Process and mount helpers for driving the imapfs CLI from tests, kept free of pytest.

Why /proc and not ``os.path.ismount``/``pgrep``: reading /proc never blocks on a hung
FUSE daemon, and matching an exact argv element (the unique mount point) finds a
daemonised imapfs without guessing by process name.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path


def is_mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point, read from /proc/self/mountinfo.

    Same answer as os.path.ismount, but it never touches the mount itself: a stat of a
    FUSE root blocks while the daemon is still starting (or hung), a file read doesn't.
    """
    target = os.path.abspath(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as mountinfo:
        for line in mountinfo:
            fields = line.split(" ")
            # Field 5 is the mount point, with space, tab, newline, backslash octal-escaped.
            if len(fields) > 4 and _unescape_mountinfo(fields[4]) == target:
                return True
    return False


def _unescape_mountinfo(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), text)


# The start of a log record, in the CLI's two formats: "imapfs: LEVEL: ..." (stderr)
# and "2024-05-01 12:00:00,123 LEVEL name: ..." (-o log_file).
_RECORD_START = re.compile(r"^(?:imapfs: (?P<short>[A-Z]+): |\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?P<long>[A-Z]+) )")
_CHAINED = ("During handling of the above exception", "The above exception was the direct cause")


def unexpected_tracebacks(log: str) -> list[str]:
    """Tracebacks in an imapfs log other than those logged at DEBUG, each as an excerpt.

    Why DEBUG ones pass: the house rule is "tracebacks at DEBUG only", and mfusepy logs
    one at DEBUG for every FuseOSError, so any ``-o debug`` mount has them. Anything
    else (a traceback after an INFO+ record, an uncaught exception, a faulthandler dump)
    means an error reached the user as something other than one clear line.
    """
    lines = log.splitlines()
    found = []
    record_level = None  # level of the latest record, which a chained traceback belongs to
    previous = ""  # latest non-blank line
    for number, line in enumerate(lines):
        record = _RECORD_START.match(line)
        if record:
            record_level = record.group("short") or record.group("long")
        is_traceback = line.startswith("Traceback (most recent call last):")
        if is_traceback or line.startswith("Fatal Python error"):
            logged_at_debug = record_level == "DEBUG" and (
                _RECORD_START.match(previous) is not None or previous.startswith(_CHAINED)
            )
            if not (is_traceback and logged_at_debug):
                found.append("\n".join(lines[max(0, number - 1) : number + 25]))
        if line.strip():
            previous = line
    return found


def pids_with_argument(argument: str) -> list[int]:
    """Processes whose argv contains ``argument`` exactly: finds a daemonised imapfs by its mount point."""
    wanted = os.fsencode(argument)
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):  # gone while being read: /proc files then read empty
            continue
        if wanted in argv and state != "Z":
            pids.append(int(entry.name))
    return pids


def process_state(pid: int) -> str | None:
    """The one-letter state of a process (R, S, D, T, Z, ...), or None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def continue_stopped(pids: list[int]) -> None:
    """SIGCONT every stopped (state T or t) process of pids.

    A stopped FUSE daemon answers nothing: every process waiting on its
    mount sits in D state, SIGTERM stays pending, and even a lazy unmount
    leaves those waiters stuck. Continued, it can answer and exit.
    """
    for pid in pids:
        if process_state(pid) in ("T", "t"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def run_bounded(command: list[str], timeout: float, **kw) -> subprocess.CompletedProcess[bytes] | None:
    """subprocess.run, except that it never blocks past ``timeout`` + 5 s.

    subprocess.run kills a command that timed out and then waits for it
    without a limit; a command in D state on a hung FUSE mount does not die
    until the mount answers, so that wait can last forever. Here the command
    is killed and waited for 5 s more, then left behind (None is returned).
    ``input`` is written to its stdin, as subprocess.run does.
    """
    data = kw.pop("input", None)
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    if data is not None:
        kw["stdin"] = subprocess.PIPE
    proc = subprocess.Popen(command, **kw)
    try:
        out, err = proc.communicate(input=data, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            return None
        raise subprocess.TimeoutExpired(command, timeout, out, err) from None
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def end_processes(pids: list[int], timeout: float) -> None:
    """Give processes ``timeout`` to exit on their own, then SIGTERM, then SIGKILL
    (stopped ones are continued first, so that they can)."""

    def wait(pids: list[int], seconds: float) -> list[int]:
        deadline = time.monotonic() + seconds
        while True:
            pids = [pid for pid in pids if _alive(pid)]
            if not pids or time.monotonic() >= deadline:
                return pids
            time.sleep(0.05)

    continue_stopped(pids)
    pids = wait(pids, timeout)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        continue_stopped(pids)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        pids = wait(pids, 5.0)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
