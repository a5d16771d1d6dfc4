"""A message as a person reads it, as UTF-8 text for grep: the From, To, Cc,
Date and Subject lines decoded, a blank line, every text part decoded from
its transfer encoding and charset (HTML turned into text), and a line naming
each attachment. Pure: no I/O; parts arrive as Entity objects whose content
is fetched only when a text part needs it.

Why one Entity tree for two sources: a small message is rendered from its
whole body (fetched with read-ahead, as .eml scans are), a large one from
its BODYSTRUCTURE and only its text parts, so grep over .text never
downloads a 30 MB attachment; both must give the same names and the same
kind of text.
"""

from __future__ import annotations

import codecs
import email.header
import email.message
import email.utils
import mimetypes
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser

from imapfs import mime

SHOWN_HEADERS = ("From", "To", "Cc", "Date", "Subject")
# Charsets that say nothing useful about 8-bit bytes: such text is tried as UTF-8 first.
_VAGUE_CHARSETS = {"", "us-ascii", "ascii", "unknown-8bit", "x-unknown", "unknown", "default"}
_MIME_TYPES = mimetypes.MimeTypes(filenames=())  # the built-in table only: names must not depend on /etc/mime.types


@dataclass
class Entity:
    """One MIME entity, whatever it was read from.

    ``header`` holds the fields describing it (for a message's root: the
    message header); ``content()`` gives its content decoded from the
    transfer encoding, and is called only for text parts and attachments
    being read.
    """

    section: str
    content_type: str
    header: email.message.Message
    content: Callable[[], bytes]
    size: int = 0  # octets as stored, transfer-encoded (an upper bound of the decoded size)
    children: list[Entity] = field(default_factory=list)
    inner: Entity | None = None  # message/rfc822: the attached message's root

    @property
    def maintype(self) -> str:
        return self.content_type.partition("/")[0]

    def charset(self) -> str | None:
        try:
            return self.header.get_content_charset()
        except Exception:  # a parameter the email package cannot parse: treat as undeclared
            return None

    def disposition(self) -> str | None:
        try:
            return self.header.get_content_disposition()
        except Exception:
            return None

    def filename(self) -> str:
        """The decoded file name (RFC 2231 parameters, and RFC 2047 words that
        mailers put inside quoted names), or ""."""
        try:
            name = self.header.get_filename() or self.header.get_param("name", header="content-type") or ""
        except Exception:
            return ""
        if isinstance(name, tuple):  # an RFC 2231 triple the email package left undecoded
            name = email.utils.collapse_rfc2231_value(name)
        name = str(name)
        return decode_header_value(name) if "=?" in name else name


@dataclass
class Attachment:
    entity: Entity
    name: str  # safe and unique within its message


# ---------------------------------------------------------------- entities

def entity_from_message(message: email.message.Message, section: str = "") -> Entity:
    """The Entity tree of a message parsed whole by the email package, numbered as IMAP numbers sections."""
    payload = message.get_payload()
    if message.get_content_maintype() == "multipart" and isinstance(payload, list):
        prefix = f"{section}." if section else ""
        root = Entity(section, message.get_content_type(), message, lambda: b"")
        root.children = [_entity_from_part(part, f"{prefix}{number}") for number, part in enumerate(payload, 1)]
        return root
    return _entity_from_part(message, f"{section}.1" if section else "1", is_root=True)


def _entity_from_part(part: email.message.Message, section: str, is_root: bool = False) -> Entity:
    payload = part.get_payload()
    content_type = part.get_content_type()
    if not is_root and part.get_content_maintype() == "multipart" and isinstance(payload, list):
        node = Entity(section, content_type, part, lambda: b"")
        node.children = [_entity_from_part(child, f"{section}.{number}") for number, child in enumerate(payload, 1)]
        return node
    if content_type == "message/rfc822" and isinstance(payload, list) and payload:
        node = Entity(section, content_type, part, lambda: part.as_bytes())
        node.inner = entity_from_message(payload[0], section)
        return node

    def content() -> bytes:
        decoded = part.get_payload(decode=True)
        return decoded if isinstance(decoded, bytes) else b""

    return Entity(section, content_type, part, content, size=len(payload) if isinstance(payload, str) else 0)


