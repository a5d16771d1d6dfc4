"""Names: IMAP folder <-> directory component, message -> file name -> UID.

Pure functions. A message's file name is built only from things that never
change for that message (INTERNALDATE, Subject, UID), so it is stable for the
message's whole life, unique within its folder (the UID), and safe to type in
a shell. Folder names are decoded from modified UTF-7 here (reversibly, also when
a server sends names that are not valid), split and escaped.
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


# --- folders ---------------------------------------------------------------
#
# A folder's name is kept as a str that maps back to the exact bytes the
# server sent in LIST. Valid modified UTF-7 (RFC 3501 5.1.3) is decoded; a
# name that is not (bad base64, a lone surrogate, a non-canonical form such
# as "&AC8-" for "/", which servers would read differently) keeps its bytes
# as they are, each "&" held as RAW_AMPERSAND, so that it is neither decoded
# into something else nor encoded again ("&-"). Names with bytes outside
# printable ASCII cannot be sent back as a quoted string at all: None.

RAW_AMPERSAND = "\udc26"  # a lone surrogate: never part of a decoded name
_MUTF7_SHIFT_RE = re.compile(rb"&([A-Za-z0-9+,]*)-")
# Shown as %XX in a directory name: what a name cannot hold ("/"), the escape
# character itself where it would read as an escape, control characters (C0,
# DEL, C1), and RAW_AMPERSAND as %26 (a decoded "&" shows as itself).
_ESCAPED_CODES = frozenset([*range(0x20), 0x25, 0x26, 0x2E, 0x2F, *range(0x7F, 0xA0)])
_NEEDS_ESCAPE_RE = re.compile("[\x00-\x1f\x7f-\x9f/%\udc26]")
_ESCAPE_RE = re.compile(r"%([0-9A-Fa-f]{2})")


def decode_folder_name(wire: bytes) -> str | None:
    """A folder name as LIST sent it -> imapfs's name for it, which
    encode_folder_name turns back into exactly these bytes; None when no
    command could name it again (bytes outside printable ASCII)."""
    if not all(0x20 <= byte <= 0x7E for byte in wire):
        return None
    text = _decode_mutf7(wire)
    if text is not None and encode_folder_name(text) == wire:
        return text
    return wire.decode("ascii").replace("&", RAW_AMPERSAND)


def _decode_mutf7(wire: bytes) -> str | None:
    out: list[str] = []
    position = 0
    while True:
        start = wire.find(b"&", position)
        if start < 0:
            out.append(wire[position:].decode("ascii"))
            return "".join(out)
        out.append(wire[position:start].decode("ascii"))
        match = _MUTF7_SHIFT_RE.match(wire, start)
        if match is None:
            return None  # an "&" that starts no shift sequence
        encoded = match.group(1)
        if not encoded:
            out.append("&")
        else:
            try:
                data = base64.b64decode(encoded.replace(b",", b"/") + b"=" * (-len(encoded) % 4), validate=True)
                out.append(data.decode("utf-16-be"))  # strict: a lone surrogate or odd length fails
            except (binascii.Error, ValueError):
                return None
        position = match.end()


def encode_folder_name(name: str) -> bytes:
    """imapfs's name for a folder -> the bytes to send (modified UTF-7)."""
    out = bytearray()
    pending: list[str] = []

    def flush() -> None:
        if pending:
            encoded = base64.b64encode("".join(pending).encode("utf-16-be")).rstrip(b"=")
            out.extend(b"&" + encoded.replace(b"/", b",") + b"-")
            pending.clear()

    for ch in name:
        code = ord(ch)
        if ch == RAW_AMPERSAND:
            flush()
            out.extend(b"&")
        elif 0x20 <= code <= 0x7E:
            flush()
            out.extend(b"&-" if ch == "&" else bytes([code]))
        else:
            pending.append(ch)
    flush()
    return bytes(out)


def folder_display(name: str) -> str:
    """A folder's name as a person reads it (user.imap.folder): decoded, or
    as the server sent it when it is not valid modified UTF-7."""
    return name.replace(RAW_AMPERSAND, "&")


def escape_component(name: str) -> str:
    """One IMAP hierarchy level -> a legal directory name, reversibly.

    Only what a directory name cannot or should not hold is escaped, as
    %XX: '/', control characters, a raw '&' of a name that is not valid
    modified UTF-7, a '%' that would otherwise read as one of these escapes,
    and the names '.' and '..' (%2E, %2E%2E). An empty level (a//b) is
    shown as '%', so the name '%' itself as '%25'. Everything else (spaces,
    '&', dots, any script) is shown as it is.
    """
    if name in {".", ".."}:
        return name.replace(".", "%2E")
    if not name:
        return "%"
    if name == "%":
        return "%25"
    if not _NEEDS_ESCAPE_RE.search(name):
        return name
    out = []
    for i, ch in enumerate(name):
        code = 0x26 if ch == RAW_AMPERSAND else ord(ch)
        if ch == "%":
            out.append("%25" if _reads_as_escape(name, i) else ch)
        elif code in _ESCAPED_CODES and ch not in "&.":  # a decoded "&" and dots show as they are
            out.append(f"%{code:02X}")
        else:
            out.append(ch)
    return "".join(out)


def _reads_as_escape(name: str, i: int) -> bool:
    match = _ESCAPE_RE.match(name, i)
    return match is not None and int(match.group(1), 16) in _ESCAPED_CODES


def unescape_component(name: str) -> str:
    """Inverse of escape_component."""
    if name == "%":
        return ""

    def decode(match: re.Match[str]) -> str:
        code = int(match.group(1), 16)
        if code not in _ESCAPED_CODES:
            return match.group(0)
        return RAW_AMPERSAND if code == 0x26 else chr(code)

    return _ESCAPE_RE.sub(decode, name)


def folder_to_parts(folder_name: str, delimiter: str | None) -> tuple[str, ...]:
    """IMAP folder name -> directory path components (escaped)."""
    levels = folder_name.split(delimiter) if delimiter else [folder_name]
    return tuple(escape_component(level) for level in levels)


def parts_to_folder(parts: tuple[str, ...] | list[str], delimiter: str | None) -> str:
    """Directory path components -> IMAP folder name (inverse of folder_to_parts).

    ValueError for what no folder name can say: nesting on a server without
    hierarchy, a level holding the hierarchy delimiter (a%2Fb where the
    delimiter is '/'), or an empty level.
    """
    levels = [unescape_component(p) for p in parts]
    if not delimiter:
        if len(levels) != 1:
            raise ValueError("the server has no folder hierarchy, so folders cannot nest")
        return levels[0]
    for level in levels:
        if delimiter in level:
            raise ValueError(f"the level {level!r} holds the server's hierarchy delimiter {delimiter!r}, "
                             "which would make it two levels")
        if not level:
            raise ValueError("an empty level")
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
