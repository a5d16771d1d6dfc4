"""A message's MIME structure, as IMAP's BODYSTRUCTURE describes it, and the
decodings the part views need. Pure: no I/O, nothing of the package below it.

Why BODYSTRUCTURE: it names every part with its IMAP section number ("1",
"2.1", ...) and size, so one part can be fetched (BODY.PEEK[2.1]) without
downloading the rest: the headers of a 50 MB message, or a 20 KB attachment
beside a 30 MB one, cost kilobytes.

Section numbers (RFC 3501 6.4.5): a multipart's children are numbered from
1 under the multipart's own number; a message that is not multipart has one
part, "1"; a message/rfc822 part S holds a message whose header is
S.HEADER and whose body parts are S.1, S.2 ... (S.1 alone when that body is
not multipart).
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# Files a message directory of .parts holds besides its attachments.
RESERVED_NAMES = frozenset({"headers", "text"})
MAX_NAME_BYTES = 255


@dataclass
class StructPart:
    """One node of a BODYSTRUCTURE: a leaf part, a multipart, or a message/rfc822 part (``inner``)."""

    section: str  # "" for a top-level multipart (it has no number of its own)
    maintype: str
    subtype: str
    params: dict[str, str] = field(default_factory=dict)
    encoding: str = "7bit"
    size: int = 0  # octets of the part's body as stored (still transfer-encoded)
    children: list[StructPart] = field(default_factory=list)
    inner: StructPart | None = None  # message/rfc822: the attached message's body
    # Where the header fields describing this part are: "HEADER" (the
    # message's header), "S.HEADER" (an attached message's) or "S.MIME".
    header_section: str = "HEADER"

    @property
    def content_type(self) -> str:
        return f"{self.maintype}/{self.subtype}"

    @property
    def multipart(self) -> bool:
        return self.maintype == "multipart"

    def walk(self) -> Iterator[StructPart]:
        yield self
        for child in self.children:
            yield from child.walk()
        if self.inner is not None:
            yield from self.inner.walk()


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _params(value: Any) -> dict[str, str]:
    if not isinstance(value, (tuple, list)):
        return {}
    items = list(value)
    return {_text(items[i]).lower(): _text(items[i + 1]) for i in range(0, len(items) - 1, 2)}


def _is_multipart(value: Any) -> bool:
    return bool(value) and isinstance(value[0], (tuple, list))


def parse_bodystructure(value: Any, section: str = "", header_section: str = "HEADER") -> StructPart:
    """imapclient's BODYSTRUCTURE (a BodyData, or the raw nested tuples it
    leaves inside message/rfc822 parts) as a StructPart tree.

    ``section`` is the number of the message's body: "" for the top-level
    message, "S" for the message inside message/rfc822 part S.
    """
    if _is_multipart(value):
        if isinstance(value[0], list):  # BodyData nests the children in a list
            children_raw, rest = list(value[0]), list(value[1:])
        else:
            index = next((i for i, item in enumerate(value) if not isinstance(item, (tuple, list))), len(value))
            children_raw, rest = list(value[:index]), list(value[index:])
        node = StructPart(section=section, maintype="multipart", subtype=_text(rest[0]).lower() if rest else "mixed",
                          params=_params(rest[1]) if len(rest) > 1 else {}, header_section=header_section)
        prefix = f"{section}." if section else ""
        node.children = [_leaf_or_multipart(child, f"{prefix}{number}")
                         for number, child in enumerate(children_raw, start=1)]
        return node
    own = f"{section}.1" if section else "1"
    return _leaf(value, own, header_section)


def _leaf_or_multipart(value: Any, section: str) -> StructPart:
    if _is_multipart(value):
        return parse_bodystructure(value, section, header_section=f"{section}.MIME")
    return _leaf(value, section, f"{section}.MIME")


def _leaf(value: Any, section: str, header_section: str) -> StructPart:
    items = list(value)
    items += [None] * max(0, 7 - len(items))
    node = StructPart(section=section, maintype=_text(items[0]).lower() or "text",
                      subtype=_text(items[1]).lower() or "plain", params=_params(items[2]),
                      encoding=_text(items[5]).lower() or "7bit", header_section=header_section)
    try:
        node.size = int(items[6] or 0)
    except (TypeError, ValueError):
        node.size = 0
    if node.content_type == "message/rfc822" and len(items) > 8 and items[8]:
        node.inner = parse_bodystructure(items[8], section, header_section=f"{section}.HEADER")
    return node


def decode_transfer(encoding: str, raw: bytes) -> bytes:
    """A part's content decoded from its Content-Transfer-Encoding exactly as
    the email package decodes it from the whole message (get_payload with
    decode=True): the same code runs, so an attachment fetched alone is byte
    for byte what `email` gives, broken base64 included."""
    holder = email.message.Message()
    holder["Content-Transfer-Encoding"] = encoding or "7bit"
    holder.set_payload(raw)  # bytes become surrogate-escaped text, as the parser leaves them
    decoded = holder.get_payload(decode=True)
    return decoded if isinstance(decoded, bytes) else raw


def parse_header(raw: bytes) -> email.message.EmailMessage:
    """A header block as the email package's modern policy sees it (RFC 2047
    and RFC 2231 decoded on access)."""
    parser = email.parser.BytesHeaderParser(policy=email.policy.default)
    return parser.parsebytes(raw)  # type: ignore[return-value]


def safe_name(name: str) -> str:
    """A decoded attachment name as one file name: no '/', NUL or control
    characters, not '.', '..' or empty, at most 255 bytes of UTF-8 (keeping
    the extension); names arrive from strangers."""
    # A path ("../../etc/passwd", "C:\\x\\y.doc"): its last component, as mail clients save it.
    components = [c for c in name.replace("\\", "/").split("/") if c.strip()]
    text = unicodedata.normalize("NFC", components[-1] if components else "")
    text = "".join("_" if ch == "/" or ch == "\\" or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")
                   else ch for ch in text)
    text = text.strip()
    if text in ("", ".", ".."):
        return ""
    if len(text.encode("utf-8")) > MAX_NAME_BYTES:
        stem, dot, ext = text.rpartition(".")
        ext = f".{ext}" if dot and len(ext) <= 16 else ""
        stem = text[: len(text) - len(ext)] if ext else text
        while len((stem + ext).encode("utf-8")) > MAX_NAME_BYTES:
            stem = stem[:-1]
        text = stem + ext
    return text


def unique_name(name: str, taken: set[str]) -> str:
    """name, or "stem (2).ext", "stem (3).ext" ... : the first not in taken."""
    if name not in taken and name not in RESERVED_NAMES:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    else:
        ext = "." + ext
    number = 2
    while True:
        candidate = safe_name(f"{stem} ({number}){ext}")
        if candidate not in taken and candidate not in RESERVED_NAMES:
            return candidate
        number += 1
