"""Ranged reads of large messages and read-ahead for scans return exactly the
server's bytes, whatever the access pattern."""

from __future__ import annotations

import os
import random
import re

import pytest

from tests.integration.helpers import eml_files, message, sh

MiB = 1024 * 1024


def big_message(size: int) -> bytes:
    rng = random.Random(size)
    head = message("large attachment").replace(b"hello\r\n", b"")
    lines = []
    total = len(head)
    i = 0
    while total < size:
        line = b"%09d " % i + bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(60)) + b"\r\n"
        lines.append(line)
        total += len(line)
        i += 1
    return head + b"".join(lines)


# Read-only mounts read through the kernel's page cache without opens
# (fast_open), read-write ones open through imapfs: both must be exact.
@pytest.mark.parametrize("options", ["", "ro"], ids=["read-write", "read-only"])
def test_ranged_reads_of_a_large_message(dovecot, fresh_folder, mount, options):
    raw = big_message(5 * MiB + 12345)
    dovecot.append(fresh_folder, raw)
    m = mount("debug", options)
    path = eml_files(m.path / fresh_folder)[0]
    assert path.stat().st_size == len(raw)
    assert sh("head", "-c", "4096", path).stdout == raw[:4096]
    log = m.log()
    assert re.search(r"BODY\.PEEK\[\]<0\.131072>", log), "head should fetch one small aligned chunk"
    assert "BODY.PEEK[])" not in log and "BODY.PEEK[] " not in log, "head must not fetch the whole message"

    fd = os.open(path, os.O_RDONLY)
    try:
        rng = random.Random(5)
        spots = [MiB - 10, 2 * MiB - 1, 3 * MiB, len(raw) - 7, len(raw) - 1, len(raw), len(raw) + 100, 0]
        spots += [rng.randrange(len(raw)) for _ in range(30)]
        for offset in spots:
            for length in (1, 20, 4096, MiB + 3):
                assert os.pread(fd, length, offset) == raw[offset:offset + length], (offset, length)
    finally:
        os.close(fd)
    assert sh("tail", "-c", "1000", path).stdout == raw[-1000:]
    assert sh("cat", path).stdout == raw


@pytest.mark.parametrize("options", ["", "ro"], ids=["read-write", "read-only"])
def test_scans_and_random_reads_get_exact_bytes(dovecot, imap, fresh_folder, mount, options):
    raws = {}
    for i in range(150):
        raw = message(f"scan {i}", (f"line {i} " * (20 + 13 * i)) + ("NEEDLE" if i % 4 == 0 else ""))
        raws[imap.append(fresh_folder, raw) and i] = raw
    m = mount(options)
    folder = m.path / fresh_folder
    found = sh("grep", "-rl", "NEEDLE", folder).stdout.split()
    assert len(found) == len([i for i in range(150) if i % 4 == 0])
    by_subject = {re.search(rb"Subject: scan (\d+)", raw).group(1): raw for raw in raws.values()}
    files = eml_files(folder)
    rng = random.Random(11)
    for path in rng.sample(files, len(files)):
        data = path.read_bytes()
        number = re.search(rb"Subject: scan (\d+)", data).group(1)
        assert data == by_subject[number]
    copy = sh("tar", "-cf", "-", "-C", folder, ".").stdout
    assert len(copy) > sum(len(r) for r in raws.values())
