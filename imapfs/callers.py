"""Who is calling a FUSE operation: the process behind the request, from /proc.

The FUSE edge needs two facts the kernel does not put in requests:
- which *command* an operation belongs to (a process, told apart from a
  later one that reuses its pid by its start time), so that `rm -r` is
  recognised across its many unlinks;
- whether a process closing a file is dying abnormally (killed by a
  signal, or exiting with a failure status): its FLUSH then comes from the
  kernel tidying up, not from a program that finished writing.
Linux only; anything unreadable counts as "unknown" and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

# task flags (/proc/PID/stat field 9): the task is in do_exit.
PF_EXITING = 0x00000004


@dataclass(frozen=True)
class Process:
    pid: int  # thread group id: the process, not the thread
    started: int  # clock ticks after boot; with pid, unique for the machine's uptime


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3 onwards of /proc/PID/stat (after the parenthesised command name)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read().decode("ascii", "replace")
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()


def _thread_group(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return pid


def process(pid: int) -> Process | None:
    """The process a request's pid (a thread id) belongs to, or None if it is gone."""
    if pid <= 0:
        return None
    group = _thread_group(pid)
    fields = _stat_fields(group)
    if fields is None or len(fields) < 20:
        return None
    return Process(group, int(fields[19]))  # field 22: starttime


def abnormal_exit(pid: int) -> str | None:
    """Why the process (thread) pid is dying abnormally, or None when it is
    alive or exiting with status 0.

    The kernel closes a process's files in do_exit after it has set the
    exit code, so a FLUSH sent from there can tell a writer killed half-way
    through (`kill -9 cp`) from one that ended normally without closing.
    """
    fields = _stat_fields(pid) if pid > 0 else None
    if fields is None or len(fields) < 50:
        return None
    try:
        flags, exit_code = int(fields[6]), int(fields[49])  # fields 9 and 52
    except ValueError:
        return None
    if not flags & PF_EXITING:
        return None
    if exit_code & 0x7F:
        return f"the program writing it was killed by signal {exit_code & 0x7F}"
    if exit_code >> 8:
        return f"the program writing it exited with status {exit_code >> 8}"
    return None