def entity_from_structure(node: mime.StructPart, headers: dict[str, bytes],
                          fetch: Callable[[mime.StructPart], bytes]) -> Entity:
    """The Entity tree of a BODYSTRUCTURE; headers maps header sections
    ("HEADER", "2.MIME", "2.HEADER") to their fetched bytes; fetch(part)
    gives a part's content, decoded from its transfer encoding."""
    header = mime.parse_header(headers.get(node.header_section, b""))
    entity = Entity(node.section, node.content_type, header, lambda: fetch(node), size=node.size)
    entity.children = [entity_from_structure(child, headers, fetch) for child in node.children]
    if node.inner is not None:
        entity.inner = entity_from_structure(node.inner, headers, fetch)
    return entity


# ---------------------------------------------------------------- what is text, what is attached

def _is_attachment(entity: Entity) -> bool:
    if entity.content_type == "message/rfc822":
        return True
    if entity.disposition() == "attachment":
        return True
    if entity.maintype == "multipart":  # a multipart the parsers could not split: its text is shown
        return False
    if entity.maintype != "text":
        return True
    return entity.content_type not in ("text/plain", "text/html") and bool(entity.filename())


def _has(entity: Entity, content_type: str) -> bool:
    if entity.content_type == content_type:
        return True
    return any(_has(child, content_type) for child in entity.children)


def _choose_alternative(children: list[Entity]) -> Entity | None:
    """What a reader shows of multipart/alternative: the plain text if there is one, else the HTML."""
    for wanted in ("text/plain", "text/html"):
        for child in children:
            if child.content_type == wanted:
                return child
    for wanted in ("text/plain", "text/html"):
        for child in children:
            if _has(child, wanted):
                return child
    return children[-1] if children else None


def _walk(entity: Entity, out: list[tuple[str, Entity]]) -> None:
    """(kind, entity) in reading order; kind is "text" or "attachment"."""
    if entity.children:
        if entity.content_type == "multipart/alternative":
            chosen = _choose_alternative(entity.children)
            if chosen is not None:
                _walk(chosen, out)
            return
        for child in entity.children:
            _walk(child, out)
        return
    out.append(("attachment" if _is_attachment(entity) else "text", entity))


def attachments(root: Entity) -> list[Attachment]:
    """The message's attachments (not those inside attached messages), each
    under a decoded, safe name unique within the message."""
    taken: set[str] = set()
    found = []
    walked: list[tuple[str, Entity]] = []
    _walk(root, walked)
    for kind, entity in walked:
        if kind != "attachment":
            continue
        name = mime.unique_name(_attachment_name(entity), taken)
        taken.add(name)
        found.append(Attachment(entity, name))
    return found


def _attachment_name(entity: Entity) -> str:
    name = mime.safe_name(entity.filename())
    if name:
        return name
    if entity.inner is not None:
        subject = mime.safe_name(header_text(entity.inner.header, "Subject"))
        if subject:
            return mime.safe_name(subject[:120] + ".eml")
        return f"part-{entity.section}.eml"
    extension = _MIME_TYPES.guess_extension(entity.content_type) or ".bin"
    return f"part-{entity.section}{extension}"


# ---------------------------------------------------------------- decoding

def _from_surrogates(text: str) -> str:
    """Header text the parser read from raw 8-bit bytes (surrogate escapes) as real characters."""
    if not any("\udc80" <= ch <= "\udcff" for ch in text):
        return text
    return decode_bytes(text.encode("utf-8", "surrogateescape"), None)


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Bytes in a declared charset as text; undeclared or vague: UTF-8 if it
    is UTF-8, else Windows-1252 (what such mail almost always is)."""
    name = (charset or "").strip().lower()
    if name not in _VAGUE_CHARSETS:
        try:
            codec = codecs.lookup(name).name
        except LookupError:
            codec = None
        if codec is not None:
            try:
                return data.decode(codec, "replace")
            except Exception:  # a codec that fails on bad input instead of replacing
                pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def decode_header_value(raw: str) -> str:
    """An unstructured or address header's text with RFC 2047 words decoded."""
    # Raw 8-bit bytes become characters first: an "encoded" word that
    # carries them (some mailers write such words) then decodes too.
    unfolded = _from_surrogates(re.sub(r"\r?\n(?=[ \t])", "", raw).strip())
    try:
        chunks = email.header.decode_header(unfolded)
    except Exception:  # malformed encoded words: show them as they are
        return _from_surrogates(unfolded)
    pieces = []
    for piece, charset in chunks:
        if isinstance(piece, str):
            pieces.append(_from_surrogates(piece))
        else:
            pieces.append(decode_bytes(piece, charset))
    return "".join(pieces)


