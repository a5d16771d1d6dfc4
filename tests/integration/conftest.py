"""Fixtures for integration tests: a real Dovecot, and the real imapfs CLI mounted on it.

Why the CLI in a subprocess and not ImapFS in a thread: the CLI is what users run,
FUSE and signals behave differently in a daemonised process, and a crash there
cannot take the test runner with it. Each mount logs to a file; the teardown
always unmounts and ends the process, and fails the test if the log shows a
Traceback other than at DEBUG level (imapfs should turn every error into one clear line).

Fixtures:
    dovecot       session-scoped ``tests.support.dovecot.Dovecot``, started once
    imap          a logged-in IMAPClient on it (logged out afterwards)
    mount         factory: ``mount(*options, url=..., password=..., expect_fail=..., foreground=...)``
    fresh_folder  a new, empty folder name for this test (created on the server)
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import imapclient
import pytest

from tests.support.dovecot import Dovecot
from tests.support.mounts import (
    continue_stopped,
    end_processes,
    is_mounted,
    pids_with_argument,
    run_bounded,
    unexpected_tracebacks,
)

MOUNT_TIMEOUT = 20.0
EXPECT_FAIL_TIMEOUT = 30.0
EXIT_TIMEOUT = 10.0
FUSERMOUNT = shutil.which("fusermount3") or "fusermount3"

_DEFAULT = object()  # "argument not given", where None has a meaning of its own


# ---------------------------------------------------------------------- helpers


def _fusermount(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        done = run_bounded([FUSERMOUNT, *args], EXIT_TIMEOUT, text=True)
    except subprocess.TimeoutExpired:
        done = None
    if done is None:
        return subprocess.CompletedProcess([FUSERMOUNT, *args], -1, "", f"{FUSERMOUNT} did not finish")
    return done


# ---------------------------------------------------------------------- results


@dataclass
class Mount:
    """A running imapfs mount. ``path`` is the mount point; ``log()`` is its output so far."""

    path: Path
    proc: subprocess.Popen[bytes]
    log_file: Path
    command: list[str]
    foreground: bool
    #: Set to True when a test provokes an error whose traceback imapfs may log.
    allow_traceback: bool = False
    _unmounted: bool = field(default=False, repr=False)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def unmount(self) -> int | None:
        """Unmount cleanly (no lazy fallback) and wait for imapfs to exit; returns its exit code.

        Fails the test if the kernel refuses (e.g. busy) or imapfs does not exit in time.
        The exit code is None in daemon mode, where the process is not our child.
        """
        result = _fusermount("-u", str(self.path))
        if result.returncode != 0:
            pytest.fail(f"fusermount3 -u {self.path} failed: {result.stderr.strip()}\n{self._log_section()}")
        self._unmounted = True
        if not self.foreground:
            daemons = pids_with_argument(str(self.path))
            end_processes(daemons, EXIT_TIMEOUT)
            return None
        try:
            return self.proc.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"imapfs did not exit within {EXIT_TIMEOUT:.0f} s of unmount\n{self._log_section()}")

    def _teardown(self) -> None:
        """Always: continue imapfs if a test stopped it (SIGSTOP) and left it
        so, lazy unmount, then end imapfs (its own exit, SIGTERM, SIGKILL)."""
        pids = pids_with_argument(str(self.path))
        if self.proc.poll() is None:
            pids.append(self.proc.pid)
        continue_stopped(pids)
        _fusermount("-u", "-z", str(self.path))
        end_processes(sorted(set(pids + pids_with_argument(str(self.path)))), 5.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=1.0)

    def _log_section(self) -> str:
        return f"--- imapfs log ({self.log_file}) ---\n{self.log()}"


@dataclass
class FailedMount:
    """What an ``expect_fail=True`` mount attempt returned: exit code and combined output."""

    returncode: int
    output: str
    command: list[str]
    allow_traceback: bool = False

    def log(self) -> str:
        return self.output


MountFactory = Callable[..., Union[Mount, FailedMount]]


# ---------------------------------------------------------------------- fixtures


def _running_dovecot() -> Iterator[Dovecot]:
    server = Dovecot()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    """One Dovecot for the whole session (starting one takes about a second)."""
    yield from _running_dovecot()


@pytest.fixture
def own_dovecot() -> Iterator[Dovecot]:
    """A Dovecot of the test's own, to stop, restart and kick without disturbing others."""
    yield from _running_dovecot()


@pytest.fixture
def imap(dovecot: Dovecot) -> Iterator[imapclient.IMAPClient]:
    """A logged-in client over verified TLS, for arranging and checking server state."""
    client = dovecot.client()
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.logout()


@pytest.fixture
def fresh_folder(dovecot: Dovecot, request: pytest.FixtureRequest) -> str:
    """A folder that exists, is empty, and belongs to this test alone.

    Not deleted afterwards: a mount may still be watching it while fixtures tear
    down, and the server is thrown away at the end of the session anyway. So tests
    must not assume they are alone in the root folder.
    """
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name).strip("-")[:40]
    name = f"t-{stem}-{uuid.uuid4().hex[:8]}"
    dovecot.create_folder(name)
    return name


