"""Names: IMAP folder <-> directory component, message -> file name -> UID.

Pure functions. A message's file name is built only from things that never
change for that message (INTERNALDATE, Subject, UID), so it is stable for the
message's whole life, unique within its folder (the UID), and safe to type in
a shell. Folder names arrive from imapclient already decoded from modified
UTF-7; here they are only split and escaped.
"""

from __future__ import annotations

import base64
import binascii
import quopri
import re
import time
import unicodedata

MAX_SLUG_CHARS = 80
# A file name must fit in 255 bytes; the date prefix, UID and suffix take at
# most 16 + 1 + 10 + 4 bytes, so the slug gets what is left with a margin.
MAX_SLUG_BYTES = 200
NO_SUBJECT = "no-subject"
EML_SUFFIX = ".eml"

_SAFE_PUNCTUATION = frozenset("-_.,+")
_ASCII_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_.,+-]+")
_DASHES_RE = re.compile(r"-{2,}")
_UID_RE = re.compile(r"_(\d{1,10})\.eml\Z")
_ENCODED_WORD_RE = re.compile(rb"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS_RE = re.compile(rb"(\?=)[ \t\r\n]+(=\?)")
_ESCAPE_DECODE_RE = re.compile(r"%(25|2[fF]|2[eE])")
_NEEDS_PERCENT_ESCAPE_RE = re.compile(r"%(?=25|2[fF]|2[eE])")


# --- folders ---------------------------------------------------------------

def escape_component(name: str) -> str:
    """One IMAP hierarchy level -> a legal directory name, reversibly.

    Only what a directory name cannot hold is escaped: '/', the names '.'
    and '..', and a '%' that would otherwise read as one of these escapes.
    Everything else (spaces, '&', dots, any script) is shown as it is.
    """
    if name in {".", ".."}:
        return name.replace(".", "%2E")
    escaped = _NEEDS_PERCENT_ESCAPE_RE.sub("%25", name)
    return escaped.replace("/", "%2F")


def unescape_component(name: str) -> str:
    """Inverse of escape_component."""
    return _ESCAPE_DECODE_RE.sub(lambda m: chr(int(m.group(1), 16)), name)


def folder_to_parts(folder_name: str, delimiter: str | None) -> tuple[str, ...]:
    """IMAP folder name -> directory path components (escaped)."""
    levels = folder_name.split(delimiter) if delimiter else [folder_name]
    return tuple(escape_component(level) for level in levels)


def parts_to_folder(parts: tuple[str, ...] | list[str], delimiter: str | None) -> str:
    """Directory path components -> IMAP folder name (inverse of folder_to_parts)."""
    levels = [unescape_component(p) for p in parts]
    if not delimiter:
        if len(levels) != 1:
            raise ValueError("a server without hierarchy has no nested folders")
        return levels[0]
    return delimiter.join(levels)


# --- messages --------------------------------------------------------------

def message_filename(uid: int, internaldate: float, subject: str) -> str:
    """e.g. 2024-03-05_1432_Quarterly-report_4711.eml (INTERNALDATE in UTC)."""
    stamp = time.strftime("%Y-%m-%d_%H%M", time.gmtime(internaldate))
    return f"{stamp}_{slugify(subject)}_{uid}{EML_SUFFIX}"


def uid_from_filename(name: str) -> int | None:
    """The UID a message file name ends in, or None if it is not one."""
    match = _UID_RE.search(name)
    return int(match.group(1)) if match else None


def slugify(subject: str) -> str:
    """A subject -> a short, shell- and filesystem-safe name part.

    Letters and digits of every script are kept (and combining marks, which
    some scripts need); whitespace and every other character become '-'.
    """
    if subject.isascii():
        # The common case, without a loop over characters: a listing of
        # 10,000 messages slugs 10,000 subjects.
        slug = _DASHES_RE.sub("-", _ASCII_UNSAFE_RE.sub("-", subject)).strip("-.")[:MAX_SLUG_CHARS].strip("-.")
        return slug or NO_SUBJECT
    text = unicodedata.normalize("NFC", subject)
    out: list[str] = []
    for ch in text:
        if ch.isalnum() or ch in _SAFE_PUNCTUATION or unicodedata.category(ch).startswith("M"):
            out.append(ch)
        else:
            out.append("-")
    slug = re.sub(r"-{2,}", "-", "".join(out)).strip("-.")
    slug = slug[:MAX_SLUG_CHARS]
    while len(slug.encode("utf-8")) > MAX_SLUG_BYTES:
        slug = slug[:-1]
    slug = slug.strip("-.")
    return slug or NO_SUBJECT


# --- headers ---------------------------------------------------------------

def header_value(header_block: bytes, field_name: str) -> bytes | None:
    """The raw (unfolded) value of the first header field called field_name."""
    wanted = field_name.lower().encode("ascii") + b":"
    lines = header_block.replace(b"\r\n", b"\n").split(b"\n")
    for i, line in enumerate(lines):
        if line[: len(wanted)].lower() == wanted:
            value = [line[len(wanted):]]
            for cont in lines[i + 1:]:
                if cont[:1] in (b" ", b"\t"):
                    value.append(cont)
                else:
                    break
            return b"".join(value).strip()
    return None


def decode_header_text(raw: bytes) -> str:
    """Decode a header value: RFC 2047 encoded words in any charset Python
    knows, and raw 8-bit bytes (UTF-8 if they are valid UTF-8, else
    Windows-1252). Never raises: undecodable bytes become U+FFFD.
    """
    if b"=?" not in raw and raw.isascii():
        return " ".join(raw.decode("ascii").split())
    raw = _BETWEEN_WORDS_RE.sub(rb"\1\2", raw)
    pieces: list[str] = []
    pos = 0
    for match in _ENCODED_WORD_RE.finditer(raw):
        pieces.append(_decode_8bit(raw[pos:match.start()]))
        pieces.append(_decode_encoded_word(match))
        pos = match.end()
    pieces.append(_decode_8bit(raw[pos:]))
    return re.sub(r"\s+", " ", "".join(pieces)).strip()


def _decode_8bit(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def _decode_encoded_word(match: re.Match[bytes]) -> str:
    charset = match.group(1).decode("ascii", "replace").split("*")[0]  # RFC 2231 language suffix
    encoding, text = match.group(2).upper(), match.group(3)
    try:
        if encoding == b"B":
            data = base64.b64decode(text + b"=" * (-len(text) % 4))
        else:
            data = quopri.decodestring(text.replace(b"_", b" "), header=True)
    except (binascii.Error, ValueError):
        return match.group(0).decode("ascii", "replace")
    try:
        return data.decode(charset, "replace")
    except LookupError:
        return _decode_8bit(data)


def message_id_from_headers(header_block: bytes) -> str:
    raw = header_value(header_block, "Message-ID")
    if not raw:
        return ""
    return raw.decode("ascii", "replace").strip()


# --- tools' own files --------------------------------------------------------

# Names desktops and tools drop beside what they look at, for their own state:
# Finder (.DS_Store, .localized), KDE's Dolphin (.directory), Nautilus (.hidden),
# freedesktop trash (.Trash, .Trash-UID of other users: imapfs shows its own
# user's as a view). Filed, each would be a junk message or folder on the server.
TOOL_FILE_NAMES = frozenset({".DS_Store", ".localized", ".directory", ".hidden", ".Trash", ".notmuch"})
# A temporary name as rsync and mkstemp make them: ".NAME.XXXXXX". These must
# keep working: they become messages when renamed to their real names.
_TEMP_NAME_RE = re.compile(r"\A\..+\.[A-Za-z0-9_]{6}\Z")


def tool_file_reason(name: str, directory: bool) -> str | None:
    """Why a name is a tool's own state and not mail, or None if it may be filed.

    Every new directory whose name begins with "." is one (.notmuch, .git,
    .stfolder, .thumbnails): no mail program makes dot-folders, while tools
    make them to keep their state beside the mail. Files are refused only by
    the names above and AppleDouble's "._NAME" (macOS), because rsync writes
    every message as ".NAME.XXXXXX" before renaming it."""
    if directory and name.startswith("."):
        return "a dot-directory is a tool's own state, not a mail folder"
    if name in TOOL_FILE_NAMES or name.startswith(".Trash-"):
        return "a tool's own file, not mail"
    if name.startswith("._") and not _TEMP_NAME_RE.match(name):
        return "an AppleDouble file (macOS metadata), not mail"
    return None