def header_text(header: email.message.Message, name: str) -> str:
    """Every field called name, decoded, joined by ", " (raw values: the
    email package's own parsing of a broken field could raise)."""
    values = [value for key, value in header.raw_items() if key.lower() == name.lower()] \
        if hasattr(header, "raw_items") else header.get_all(name, [])
    return ", ".join(decode_header_value(str(value)) for value in values)


class _HTMLText(HTMLParser):
    """HTML as the text a person sees: no tags, scripts or styles; blocks on
    lines of their own; entities decoded; link targets kept (people grep
    for them)."""

    BLOCKS = {"p", "div", "br", "tr", "li", "ul", "ol", "table", "h1", "h2", "h3", "h4", "h5", "h6",
              "blockquote", "pre", "hr", "section", "article", "header", "footer", "dl", "dt", "dd", "title"}
    HIDDEN = {"script", "style", "head", "template", "noscript"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self._hidden = 0
        self._pre = 0
        self._links: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.HIDDEN:
            self._hidden += 1
        elif tag == "pre":
            self._pre += 1
        if tag in self.BLOCKS:
            self.pieces.append("\n")
        if tag == "li":
            self.pieces.append("- ")
        elif tag in ("td", "th"):
            self.pieces.append(" ")
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self.pieces.append(f" {alt} ")
        elif tag == "a":
            self._links.append(dict(attrs).get("href"))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag == "a":
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag == "pre":
            self._pre = max(0, self._pre - 1)
        if tag == "a" and self._links:
            href = self._links.pop()
            if href and href.lower().startswith(("http:", "https:", "mailto:")):
                shown = href[7:] if href.lower().startswith("mailto:") else href
                if shown not in "".join(self.pieces[-3:]):
                    self.pieces.append(f" <{shown}>")
        if tag in self.BLOCKS:
            self.pieces.append("\n")

    def handle_data(self, data: str) -> None:
        if self._hidden:
            return
        self.pieces.append(data if self._pre else re.sub(r"\s+", " ", data))

    def text(self) -> str:
        lines = [line.strip() for line in "".join(self.pieces).split("\n")]
        return "\n".join(lines)


def html_to_text(html: str) -> str:
    parser = _HTMLText()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # html.parser is lenient; should it still give up, keep what it made of the start
        pass
    return parser.text()


def _part_text(entity: Entity) -> str:
    text = decode_bytes(entity.content(), entity.charset())
    if entity.content_type == "text/html":
        text = html_to_text(text)
    return text.replace("\r\n", "\n").replace("\r", "\n")


# ---------------------------------------------------------------- rendering

def render(root: Entity) -> bytes:
    """The message as UTF-8 text (see the module docstring)."""
    text = "\n".join(_render_lines(root))
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"
    return text.encode("utf-8", "replace")


def _render_lines(root: Entity) -> list[str]:
    lines = []
    for name in SHOWN_HEADERS:
        value = header_text(root.header, name)
        if value or name != "Cc":
            lines.append(f"{name}: {value}")
    lines.append("")
    names = {id(a.entity): a.name for a in attachments(root)}
    walked: list[tuple[str, Entity]] = []
    _walk(root, walked)
    for kind, entity in walked:
        if kind == "text":
            lines.append(_part_text(entity))
            lines.append("")
            continue
        lines.append(f"[attachment: {names.get(id(entity), entity.section)} ({entity.content_type})]")
        if entity.inner is not None:
            lines.append("")
            lines.append("---------- attached message ----------")
            lines.extend(_render_lines(entity.inner))
            lines.append("---------- end of attached message ----------")
        lines.append("")
    return lines
