"""What a file written into a folder must look like to become a message,
and what its name and headers say about the APPEND. Pure functions.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re

from imapfs import names

# RFC 5322 2.2: a field name is printable US-ASCII except ':' and space.
_FIELD_RE = re.compile(rb"[!-9;-~]+[ \t]*:")
# What the start of a first line may be before its colon has been written.
_FIELD_PREFIX_RE = re.compile(rb"[!-9;-~]*[ \t]*")
_MAILDIR_INFO_RE = re.compile(r":2,([A-Za-z]*)")
MAILDIR_FLAGS = {"S": "\\Seen", "F": "\\Flagged", "R": "\\Answered", "D": "\\Draft"}
# 'T' (trashed) is deliberately not mapped: appending a message as \Deleted
# would hand it to the next EXPUNGE, the opposite of archiving it.
MAX_HEADER_SCAN = 256 * 1024


def looks_like_message(data: bytes) -> str | None:
    """None if data begins with an RFC 5322 header block, else why not.

    Checked: the first line is a header field, and no NUL byte appears in
    the header. Later lines that are neither fields nor folded
    continuations are tolerated (real archives hold such messages, and
    servers store them); a first line that is no field is not: that
    refuses images, archives, empty files and text that is not mail, while
    taking any real message, however broken its MIME body. A leading mbox
    ``From `` envelope line is refused here: what is appended never carries
    one (imapfs.filing drops it first). Only the first MAX_HEADER_SCAN
    bytes are looked at.
    """
    if not data:
        return "the file is empty"
    problem = header_problem(data[:MAX_HEADER_SCAN], more_to_come=False, envelope=False)
    if problem is None and header_end(data[:MAX_HEADER_SCAN]) is None and len(data) > MAX_HEADER_SCAN:
        return "no end of header found in the first 256 KiB"
    return problem


def is_envelope_line(line: bytes) -> bool:
    """An mbox From_ line ("From sender date"), which opens a message in an
    mbox file; not the "From:" header field (nor the obsolete "From :")."""
    return line.startswith(b"From ") and not _FIELD_RE.match(line)


def header_problem(prefix: bytes, more_to_come: bool, envelope: bool = True) -> str | None:
    """Why a file beginning with prefix cannot be a mail message, or None.

    With more_to_come, prefix is only what has been written so far: a line
    not yet ended is judged only by what it already shows, so the first
    write that makes a file impossible as mail is refused (``echo hi > x``
    fails in the shell), and none that could still become one.

    With envelope, a first line that is an mbox From_ line is passed over
    and the header after it judged: such files (git format-patch, mutt's
    save-to-file, an mbox of many messages) are filed by imapfs.filing.
    """
    if envelope and prefix.startswith(b"From "):
        first_end = prefix.find(b"\n")
        if first_end < 0:
            if more_to_come:
                return None  # an envelope line, or a "From :" field, not finished yet
        elif is_envelope_line(prefix[:first_end]):
            rest = prefix[first_end + 1:]
            if not rest:
                return None if more_to_come else "it holds an mbox From_ line and no message"
            return header_problem(rest, more_to_come, envelope=False)
    end = header_end(prefix)
    block = prefix if end is None else prefix[:end]
    if b"\x00" in block:
        return "the header contains NUL bytes (binary data, not mail)"
    lines = block.replace(b"\r\n", b"\n").split(b"\n")
    unfinished = lines.pop() if end is None and more_to_come else None
    if lines and lines[-1] == b"":
        lines.pop()
    if lines:
        # Only the first line must be a field: after it, servers store
        # whatever lines a broken mailer wrote (real archives hold such
        # messages), and so does imapfs.
        if _FIELD_RE.match(lines[0]):
            return None
        if is_envelope_line(lines[0]):
            return "it begins with an mbox From_ line"
        return "it does not begin with a mail header (Field: value)"
    if unfinished is not None and (_FIELD_PREFIX_RE.fullmatch(unfinished) or _FIELD_RE.match(unfinished)):
        return None
    return "it does not begin with a mail header (Field: value)"


def header_defects(data: bytes) -> int:
    """How many lines of data's header block are neither fields nor folded
    continuations (tolerated, but worth a log line)."""
    block = header_block(data)
    lines = block.replace(b"\r\n", b"\n").split(b"\n")
    return sum(1 for number, line in enumerate(lines)
               if line and not (number and line[:1] in (b" ", b"\t")) and not _FIELD_RE.match(line))


def header_end(data: bytes) -> int | None:
    """Where the header block ends (just past the blank line's first line end), or None."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        index = data.find(separator)
        if index >= 0:
            return index + len(separator) // 2
    return None


def header_block(data: bytes) -> bytes:
    """The header fields of a message (at most the first MAX_HEADER_SCAN bytes)."""
    head = data[:MAX_HEADER_SCAN]
    end = header_end(head)
    return head[:end] if end else head


def internaldate_from_headers(data: bytes) -> dt.datetime | None:
    """The Date header as an aware datetime, or None (the server then uses now)."""
    raw = names.header_value(header_block(data), "Date")
    if not raw:
        return None
    try:
        when = email.utils.parsedate_to_datetime(raw.decode("ascii", "replace"))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # "-0000": no zone information (RFC 5322 3.3); take UTC
        when = when.replace(tzinfo=dt.timezone.utc)
    if not 1970 <= when.year <= 2200:
        return None
    return when


def flags_from_filename(name: str) -> tuple[str, ...]:
    """Maildir info suffix ':2,FRS' -> IMAP flags (unknown letters ignored)."""
    match = _MAILDIR_INFO_RE.search(name)
    if not match:
        return ()
    return tuple(MAILDIR_FLAGS[c] for c in sorted(set(match.group(1))) if c in MAILDIR_FLAGS)


_FLAG_RE = re.compile(r"\\?[!#$&'+\-.0-9<>?@A-Z^_`a-z|~]+")


def parse_flag_list(text: str) -> tuple[str, ...] | None:
    """'\\Seen \\Flagged $Label' -> flags, or None if a word is no valid flag."""
    flags = tuple(text.split())
    if all(_FLAG_RE.fullmatch(f) for f in flags):
        return flags
    return None