@pytest.fixture
def mount(dovecot: Dovecot, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MountFactory]:
    """Factory that mounts the real CLI: ``mount(*options, url=, password=, expect_fail=, foreground=, mountpoint=)``.

    ``options`` are ``-o`` items (``"ro"``, ``"connections=2"``); ``ca_file=<the test CA>``
    is added unless an option or the ``ca_file`` keyword (None: omit) says otherwise.
    The password goes through $IMAPFS_PASSWORD (never argv); ``password=None`` unsets it.
    Returns a ``Mount`` once the mount point is mounted, or with ``expect_fail=True``
    a ``FailedMount`` once the command has exited (failing the test if it mounted).
    """
    if not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"):
        pytest.fail("FUSE is not available (/dev/fuse, fusermount3): run scripts/setup")
    started: list[Mount | FailedMount] = []

    def factory(
        *options: str,
        url: str | None = None,
        password: str | None | object = _DEFAULT,
        expect_fail: bool = False,
        foreground: bool = True,
        ca_file: Path | str | None | object = _DEFAULT,
        env: dict[str, str] | None = None,
        allow_traceback: bool = False,
        mountpoint: Path | None = None,
    ) -> Mount | FailedMount:
        number = len(started)
        if mountpoint is None:
            mountpoint = tmp_path / f"mnt{number}"
        mountpoint.mkdir()
        log_file = tmp_path / f"imapfs{number}.log"

        option_items = [item for option in options for item in option.split(",") if item]
        if ca_file is _DEFAULT:
            ca_file = dovecot.ca_file
        if ca_file is not None and not any(item.startswith("ca_file=") for item in option_items):
            option_items.insert(0, f"ca_file={ca_file}")
        if not foreground and not any(item.startswith("log_file=") for item in option_items):
            # A daemon's stderr goes to /dev/null once mounted; keep its log for the Traceback check.
            option_items.append(f"log_file={log_file}")
        command = [sys.executable, "-m", "imapfs"]
        if foreground:
            command.append("-f")
        if option_items:
            command += ["-o", ",".join(option_items)]
        command += [url or dovecot.url, str(mountpoint)]

        proc_env = dict(os.environ)
        # The persistent cache is the test's own: its mounts share it (as a
        # user's remounts do), other tests' never (env= may say otherwise).
        proc_env["XDG_CACHE_HOME"] = str(tmp_path / "xdg-cache")
        proc_env.update(env or {})
        proc_env["PYTHONFAULTHANDLER"] = "1"  # a hang or crash leaves a stack dump in the log
        if password is _DEFAULT:
            password = dovecot.password
        if password is None:
            proc_env.pop("IMAPFS_PASSWORD", None)
        else:
            proc_env["IMAPFS_PASSWORD"] = str(password)

        with open(log_file, "ab") as log:
            # A new session has no controlling terminal: a password prompt on /dev/tty
            # fails at once instead of waiting for a developer's keyboard.
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=proc_env,
                start_new_session=True,
            )
        mounted = Mount(mountpoint, proc, log_file, command, foreground, allow_traceback=allow_traceback)

        if expect_fail:
            deadline = time.monotonic() + EXPECT_FAIL_TIMEOUT
            while proc.poll() is None and not is_mounted(mountpoint) and time.monotonic() < deadline:
                time.sleep(0.05)
            if proc.poll() is None or is_mounted(mountpoint):
                started.append(mounted)  # so the teardown unmounts and ends it
                what = "mounted" if is_mounted(mountpoint) else f"was still running after {EXPECT_FAIL_TIMEOUT:.0f} s"
                pytest.fail(f"expected the mount to fail, but imapfs {what}\n{mounted._log_section()}")
            failed = FailedMount(proc.returncode, mounted.log(), command, allow_traceback=allow_traceback)
            started.append(failed)
            return failed

        started.append(mounted)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while time.monotonic() < deadline:
            if is_mounted(mountpoint):
                if foreground or proc.poll() is not None:
                    break  # a daemon's launcher returns only once the mount is ready
            elif proc.poll() is not None:
                pytest.fail(
                    f"imapfs exited with status {proc.returncode} before mounting\n"
                    f"command: {command}\n{mounted._log_section()}"
                )
            time.sleep(0.05)
        else:
            pytest.fail(f"{mountpoint} not mounted within {MOUNT_TIMEOUT:.0f} s\n{mounted._log_section()}")
        if not foreground and proc.returncode != 0:
            pytest.fail(f"imapfs launcher exited with {proc.returncode}\n{mounted._log_section()}")
        return mounted

    yield factory

    for item in reversed(started):
        if isinstance(item, Mount):
            item._teardown()
    _report_logs(request, started, dovecot)
    problems = [
        f"$ {' '.join(item.command)}\n" + "\n...\n".join(excerpts)
        for item in started
        if not item.allow_traceback and (excerpts := unexpected_tracebacks(item.log()))
    ]
    if problems:
        pytest.fail(
            "imapfs logged a Traceback above DEBUG level (pass allow_traceback=True if the test"
            " expects one):\n" + "\n\n".join(problems)
        )


def _report_logs(request: pytest.FixtureRequest, started: list[Mount | FailedMount], dovecot: Dovecot) -> None:
    """When the test failed, attach the imapfs and Dovecot logs to its report."""
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.failed:
        return
    for number, item in enumerate(started):
        request.node.add_report_section("teardown", f"imapfs log {number}", f"$ {' '.join(item.command)}\n{item.log()}")
    tail = "\n".join(dovecot.log_text().splitlines()[-60:])
    request.node.add_report_section("teardown", "dovecot log (tail)", tail)
