"""Test mail: hostile-but-legal messages, odd folder names, and a realistic demo mailbox.

Why hand-built bytes: the point of ``bad_input_messages`` is input that mail libraries
would normalise away (8-bit headers, broken MIME, missing headers), so most of it is
written byte by byte. Every message has CRLF line endings, as on the wire, and an
``X-Corpus-Id`` header so a test can find it again with ``SEARCH HEADER``.

Everything is deterministic (fixed dates, seeded random bytes): a failure reproduces.
"""

from __future__ import annotations

import base64
import datetime
import email.policy
import email.utils
import functools
import quopri
import random
import struct
import zlib
from dataclasses import dataclass, field
from email.message import EmailMessage

CRLF = b"\r\n"
SEED = 20240229
ATTACHMENT_8MB = 8 * 1024 * 1024
LONG_LINE_BYTES = 20_000
LONG_SUBJECT_CHARS = 700

_BASE_DATE = datetime.datetime(2024, 3, 1, 9, 0, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))


def odd_folder_names() -> list[str]:
    """Folder names that stress the folder <-> directory mapping ('/' is the IMAP separator)."""
    return [
        "with space",
        "Tom & Jerry",
        "& Co",
        "a.b.c",
        ".hidden-looking",
        "trailing.dot.",
        "Données",
        "Données/Été",
        "Входящие",
        "日本語",
        "Emoji 📬 box",
        "L1",
        "L1/L2",
        "L1/L2/L3",
        "L1/L2/L3/L4",
        "L1/L2/L3/L4/L5",
        "L1/L2/L3/L4/L5/L6",
        "100% done",
        "semi;colon, comma",
        "brackets [x] (y) {z}",
        "single'quote",
        'double"quote',
        "back\\slash",
        "-leading-dash",
    ]


# ---------------------------------------------------------------------- bad input


def _date(index: int) -> bytes:
    """A distinct, valid Date header value per message, so listings sort predictably."""
    return email.utils.format_datetime(_BASE_DATE + datetime.timedelta(hours=index)).encode()


def _message(
    corpus_id: str,
    index: int,
    *,
    subject: bytes | None = b"",
    date: bytes | None = None,
    extra_headers: tuple[bytes, ...] = (),
    content_type: bytes | None = b"text/plain; charset=utf-8",
    body: bytes | None = None,
    message_id: bytes | None = None,
) -> bytes:
    """Assemble header lines + blank line + body; ``None`` leaves a header out entirely."""
    headers = [
        b"From: Corpus Sender <sender@example.org>",
        b"To: Alice <alice@example.org>",
    ]
    if subject is not None:
        headers.append(b"Subject: " + subject)
    if date is None:
        date = _date(index)
    if date != b"":
        headers.append(b"Date: " + date)
    headers.append(b"Message-ID: " + (message_id or f"<{corpus_id}@corpus.imapfs.test>".encode()))
    headers.append(b"X-Corpus-Id: " + corpus_id.encode())
    headers.append(b"MIME-Version: 1.0")
    if content_type is not None:
        headers.append(b"Content-Type: " + content_type)
    headers.extend(extra_headers)
    if body is None:
        body = f"This is corpus message {corpus_id}.\r\n".encode()
    return CRLF.join(headers) + CRLF + CRLF + body


def _fold(text: str, width: int = 76) -> bytes:
    """Fold a long unstructured header value at spaces (RFC 5322 2.2.3): unfolding restores it."""
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if current and len(candidate) > width:
            lines.append(current)
            current = " " + word  # the folding whitespace is the space that was there
        else:
            current = candidate
    lines.append(current)
    return "\r\n".join(lines).encode()


def _long_subject() -> str:
    words = ("quarterly", "budget", "review", "follow-up", "action", "items", "for", "the", "team")
    text = ""
    i = 0
    while len(text) < LONG_SUBJECT_CHARS:
        text += ("" if not text else " ") + words[i % len(words)]
        i += 1
    text = text[:LONG_SUBJECT_CHARS]
    if text.endswith(" "):  # trailing whitespace would be lost in transit; keep it exactly 700
        text = text[:-1] + "x"
    return text


