"""Spool and Literal: random-access spooling, and CRLF normalisation in chunks."""

import random
import re

from imapfs.spool import Literal, Spool, crlf_chunks


def whole(data: bytes) -> bytes:
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)


def test_line_endings_split_across_chunks_are_normalised_as_if_whole():
    cases = [[b"a\r", b"\nb"], [b"a\r", b"b"], [b"a\r"], [b"\r", b"\r", b"\n"], [b"\n\r", b"\n"], [b"", b"x\r", b""]]
    for chunks in cases:
        assert b"".join(crlf_chunks(iter(chunks))) == whole(b"".join(chunks)), chunks


def test_random_cuts_of_random_line_endings():
    rng = random.Random(7)
    for _ in range(300):
        data = bytes(rng.choice(b"ab\r\n") for _ in range(rng.randrange(0, 60)))
        cuts = sorted(rng.sample(range(len(data) + 1), k=min(len(data) + 1, rng.randrange(0, 6))))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert b"".join(crlf_chunks(iter(chunks))) == whole(data)


def test_spool_takes_writes_at_any_offset_and_spills_to_disk():
    with Spool(in_memory=1024) as spool:
        spool.write(0, b"x" * 3000)
        spool.write(10, b"yy")
        spool.write(5000, b"end\n")
        assert spool.size == 5004
        assert spool.read(8, 6) == b"xxyyxx"
        assert spool.read(4000, 10) == b"\0" * 10
        spool.truncate(12)
        assert spool.size == 12 and spool.read(0, 100) == b"xxxxxxxxxxyy"


def test_literal_is_the_crlf_form_with_its_exact_size_and_digest():
    raw = b"Subject: a\nX: b\r\n\nline\rline\n" * 100_000
    with Spool(in_memory=4096) as spool:
        spool.write(0, raw)
        literal = spool.literal()
        assert literal.size == len(whole(raw))
        assert b"".join(literal.chunks()) == whole(raw)
        assert literal.digest() == Literal.from_bytes(raw).digest()
        assert max(len(c) for c in literal.chunks()) < 3 * 1024 * 1024  # chunks, not the whole
