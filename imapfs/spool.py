"""A file being written into a folder, and the message IMAP will carry for it.

``Spool`` holds the bytes a tool writes, at any offsets, in memory up to a
bound and then in an anonymous temporary file (deleted by the kernel even if
imapfs is killed). ``Literal`` is what an APPEND sends: the spooled bytes
with every line ending made CRLF, as IMAP requires (RFC 3501 2.2) and as
the server will store them. It is produced in chunks, never whole, so
filing a 300 MB message costs a few MiB of memory, not the message.

Pure apart from the temporary file; imports nothing else of the package.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

# Bytes kept in memory before a spool moves to its temporary file.
IN_MEMORY = 8 * 1024 * 1024
# Bytes read from a spool at a time while it is sent or checked.
CHUNK = 1024 * 1024

_LINE_ENDING = re.compile(rb"\r\n|\r|\n")


def crlf_chunks(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The chunks with every line ending (CRLF, LF, lone CR) made CRLF.

    A CR ending one chunk may be the first half of a CRLF split across two
    chunks, so it is held back until the next chunk shows which it is.
    """
    held_cr = False
    for chunk in chunks:
        if not chunk:
            continue
        if held_cr:
            chunk = b"\r" + chunk
        held_cr = chunk.endswith(b"\r")
        if held_cr:
            chunk = chunk[:-1]
        if chunk:
            yield _LINE_ENDING.sub(b"\r\n", chunk)
    if held_cr:
        yield b"\r\n"


@dataclass(frozen=True)
class Literal:
    """A message as an APPEND literal: its exact size, and its bytes in chunks
    (``chunks()`` starts again from the beginning each time it is called)."""

    size: int
    chunks: Callable[[], Iterator[bytes]]

    @classmethod
    def over(cls, chunks: Callable[[], Iterator[bytes]]) -> Literal:
        """The bytes chunks() yields, as they are; one pass counts the size,
        so nothing is ever held whole."""
        return cls(sum(len(chunk) for chunk in chunks()), chunks)

    @classmethod
    def from_bytes(cls, data: bytes) -> Literal:
        normalised = b"".join(crlf_chunks(iter([data])))
        return cls(len(normalised), lambda: iter([normalised]) if normalised else iter([]))

    def digest(self) -> bytes:
        """SHA-256 of the bytes, computed chunk by chunk."""
        digest = hashlib.sha256()
        for chunk in self.chunks():
            digest.update(chunk)
        return digest.digest()


class Spool:
    """Random-access bytes of a file being written.

    Thread safe: writers, readers of the file being written and the APPEND
    that sends it may use it at once.
    """

    def __init__(self, in_memory: int = IN_MEMORY, directory: str | None = None) -> None:
        self._file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=in_memory, dir=directory)
        self._lock = threading.Lock()  # guards _file's position, _file and size
        self.size = 0

    def write(self, offset: int, data: bytes) -> None:
        with self._lock:
            self._file.seek(offset)
            self._file.write(data)
            self.size = max(self.size, offset + len(data))

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            self._file.seek(offset)
            return self._file.read(size)

    def truncate(self, length: int) -> None:
        with self._lock:
            self._file.truncate(length)
            if length > self.size:  # a file grown by truncate reads as zeros up to its new end
                self._file.seek(length - 1)
                self._file.write(b"\0")
            self.size = length

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def chunks(self, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """The spooled bytes from start up to stop (the end if None), CHUNK at a time."""
        offset = start
        while stop is None or offset < stop:
            chunk = self.read(offset, CHUNK if stop is None else min(CHUNK, stop - offset))
            if not chunk:
                return
            offset += len(chunk)
            yield chunk

    def literal(self) -> Literal:
        """The spooled bytes as an APPEND literal (one pass to count its size)."""
        return Literal.over(lambda: crlf_chunks(self.chunks()))