def _encoded_word(text: str, charset: str, encoding: str = "B") -> bytes:
    raw = text.encode(charset)
    if encoding == "B":
        payload = base64.b64encode(raw).decode()
    else:
        payload = "".join("_" if b == 0x20 else chr(b) if chr(b).isalnum() else f"={b:02X}" for b in raw)
    return f"=?{charset}?{encoding}?{payload}?=".encode()


def _b64_lines(data: bytes) -> bytes:
    encoded = base64.b64encode(data)
    return CRLF.join(encoded[i : i + 76] for i in range(0, len(encoded), 76)) + CRLF


@functools.lru_cache(maxsize=1)
def _bad_input_messages() -> tuple[tuple[str, bytes], ...]:
    rng = random.Random(SEED)
    messages: list[tuple[str, bytes]] = []

    def add(corpus_id: str, **kwargs: object) -> None:
        messages.append((corpus_id, _message(corpus_id, len(messages), **kwargs)))  # type: ignore[arg-type]

    add("subject-slash", subject=b"Q3 report / final draft / v2")
    add("subject-leading-slash", subject=b"/etc/passwd")
    add("subject-dotdot", subject=b"..")
    add("subject-dot", subject=b".")
    add("subject-dotdot-slash", subject=b"../../escape")
    add("subject-shell-meta", subject=b"\"quoted\" 'single' $(rm -rf x); `id` | cat & * ? < > \\ ~ # ! {a,b} [x] %s")
    add("subject-700-chars", subject=_fold(_long_subject()))
    add("subject-rfc2047-utf8-b", subject=_encoded_word("Réunion — 会議 📅 demain", "utf-8"))
    add("subject-rfc2047-utf8-q", subject=_encoded_word("Grüße aus Köln", "utf-8", "Q"))
    add(
        "subject-rfc2047-iso-2022-jp",
        subject=_encoded_word("会議のお知らせ", "iso-2022-jp"),
        content_type=b"text/plain; charset=iso-2022-jp",
        body="来週の会議について。\r\n".encode("iso-2022-jp"),
    )
    add(
        "subject-rfc2047-koi8-r",
        subject=_encoded_word("Привет, мир", "koi8-r"),
        content_type=b"text/plain; charset=koi8-r",
        body="Добрый день!\r\n".encode("koi8-r"),
    )
    add(
        "header-8bit-utf8",
        subject="Grüße aus Köln — 東京 (undeclared UTF-8)".encode(),
        extra_headers=("X-Note: Zoë’s raw 8-bit header".encode(),),
    )
    add(
        "header-8bit-latin1",
        subject="Café crème à la française".encode("latin-1"),
        content_type=b"text/plain; charset=iso-8859-1",
        body="Voilà, ça marche.\r\n".encode("latin-1"),
    )
    add("no-subject", subject=None)
    add("empty-subject", subject=b"")
    add("no-date", subject=b"Message without a Date header", date=b"")
    add("bad-date", subject=b"Message with an unparsable Date", date=b"not a date, 32 Foo 99999 25:61:61 +9999")
    # Same subject three times; the first two also share Date and From, so only the
    # UID can tell them apart.
    add("same-subject-1", subject=b"Weekly sync", date=_date(100))
    add("same-subject-2", subject=b"Weekly sync", date=_date(100))
    add("same-subject-3", subject=b"Weekly sync", date=_date(101))
    add("empty-body", subject=b"Empty body", body=b"")
    add(
        "long-body-line",
        subject=b"One 20000-byte body line",
        body=bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz ") for _ in range(LONG_LINE_BYTES)) + CRLF,
    )
    add(
        "mime-missing-boundary",
        subject=b"Multipart without a boundary parameter",
        content_type=b"multipart/mixed",
        body=b"--lost\r\nContent-Type: text/plain\r\n\r\npart one\r\n--lost--\r\n",
    )
    add(
        "mime-wrong-boundary",
        subject=b"Multipart whose parts use another boundary",
        content_type=b'multipart/mixed; boundary="declared-boundary"',
        body=(
            b"preamble\r\n--actual-boundary\r\nContent-Type: text/plain\r\n\r\npart one\r\n"
            b"--actual-boundary\r\nContent-Type: text/plain\r\n\r\npart two\r\n--actual-boundary--\r\n"
        ),
    )
    add(
        "mime-unterminated",
        subject=b"Multipart without the closing boundary",
        content_type=b'multipart/mixed; boundary="open"',
        body=b"--open\r\nContent-Type: text/plain\r\n\r\nthe end never comes\r\n",
    )
    add(
        "mime-bad-base64",
        subject=b"Attachment with invalid base64",
        content_type=b'multipart/mixed; boundary="b64"',
        body=(
            b"--b64\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n"
            b'--b64\r\nContent-Type: application/octet-stream; name="broken.bin"\r\n'
            b'Content-Disposition: attachment; filename="broken.bin"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            b"SGVsbG8gd29y!!!bGQ*&^%not base64 at all===\r\nQUJD=RA\r\n--b64--\r\n"
        ),
    )
    big = rng.randbytes(ATTACHMENT_8MB)
    add(
        "attachment-8mb",
        subject=b"8 MB attachment",
        content_type=b'multipart/mixed; boundary="big-boundary"',
        body=(
            b"--big-boundary\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            b"8 MiB of seeded random bytes attached.\r\n"
            b'--big-boundary\r\nContent-Type: application/octet-stream; name="random.bin"\r\n'
            b'Content-Disposition: attachment; filename="random.bin"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n" + _b64_lines(big) + b"--big-boundary--\r\n"
        ),
    )
    return tuple(messages)


