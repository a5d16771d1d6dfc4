"""What a file copied into a folder becomes: the messages to APPEND, each
with its flags and INTERNALDATE. Pure apart from one temporary file.

Files people have are not always one bare RFC 5322 message:

- ``git format-patch``, mutt's save-to-file, formail and procmail write one
  message behind an mbox ``From `` envelope line. That line is not part of
  the message (no server stores it): it is dropped, and its date is the
  INTERNALDATE when the message has no ``Date:``.
- A Google Takeout or Thunderbird export is an mbox of many messages. The
  standard library's ``mailbox.mbox`` finds where each begins and ends (it
  needs a path, so the spool is copied to a named temporary file under the
  spool directory, and only when the file holds a second ``From `` line);
  each message is APPENDed with mboxrd's ``>From `` quoting undone.

A ``From `` line in the middle of a message that was never quoted (git
writes commit messages as they are: "From now on ...") would make the
piece after it no mail message. Such a piece is taken back into the message
before it, as a careful mbox reader does, rather than APPENDed as junk.

Every message is streamed from the spool, never held whole: memory stays a
few MiB per message, for one message of 300 MB as for an mbox of 50,000
(the table of contents costs a few dozen bytes per message). Everything is
checked before the first message is handed out: a file refused appends
nothing.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import mailbox
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from imapfs import rfc5322
from imapfs.errors import InvalidMessage
from imapfs.spool import Literal, Spool, crlf_chunks

log = logging.getLogger(__name__)

# mboxrd (and mboxo, where it is unambiguous): a body line ">From ", ">>From ", ...
# was written for "From ", ">From ", ...
_QUOTED_FROM = re.compile(rb"^>(>*From )", re.MULTILINE)
# The start of a line that may still turn out to be a quoted From_ line.
_MAYBE_QUOTED_FROM = re.compile(rb">+(?:F(?:r(?:o(?:m)?)?)?)?")
# Status / X-Status letters (mutt, Dovecot's mbox, procmail) -> IMAP flags.
# 'D' (deleted) is left out for the reason rfc5322 leaves out Maildir's 'T'.
MBOX_STATUS_FLAGS = {"R": "\\Seen", "A": "\\Answered", "F": "\\Flagged"}
# git format-patch's From_ line carries this fixed date on purpose: it marks
# the file as a patch, and is no date of the message.
_GIT_MAGIC_DATE = "Mon Sep 17 00:00:00 2001"
_FROM_LINE_DATE_FORMATS = ("%a %b %d %H:%M:%S %Y", "%a %b %d %H:%M:%S %z %Y", "%a %b %d %H:%M:%S %Y %z")


@dataclass(frozen=True)
class Filed:
    """One message to APPEND: its literal (CRLF line endings, no envelope
    line, quoting undone), flags, INTERNALDATE (None: the server's now), and
    where it came from, for log lines and errors."""

    literal: Literal
    flags: tuple[str, ...]
    when: dt.datetime | None
    where: str


def messages_in(spool: Spool, name: str, spool_dir: str | None = None) -> list[Filed]:
    """The messages a file written under name holds, in file order.

    Raises InvalidMessage (nothing is to be appended) when the file is not
    mail: empty, no header field first, NUL bytes in the header. A plain
    message is one Filed with the spool's literal as it is today; a file
    beginning with a From_ line is one or more messages (see the module's
    docstring). Flags come from a Maildir ``:2,FRS`` suffix of name (and,
    in an mbox, from each message's Status/X-Status), the INTERNALDATE from
    ``Date:`` (in an mbox, else from the From_ line).
    """
    head = spool.read(0, rfc5322.MAX_HEADER_SCAN + 1)
    name_flags = rfc5322.flags_from_filename(name)
    first_line_end = head.find(b"\n")
    if not rfc5322.is_envelope_line(head if first_line_end < 0 else head[:first_line_end]):
        problem = rfc5322.looks_like_message(head)
        if problem:
            raise InvalidMessage(f"{name} is not a mail message: {problem}; nothing was appended")
        if rfc5322.header_defects(head):
            _log_defects(rfc5322.header_defects(head), name)
        return [Filed(spool.literal(), name_flags, rfc5322.internaldate_from_headers(head), name)]

    split = _has_envelope_after(spool, first_line_end + 1)
    ranges = _mbox_ranges(spool, spool_dir) if split else [(0, spool.size)]
    # Per message only what its head says, never the head itself: an mbox of
    # 50,000 messages must not keep 50,000 headers in memory.
    pieces: list[_Piece] = []
    for start, stop in ranges:
        envelope = spool.read(start, min(rfc5322.MAX_HEADER_SCAN, stop - start))
        message_start = start + envelope.find(b"\n") + 1 if b"\n" in envelope else stop
        head = spool.read(message_start, min(rfc5322.MAX_HEADER_SCAN + 1, stop - message_start))
        problem = rfc5322.looks_like_message(head) if head else "no message follows it"
        if problem and pieces:
            # An unquoted "From " line inside the message before: this belongs to it.
            log.info("%s: a 'From ' line at byte %d opens no message (%s); kept in the message before it",
                     name, start, problem)
            pieces[-1].stop = stop
            continue
        if problem:
            raise InvalidMessage(f"{name} is not a mail message: after its mbox From_ line, {problem}; "
                                 "nothing was appended")
        pieces.append(_Piece(message_start, stop, rfc5322.header_defects(head),
                             rfc5322.internaldate_from_headers(head) or envelope_date(envelope[:message_start - start]),
                             _merged(name_flags, status_flags(head))))

    filed = []
    for number, piece in enumerate(pieces, 1):
        where = name if len(pieces) == 1 else f"{name}, message {number} of {len(pieces)}"
        if piece.defects:
            _log_defects(piece.defects, where)
        end = _without_separator(spool, piece.start, piece.stop, lf_too=not split)
        literal = Literal.over(lambda a=piece.start, b=end: mboxrd_unquoted(crlf_chunks(spool.chunks(a, b))))
        filed.append(Filed(literal, piece.flags, piece.when, where))
    if len(filed) > 1:
        log.info("%s is an mbox of %d messages", name, len(filed))
    return filed


@dataclass
class _Piece:
    """One message of an mbox file while the file is read: where it lies
    (after its From_ line, separator included), and what its head says."""

    start: int
    stop: int
    defects: int
    when: dt.datetime | None
    flags: tuple[str, ...]


def mboxrd_unquoted(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The chunks with mboxrd's quoting undone: a line ``>From `` becomes
    ``From ``, ``>>From `` becomes ``>From `` (``^>(>*From )`` -> ``\\1``).

    Works across chunk boundaries: the start of a line that could still
    turn out to be quoted is held back until it is decided, and no more.
    """
    held = b""  # the current line's start, while it may still become a quoted From_ line
    in_line = False  # the current line's start was already passed on
    for chunk in chunks:
        if in_line:
            end = chunk.find(b"\n")
            if end < 0:
                yield chunk
                continue
            yield chunk[:end + 1]
            chunk = chunk[end + 1:]
            in_line = False
        data = held + chunk
        cut = data.rfind(b"\n") + 1
        out = _QUOTED_FROM.sub(rb"\1", data[:cut])
        tail = data[cut:]
        if not tail or _MAYBE_QUOTED_FROM.fullmatch(tail):
            held = tail
        else:
            out += _QUOTED_FROM.sub(rb"\1", tail, count=1)
            held = b""
            in_line = True
        if out:
            yield out
    if held:
        yield held


def envelope_date(line: bytes) -> dt.datetime | None:
    """The date of a From_ line ("From sender Tue Mar  5 14:32:00 2024"), or None.

    Without a zone (the usual case) it is taken as UTC. git's fixed
    "Mon Sep 17 00:00:00 2001" is no date at all.
    """
    words = line.decode("ascii", "replace").split()
    if len(words) < 3 or words[0] != "From":
        return None
    text = " ".join(words[2:])
    if text == _GIT_MAGIC_DATE:
        return None
    for fmt in _FROM_LINE_DATE_FORMATS:
        try:
            when = dt.datetime.strptime(text, fmt)
        except ValueError:
            continue
        return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
    try:  # some writers put an RFC 5322 date there
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def status_flags(head: bytes) -> tuple[str, ...]:
    """IMAP flags from an mbox message's Status and X-Status fields (via the
    standard library's mboxMessage, which reads them)."""
    letters = mailbox.mboxMessage(rfc5322.header_block(head)).get_flags()
    return tuple(flag for letter, flag in MBOX_STATUS_FLAGS.items() if letter in letters)


def _merged(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
    return first + tuple(flag for flag in second if flag not in first)


def _log_defects(defects: int, where: str) -> None:
    if defects:
        log.info("%s: %d header line(s) are neither fields nor continuations; filed as they are, "
                 "as servers store them", where, defects)


def _has_envelope_after(spool: Spool, start: int) -> bool:
    """Whether any line from start on begins with "From " (a second message,
    or an unquoted body line): one streamed pass, so a single message needs
    no copy for mailbox.mbox."""
    if start <= 0:
        return False
    tail = b"\n"  # start is the beginning of a line
    for chunk in spool.chunks(start):
        if (tail + chunk).find(b"\nFrom ") >= 0:
            return True
        tail = (tail + chunk)[-5:]
    return False


def _mbox_ranges(spool: Spool, spool_dir: str | None) -> list[tuple[int, int]]:
    """(start, stop) of each message, From_ line included, as mailbox.mbox
    splits the file. It needs a path: a named copy of the spool, deleted at once."""
    with tempfile.NamedTemporaryFile(dir=spool_dir, prefix=".imapfs-mbox-") as copy:
        for chunk in spool.chunks():
            copy.write(chunk)
        copy.flush()
        box = mailbox.mbox(copy.name, create=False)
        try:
            # _lookup is how mailbox itself maps a key to its byte range; the
            # ranges are read from the spool, so the copy can go right away.
            return [box._lookup(key) for key in box.keys()]
        finally:
            box.close()


def _without_separator(spool: Spool, start: int, stop: int, lf_too: bool) -> int:
    """Where a message from start ends once the blank line that separates
    mbox messages is left out. mailbox.mbox leaves out an LF blank line but
    not a CRLF one; lf_too for a range mailbox.mbox did not make."""
    tail = spool.read(max(start, stop - 4), min(4, stop - start))
    if tail.endswith(b"\r\n\r\n"):
        return stop - 2
    if lf_too and tail.endswith(b"\n\n"):
        return stop - 1
    return stop
