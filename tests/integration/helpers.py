"""Small helpers the integration tests share: run real tools, look at the server."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import imapclient

from tests.support.mounts import run_bounded


def sh(*command: str | Path, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Run a real command-line tool; its stderr is kept for assertions.

    A command still running after ``timeout`` raises TimeoutExpired; one
    that cannot even be killed (D state on a hung mount) fails the test
    instead of hanging it (subprocess.run would wait for it forever).
    """
    done = run_bounded([str(c) for c in command], timeout, **kw)
    if done is None:
        raise AssertionError(f"{command} hung unkillably (D state: a FUSE request nobody answers)")
    if check and done.returncode != 0:
        raise AssertionError(f"{command} exited {done.returncode}: {done.stderr.decode(errors='replace')}")
    return done


def message(subject: str, body: str = "hello", extra: str = "", date: str = "Tue, 05 Mar 2024 14:32:00 +0000") -> bytes:
    text = (f"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: {subject}\r\n"
            f"Date: {date}\r\nMessage-ID: <{abs(hash((subject, body)))}@example.org>\r\n{extra}"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n")
    return text.encode("utf-8")


def server_messages(client: imapclient.IMAPClient, folder: str) -> dict[int, dict]:
    """UID -> {flags, body} as an independent IMAP client sees them."""
    client.select_folder(folder, readonly=True)
    uids = client.search("ALL")
    if not uids:
        return {}
    data = client.fetch(uids, ["FLAGS", "BODY.PEEK[]"])
    # \Recent is per-session noise (RFC 3501 2.3.2), not a property of the message.
    return {uid: {"flags": set(d[b"FLAGS"]) - {b"\\Recent"}, "body": d[b"BODY[]"]} for uid, d in data.items()}


def eml_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(".eml"))


def wait_for(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