def bad_input_messages() -> list[tuple[str, bytes]]:
    """(id, raw RFC 5322 bytes) pairs that a filesystem view of mail must survive.

    Covers: '/', '.', '..' and shell metacharacters in subjects, a 700-character
    subject, RFC 2047 in utf-8/iso-2022-jp/koi8-r, raw 8-bit utf-8 and latin-1
    headers, missing Subject and Date, an unparsable Date, three equal subjects,
    an empty body, a 20,000-byte line, broken MIME and an 8 MiB attachment.
    """
    return list(_bad_input_messages())


def bad_input_message(corpus_id: str) -> bytes:
    """One message of ``bad_input_messages`` by id (KeyError if unknown)."""
    return dict(_bad_input_messages())[corpus_id]


# ---------------------------------------------------------------------- MIME, for .text and .parts

MIME_SMALL_ATTACHMENT = 20 * 1024
MIME_BIG_ATTACHMENT = 30 * 1024 * 1024


def _mime(corpus_id: str, index: int, subject: bytes, content_type: bytes, body: bytes,
          extra_headers: tuple[bytes, ...] = ()) -> tuple[str, bytes]:
    return corpus_id, _message(corpus_id, 200 + index, subject=subject, content_type=content_type, body=body,
                               extra_headers=extra_headers)


def _qp(text: str, charset: str = "utf-8") -> bytes:
    """Quoted-printable with CRLF line endings (soft breaks included)."""
    return quopri.encodestring(text.encode(charset)).replace(b"\n", b"\r\n")


