"""Run pytest so that the run ends by itself, whatever a mount does:
``python -m tests.support.supervise [--limit SECONDS] -- PYTEST_ARGS...`` (scripts/test).

Why a supervisor: a FUSE daemon that hangs, or that a test stopped with
SIGSTOP and left so, puts every process touching its mount in D state. Such
a process cannot be interrupted: not pytest-timeout's signal, not SIGKILL,
until the daemon answers or dies. So the run is watched from outside:

- Everything the run starts gets ``IMAPFS_TEST_RUN=<id>`` in its
  environment and ``TMPDIR=<a directory of this run's own>``, so what it
  leaves behind is found precisely (never another run's processes or
  mounts): processes by that variable, mounts and test servers by that
  directory (Dovecot clears its environment, but its config lives there).
- A whole-run limit: past it, pytest is ended and the run fails.
- pytest-timeout (method "thread", see pyproject.toml) ends pytest with
  os._exit when one test hangs; a pytest whose exit is stuck on a hung
  mount (SIGKILL pending, a thread in D state) is noticed and unblocked.
- Unblocking, and the clean-up after every run: continue stopped (state T)
  processes, end the run's leftover processes (SIGTERM, then SIGKILL),
  lazy-unmount (``fusermount3 -u -z``) every mount of the run, and stop the
  run's Dovecots. What was found is printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from tests.support.dovecot import _stop_session
from tests.support.mounts import _unescape_mountinfo, continue_stopped, process_state, run_bounded

MARKER = "IMAPFS_TEST_RUN"
DEFAULT_LIMIT = 30 * 60  # the whole suite takes 3-4 minutes on 2 CPUs
FUSERMOUNT = shutil.which("fusermount3") or "fusermount3"


def say(text: str) -> None:
    print(f"scripts/test: {text}", file=sys.stderr, flush=True)


def marked_processes(run_id: str) -> list[int]:
    """Processes whose environment holds IMAPFS_TEST_RUN=run_id (not this one)."""
    wanted = f"{MARKER}={run_id}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry.name}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in environ and process_state(int(entry.name)) not in (None, "Z", "X"):
            found.append(int(entry.name))
    return found


def describe(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        argv = []
    command = " ".join(arg.decode(errors="replace") for arg in argv if arg)[:160]
    return f"{pid} ({process_state(pid)}) {command}"


def mounts_under(directory: Path) -> list[str]:
    prefix = str(directory).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as mountinfo:
        for line in mountinfo:
            fields = line.split(" ")
            if len(fields) > 4 and _unescape_mountinfo(fields[4]).startswith(prefix):
                found.append(_unescape_mountinfo(fields[4]))
    return found


def dovecots_under(directory: Path) -> list[int]:
    wanted = str(directory).encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"dovecot") and any(wanted in arg for arg in argv):
            found.append(int(entry.name))
    return found


def wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while True:
        pids = [pid for pid in pids if process_state(pid) not in (None, "Z", "X")]
        if not pids or time.monotonic() >= deadline:
            return pids
        time.sleep(0.05)


def reap(run_id: str, run_dir: Path, keep: set[int] = frozenset()) -> list[str]:
    """End what the run left behind; returns one line per thing ended."""
    ended = []
    pids = [pid for pid in marked_processes(run_id) if pid not in keep]
    for pid in pids:
        ended.append(f"process {describe(pid)}")
    continue_stopped(pids)
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        continue_stopped(pids)
        pids = wait_gone(pids, grace)
    for pid in pids:
        ended.append(f"process {pid} survived SIGKILL (state {process_state(pid)})")
    for mountpoint in mounts_under(run_dir):
        try:
            run_bounded([FUSERMOUNT, "-u", "-z", mountpoint], 10)
        except subprocess.TimeoutExpired:
            pass
        ended.append(f"mount {mountpoint}")
    for master in dovecots_under(run_dir):
        try:
            _stop_session(master, None)
        except Exception as exc:  # noqa: BLE001 - reported, the clean-up goes on
            ended.append(f"Dovecot {master} could not be stopped: {exc}")
        else:
            ended.append(f"Dovecot {master}")
    return ended


def stuck_exiting(pid: int) -> bool:
    """pytest called os._exit (pytest-timeout) or was killed, but a thread of
    it waits on a mount nobody answers: SIGKILL pending, or a zombie leader."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    pending = int(fields.get("SigPnd", "0").strip(), 16) | int(fields.get("ShdPnd", "0").strip(), 16)
    return bool(pending & (1 << (signal.SIGKILL - 1))) or fields.get("State", "").startswith("Z")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.supervise", description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=float, default=float(os.environ.get("IMAPFS_TEST_LIMIT", DEFAULT_LIMIT)),
                        help="seconds the whole run may take (default %(default)s, or $IMAPFS_TEST_LIMIT)")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    pytest_args = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args

    run_id = uuid.uuid4().hex[:12]
    run_dir = Path(tempfile.mkdtemp(prefix=f"imapfs-test-{run_id}-"))
    # The test Dovecot's users must traverse it, and so must user nobody in
    # the allow_other test; pytest's own directory inside stays private.
    run_dir.chmod(0o755)
    env = {**os.environ, MARKER: run_id, "TMPDIR": str(run_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *pytest_args], env=env)
    deadline = time.monotonic() + args.limit
    status: int | None = None
    unblocked = False
    try:
        while status is None:
            try:
                status = proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                say(f"the run took longer than {args.limit:.0f} s: ending it")
                proc.terminate()
                try:
                    status = proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                unblocked = True
                for line in reap(run_id, run_dir):
                    say(f"ended {line}")
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    say(f"pytest (pid {proc.pid}) could not be ended")
                status = 124
            elif not unblocked and stuck_exiting(proc.pid):
                say("pytest is exiting but stuck on a mount nobody answers: ending the run's mounts")
                unblocked = True
                for line in reap(run_id, run_dir, keep={proc.pid}):
                    say(f"ended {line}")
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            status = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            status = 2
    finally:
        leftovers = reap(run_id, run_dir)
        for line in leftovers:
            say(f"ended leftover {line}")
        if proc.poll() is None:
            proc.kill()
    if mounts_under(run_dir):
        say(f"kept {run_dir}: something is still mounted under it")
    elif status == 0:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        say(f"kept {run_dir} (the run's temporary files, mount logs among them)")
    return status if status is not None else 1


if __name__ == "__main__":
    sys.exit(main())