@functools.lru_cache(maxsize=1)
def _mime_messages() -> tuple[tuple[str, bytes], ...]:
    rng = random.Random(SEED + 2)
    small = rng.randbytes(MIME_SMALL_ATTACHMENT)
    messages = [
        # Encoded subjects in several charsets, each with a plain body naming the city.
        _mime("mime-subject-latin1-q", 0, b"=?iso-8859-1?Q?Gr=FC=DFe_aus_Z=FCrich?=",
              b"text/plain; charset=us-ascii", b"Plain ASCII body.\r\n"),
        _mime("mime-subject-utf8-b", 1, _encoded_word("Treffen in Zürich am Montag", "utf-8"),
              b"text/plain; charset=us-ascii", b"Nothing non-ASCII here.\r\n"),
        _mime("mime-subject-win1251", 2, _encoded_word("Отчёт о поездке", "windows-1251"),
              b"text/plain; charset=windows-1251", "Встреча в Цюрихе прошла хорошо.\r\n".encode("windows-1251")),
        _mime("mime-subject-big5", 3, _encoded_word("蘇黎世會議", "big5"),
              b"text/plain; charset=big5", "會議記錄\r\n".encode("big5")),
        # Bodies: quoted-printable (latin-1 and utf-8), base64.
        _mime("mime-body-qp-latin1", 4, b"Quoted-printable, latin-1",
              b"text/plain; charset=iso-8859-1", _qp("Wir treffen uns in Zürich, Bahnhofstraße 12.\n", "latin-1"),
              (b"Content-Transfer-Encoding: quoted-printable",)),
        _mime("mime-body-qp-utf8", 5, b"Quoted-printable, utf-8",
              b"text/plain; charset=utf-8", _qp("Une très longue ligne " * 8 + "se termine à Genève.\n"),
              (b"Content-Transfer-Encoding: quoted-printable",)),
        _mime("mime-body-base64", 6, b"Base64 body", b"text/plain; charset=utf-8",
              _b64_lines("Das Büro in Zürich ist geschlossen.\r\n".encode()),
              (b"Content-Transfer-Encoding: base64",)),
        # HTML only (base64, with entities, a script and a link).
        _mime("mime-html-only", 7, b"HTML only", b"text/html; charset=utf-8", _b64_lines(
            b"<html><head><style>p {color: red}</style><script>var hidden = 'scriptword';</script></head>"
            b"<body><h1>Einladung</h1><p>Gr&uuml;&szlig;e aus <b>Z&#252;rich</b>!</p>"
            b"<ul><li>erstens</li><li>zweitens</li></ul>"
            b"<p><a href=\"https://example.org/anmeldung\">Anmelden</a></p></body></html>\r\n"),
            (b"Content-Transfer-Encoding: base64",)),
        # Nested multiparts: mixed(alternative(plain, related(html, image)), attachment with an RFC 2231 name).
        _mime("mime-nested", 8, b"Nested multiparts", b'multipart/mixed; boundary="outer"', (
            b"--outer\r\nContent-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n"
            b"--alt\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
            + _qp("Plain alternative: Zürich plain.\n") +
            b"--alt\r\nContent-Type: multipart/related; boundary=\"rel\"\r\n\r\n"
            b"--rel\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>HTML alternative: htmlonlyword</p>\r\n"
            b"--rel\r\nContent-Type: image/png\r\nContent-ID: <img1>\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + _b64_lines(_png_attachment()) + b"--rel--\r\n"
            b"--alt--\r\n"
            b"--outer\r\nContent-Type: application/pdf\r\n"
            b"Content-Disposition: attachment;\r\n filename*0*=utf-8''Z%C3%BCrich%20Bericht;\r\n"
            b" filename*1*=%20%E2%80%94%20final.pdf\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + _b64_lines(_pdf_attachment("Zurich")) +
            b"--outer\r\nContent-Type: text/csv; name=\"=?utf-8?Q?K=C3=B6ln.csv?=\"\r\n"
            b"Content-Disposition: attachment; filename=\"=?utf-8?Q?K=C3=B6ln.csv?=\"\r\n\r\n"
            + _csv_attachment().replace(b"\n", b"\r\n") +
            b"--outer\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Disposition: attachment; filename=\"../../etc/passwd\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + _b64_lines(b"not really\n") +
            b"--outer\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Disposition: attachment; filename=\"passwd\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + _b64_lines(b"same name twice\n") +
            b"--outer--\r\n")),
        # A forwarded message (message/rfc822) beside a short note.
        _mime("mime-rfc822", 9, b"Fwd: the original", b'multipart/mixed; boundary="fwd"', (
            b"--fwd\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee the forwarded message.\r\n"
            b"--fwd\r\nContent-Type: message/rfc822\r\n"
            b"Content-Disposition: attachment; filename=\"original.eml\"\r\n\r\n"
            b"From: Zo\xc3\xab <zoe@example.de>\r\nSubject: =?utf-8?Q?Urspr=C3=BCnglich?=\r\n"
            b"Date: Fri, 01 Mar 2024 09:00:00 +0100\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"inner\"\r\n\r\n"
            b"--inner\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nInner text: forwardedword.\r\n"
            b"--inner\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=\"inner.txt\"\r\n\r\n"
            b"inner attachment\r\n--inner--\r\n"
            b"--fwd--\r\n")),
        # A 20 KB attachment beside a 30 MB one: reading the small one must not fetch the big one.
        _mime("mime-big-and-small", 10, b"Big and small attachments", b'multipart/mixed; boundary="bs"', (
            b"--bs\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nTwo attachments, bigsmallword.\r\n"
            b"--bs\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Disposition: attachment; filename=\"big.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + _b64_lines(rng.randbytes(MIME_BIG_ATTACHMENT)) +
            b"--bs\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Disposition: attachment; filename=\"small.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + _b64_lines(small) + b"--bs--\r\n")),
    ]
    return tuple(messages)


def mime_messages() -> list[tuple[str, bytes]]:
    """(id, raw) pairs for the .text and .parts views: RFC 2047 subjects in
    latin-1, utf-8, windows-1251 and big5; quoted-printable and base64
    bodies; HTML-only mail; nested multiparts (alternative, related, mixed);
    RFC 2231 and RFC 2047 attachment names, a hostile one and a repeated
    one; a message/rfc822 attachment; and a 20 KB attachment beside a 30 MB
    one. Broken MIME is in bad_input_messages. All hand-built (no real
    mail copied)."""
    return list(_mime_messages())


def mime_message(corpus_id: str) -> bytes:
    return dict(_mime_messages())[corpus_id]


# ---------------------------------------------------------------------- demo mail


@dataclass(frozen=True)
class DemoMessage:
    folder: str
    raw: bytes
    date: datetime.datetime
    flags: tuple[str, ...] = field(default=())


_PEOPLE = {
    "alice": ("Alice Liddell", "alice@example.org"),
    "bob": ("Bob Martin", "bob@example.com"),
    "zoe": ("Zoë Müller", "zoe.mueller@example.de"),
    "dmitri": ("Дмитрий Иванов", "dmitri@example.ru"),
    "yamada": ("山田太郎", "yamada@example.jp"),
    "carol": ("Carol Nguyen", "carol@example.net"),
    "shop": ("Papeterie Lumière", "orders@papeterie.example.fr"),
    "airline": ("Skyway Airlines", "no-reply@skyway.example.com"),
    "ci": ("CI Bot", "ci@builds.example.com"),
}

_DEMO_FOLDERS = [
    "Archive",
    "Archive/2023",
    "Archive/2024",
    "Données",
    "Données/Été",
    "Projects",
    "Projects/imapfs",
    "Receipts",
    "Sent",
    "Входящие",
]


def demo_folders() -> list[str]:
    """Folders the demo creates, parents before children (INBOX and Trash already exist)."""
    return list(_DEMO_FOLDERS)


def _csv_attachment() -> bytes:
    rows = ["date,item,amount_eur"]
    rng = random.Random(SEED + 1)
    for day in range(1, 21):
        rows.append(f"2024-05-{day:02d},{rng.choice(['paper', 'ink', 'pens', 'stapler'])},{rng.randint(2, 90)}.00")
    return ("\n".join(rows) + "\n").encode()


def _png_attachment() -> bytes:
    """A valid 16x16 RGB PNG (a little gradient), built without any imaging library."""
    width = height = 16
    rows = []
    for y in range(height):
        rows.append(b"\x00" + b"".join(bytes((x * 16, y * 16, 128)) for x in range(width)))
    raw = b"".join(rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _pdf_attachment(title: str) -> bytes:
    """A tiny but well-formed one-page PDF, so `file` and viewers recognise it."""
    content = f"BT /F1 18 Tf 72 720 Td ({title}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return out


def _ics_attachment(summary: str, start: datetime.datetime) -> bytes:
    stamp = start.astimezone(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//imapfs demo//EN\r\nBEGIN:VEVENT\r\n"
        f"UID:{stamp}@demo.imapfs.test\r\nDTSTAMP:{stamp}\r\nDTSTART:{stamp}\r\n"
        f"SUMMARY:{summary}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    ).encode()


# (folder, from, to, subject, days after 2023-01-09, body, attachments, flags)
_Attachment = tuple[str, str, bytes]  # filename, MIME type, content
# fmt: off
_DEMO_SPEC: list[tuple[str, str, str, str, int, str, list[str], tuple[str, ...]]] = [
    ("INBOX", "bob", "alice", "Lunch on Friday?", 540, "Thai place or the new ramen bar?", [], ("\\Seen",)),
    ("INBOX", "zoe", "alice", "Fotos vom Wochenende", 545, "Hier sind die Bilder vom Ausflug.", ["png"],
     ("\\Seen", "\\Flagged")),
    ("INBOX", "dmitri", "alice", "Отчёт за май", 548, "Привет! Отчёт во вложении.", ["csv"], ()),
    ("INBOX", "yamada", "alice", "会議のお知らせ", 550, "来週の火曜日に会議があります。", ["ics"], ()),
    ("INBOX", "carol", "alice", "Re: imapfs design review", 551,
     "I like the layering. One question about the cache invalidation...", [], ("\\Seen", "\\Answered")),
    ("INBOX", "ci", "alice", "[build] main #1042 passed", 552, "All 214 tests passed in 3m12s.", [], ("\\Seen",)),
    ("INBOX", "ci", "alice", "[build] main #1043 FAILED", 553, "test_mount_readonly failed: EIO", [], ()),
    ("INBOX", "airline", "alice", "Your flight itinerary: LIS → CDG", 555,
     "Booking reference QX7P2L. Departure 07:45.", ["pdf"], ("\\Flagged",)),
    ("INBOX", "bob", "alice", "Re: Lunch on Friday?", 541, "Ramen it is. 12:30?", [], ("\\Seen",)),
    ("INBOX", "zoe", "alice", "Grüße aus Zürich", 560, "Schöne Grüße und bis bald!", [], ()),
    ("INBOX", "carol", "alice", "Slides for Thursday", 562, "Draft attached, comments welcome.", ["pdf"], ()),
    ("INBOX", "shop", "alice", "Votre commande n° 4711 est expédiée", 563,
     "Merci pour votre commande ! Facture ci-jointe.", ["pdf"], ()),
    ("Sent", "alice", "bob", "Lunch on Friday?", 540, "Are you free on Friday?", [], ("\\Seen",)),
    ("Sent", "alice", "carol", "imapfs design review", 549, "Here is the architecture doc.", ["txt"],
     ("\\Seen",)),
    ("Sent", "alice", "zoe", "Re: Fotos vom Wochenende", 546, "Wunderschön, danke!", [], ("\\Seen",)),
    ("Sent", "alice", "dmitri", "Re: Отчёт за май", 549, "Спасибо, получила.", [], ("\\Seen",)),
    ("Archive/2023", "bob", "alice", "Happy new year!", 0, "All the best for 2023.", [], ("\\Seen",)),
    ("Archive/2023", "carol", "alice", "Offsite agenda", 120, "Agenda attached.", ["txt"], ("\\Seen",)),
    ("Archive/2023", "shop", "alice", "Facture 2023-118", 300, "Votre facture.", ["pdf"], ("\\Seen",)),
    ("Archive/2024", "zoe", "alice", "Neues Projekt", 380, "Hast du Zeit für ein neues Projekt?", [],
     ("\\Seen",)),
    ("Archive/2024", "yamada", "alice", "Re: 見積もり", 400, "見積書を添付します。", ["pdf"], ("\\Seen",)),
    ("Archive/2024", "ci", "alice", "[build] nightly report", 420, "Nightly: 3 flaky tests.", ["csv"],
     ("\\Seen",)),
    ("Données/Été", "zoe", "alice", "Vacances d'été", 530, "On part le 14 juillet !", ["png"], ("\\Seen",)),
    ("Données/Été", "carol", "alice", "Photos de la plage", 535, "Quelques photos.", ["png"], ()),
    ("Données/Été", "shop", "alice", "Réservation confirmée", 520, "Votre réservation est confirmée.",
     ["pdf"], ("\\Seen",)),
    ("Projects/imapfs", "carol", "alice", "Benchmark numbers", 556, "grep -r over 10k messages: 4.2 s.",
     ["csv"], ()),
    ("Projects/imapfs", "bob", "alice", "Idea: mount Gmail labels", 557, "Labels as hard links?", [], ()),
    ("Projects/imapfs", "ci", "alice", "[release] v0.1.0 tagged", 565, "Wheel and sdist uploaded.", [], ()),
    ("Receipts", "shop", "alice", "Reçu de paiement", 510, "Merci pour votre achat.", ["pdf", "csv"],
     ("\\Seen",)),
    ("Receipts", "airline", "alice", "Receipt for booking QX7P2L", 555, "Amount paid: EUR 189.00", ["pdf"],
     ("\\Seen",)),
    ("Входящие", "dmitri", "alice", "Встреча в понедельник", 558, "Давай встретимся в 10:00.", [], ()),
]
# fmt: on


def _attachment(kind: str, subject: str, date: datetime.datetime) -> _Attachment:
    if kind == "png":
        return "photo.png", "image/png", _png_attachment()
    if kind == "csv":
        return "report.csv", "text/csv", _csv_attachment()
    if kind == "pdf":
        return "document.pdf", "application/pdf", _pdf_attachment(subject.encode("ascii", "replace").decode())
    if kind == "ics":
        return "invite.ics", "text/calendar", _ics_attachment(subject, date)
    if kind == "txt":
        return "notes.txt", "text/plain", b"Notes\n=====\n\n- folders are directories\n- messages are files\n"
    raise ValueError(kind)


def _demo_message(index: int, spec: tuple[str, str, str, str, int, str, list[str], tuple[str, ...]]) -> DemoMessage:
    folder, sender, recipient, subject, day, text, attachments, flags = spec
    date = datetime.datetime(2023, 1, 9, 8, 30, tzinfo=datetime.timezone.utc) + datetime.timedelta(
        days=day, minutes=37 * index
    )
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = email.utils.formataddr(_PEOPLE[sender])
    msg["To"] = email.utils.formataddr(_PEOPLE[recipient])
    msg["Subject"] = subject
    msg["Date"] = email.utils.format_datetime(date)
    msg["Message-ID"] = f"<demo-{index:03d}@demo.imapfs.test>"
    msg.set_content(f"{text}\n\n-- \n{_PEOPLE[sender][0]}\n")
    for kind in attachments:
        filename, mime, content = _attachment(kind, subject, date)
        maintype, subtype = mime.split("/")
        if maintype == "text":
            msg.add_attachment(content.decode(), subtype=subtype, filename=filename)
        else:
            msg.add_attachment(content, maintype=maintype, subtype=subtype, filename=filename)
    # The email package picks random boundaries; fix them so the bytes are reproducible.
    for number, part in enumerate(msg.walk()):
        if part.is_multipart():
            part.set_boundary(f"demo-{index:03d}-{number}")
    return DemoMessage(folder=folder, raw=msg.as_bytes(policy=email.policy.SMTP), date=date, flags=flags)


def demo_messages() -> list[DemoMessage]:
    """About 30 realistic messages (several languages, attachments, dates across 2023-2024)."""
    return [_demo_message(index, spec) for index, spec in enumerate(_DEMO_SPEC)]


__all__ = [
    "DemoMessage",
    "bad_input_message",
    "bad_input_messages",
    "demo_folders",
    "demo_messages",
    "mime_message",
    "mime_messages",
    "odd_folder_names",
]
