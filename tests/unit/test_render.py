"""render.py and mime.py: a message as text, names of attachments, and decoding
that matches the email package byte for byte, without any server."""

from __future__ import annotations

import email
import email.policy

import pytest

from imapfs import mime, render
from tests.support.corpus import bad_input_message, bad_input_messages, mime_message, mime_messages


def text_of(raw: bytes) -> str:
    root = render.entity_from_message(email.message_from_bytes(raw, policy=email.policy.default))
    return render.render(root).decode("utf-8")


def names_of(raw: bytes) -> list[str]:
    root = render.entity_from_message(email.message_from_bytes(raw, policy=email.policy.default))
    return [a.name for a in render.attachments(root)]


@pytest.mark.parametrize("corpus_id, expected", [
    ("mime-subject-latin1-q", "Subject: Grüße aus Zürich\n"),
    ("mime-subject-utf8-b", "Subject: Treffen in Zürich am Montag\n"),
    ("mime-subject-win1251", "Subject: Отчёт о поездке\n"),
    ("mime-subject-big5", "Subject: 蘇黎世會議\n"),
])
def test_encoded_subjects_are_decoded(corpus_id: str, expected: str) -> None:
    assert expected in text_of(mime_message(corpus_id))


@pytest.mark.parametrize("corpus_id, expected", [
    ("mime-body-qp-latin1", "Wir treffen uns in Zürich, Bahnhofstraße 12.\n"),
    ("mime-body-qp-utf8", "se termine à Genève.\n"),
    ("mime-body-base64", "Das Büro in Zürich ist geschlossen.\n"),
    ("mime-subject-win1251", "Встреча в Цюрихе прошла хорошо.\n"),
    ("mime-subject-big5", "會議記錄\n"),
])
def test_bodies_are_decoded_from_transfer_encoding_and_charset(corpus_id: str, expected: str) -> None:
    assert expected in text_of(mime_message(corpus_id))


def test_header_block_then_blank_line_then_text() -> None:
    lines = text_of(mime_message("mime-body-base64")).split("\n")
    assert lines[0] == "From: Corpus Sender <sender@example.org>"
    assert lines[1] == "To: Alice <alice@example.org>"
    assert lines[2].startswith("Date: ")
    assert lines[3] == "Subject: Base64 body"
    assert lines[4] == ""
    assert "Cc:" not in "\n".join(lines)  # absent, not shown empty


def test_html_becomes_text_without_tags_scripts_or_styles() -> None:
    text = text_of(mime_message("mime-html-only"))
    assert "Grüße aus Zürich!" in text
    body = text.split("\n\n", 1)[1]
    assert "<" not in body.replace("<https://example.org/anmeldung>", "")
    assert "scriptword" not in text and "color: red" not in text
    assert "- erstens" in text and "Anmelden <https://example.org/anmeldung>" in text


def test_alternative_shows_the_plain_text_once_and_lists_attachments() -> None:
    text = text_of(mime_message("mime-nested"))
    assert "Plain alternative: Zürich plain." in text
    assert "htmlonlyword" not in text  # the HTML alternative of the same text is not shown twice
    assert "[attachment: Zürich Bericht — final.pdf (application/pdf)]" in text
    assert "[attachment: Köln.csv (text/csv)]" in text


def test_attachment_names_are_decoded_safe_and_unique() -> None:
    # RFC 2231 continuation with UTF-8, RFC 2047 inside a quoted name, a
    # path, and the same name twice.
    assert names_of(mime_message("mime-nested")) == ["Zürich Bericht — final.pdf", "Köln.csv", "passwd",
                                                     "passwd (2)"]


def test_an_attached_message_is_an_attachment_and_its_text_is_shown() -> None:
    raw = mime_message("mime-rfc822")
    assert names_of(raw) == ["original.eml"]
    text = text_of(raw)
    assert "See the forwarded message." in text
    assert "Subject: Ursprünglich" in text and "From: Zoë <zoe@example.de>" in text
    assert "Inner text: forwardedword." in text
    assert "[attachment: inner.txt (text/plain)]" in text


@pytest.mark.parametrize("corpus_id", [cid for cid, _ in bad_input_messages()])
def test_every_bad_input_renders_as_utf8_ending_in_one_newline(corpus_id: str) -> None:
    text = text_of(bad_input_message(corpus_id))
    assert text.endswith("\n") and not text.endswith("\n\n")
    assert "\r" not in text and "\udc80" not in text


def test_broken_mime_keeps_its_text_greppable() -> None:
    assert "part one" in text_of(bad_input_message("mime-missing-boundary"))
    assert "part two" in text_of(bad_input_message("mime-wrong-boundary"))
    assert "the end never comes" in text_of(bad_input_message("mime-unterminated"))
    assert "Subject: Café crème à la française" in text_of(bad_input_message("header-8bit-latin1"))
    assert "Voilà, ça marche." in text_of(bad_input_message("header-8bit-latin1"))


@pytest.mark.parametrize("corpus_id", ["mime-nested", "mime-rfc822", "mime-html-only", "mime-body-qp-utf8"])
def test_decode_transfer_matches_the_email_package(corpus_id: str) -> None:
    message = email.message_from_bytes(mime_message(corpus_id))
    for part in message.walk():
        if part.is_multipart():
            continue
        raw = part.get_payload(decode=False).encode("ascii", "surrogateescape")
        cte = part.get("Content-Transfer-Encoding", "7bit")
        assert mime.decode_transfer(cte, raw) == part.get_payload(decode=True)


def test_decode_transfer_of_broken_base64_matches_the_email_package() -> None:
    message = email.message_from_bytes(bad_input_message("mime-bad-base64"))
    part = message.get_payload()[1]
    raw = part.get_payload(decode=False).encode("ascii", "surrogateescape")
    assert mime.decode_transfer("base64", raw) == part.get_payload(decode=True)


def test_bodystructure_sections_as_imap_numbers_them() -> None:
    # imapclient's shape: the children of a multipart nested in a list; the
    # body inside message/rfc822 left as raw tuples.
    text = (b"text", b"plain", (b"charset", b"utf-8"), None, None, b"7bit", 12, 1)
    inner = ((b"text", b"plain", None, None, None, b"7bit", 5, 1),
             (b"image", b"png", None, None, None, b"base64", 99), b"mixed")
    forwarded = (b"message", b"rfc822", None, None, None, b"7bit", 400, None, inner, 10)
    alternative = ([_body(text), _body(text)], b"alternative")
    tree = mime.parse_bodystructure(_body(([alternative, _body(forwarded)], b"mixed", (b"boundary", b"x"))))
    sections = [(p.section, p.content_type, p.header_section) for p in tree.walk()]
    assert sections == [
        ("", "multipart/mixed", "HEADER"),
        ("1", "multipart/alternative", "1.MIME"),
        ("1.1", "text/plain", "1.1.MIME"),
        ("1.2", "text/plain", "1.2.MIME"),
        ("2", "message/rfc822", "2.MIME"),
        ("2", "multipart/mixed", "2.HEADER"),
        ("2.1", "text/plain", "2.1.MIME"),
        ("2.2", "image/png", "2.2.MIME"),
    ]
    assert tree.children[1].size == 400 and tree.children[1].inner.children[1].encoding == "base64"


def test_bodystructure_of_a_single_part_message_is_part_1() -> None:
    tree = mime.parse_bodystructure(_body((b"TEXT", b"HTML", (b"CHARSET", b"utf-8"), None, None, b"BASE64", 80, 2)))
    assert (tree.section, tree.content_type, tree.encoding, tree.header_section) == ("1", "text/html", "base64",
                                                                                     "HEADER")
    assert tree.params == {"charset": "utf-8"}


def _body(value: tuple) -> tuple:
    """What imapclient gives: BodyData nests a multipart's children in a list."""
    from imapclient.response_types import BodyData

    return BodyData.create(value) if not isinstance(value[0], list) else BodyData(value)


@pytest.mark.parametrize("name, safe", [
    ("../../etc/passwd", "passwd"), ("C:\\Users\\x\\report.doc", "report.doc"), ("..", ""), ("", ""),
    ("a\x00b\nc", "a_b_c"), ("x" * 300 + ".pdf", "x" * 251 + ".pdf"),
])
def test_safe_name(name: str, safe: str) -> None:
    assert mime.safe_name(name) == safe


def test_every_corpus_message_renders() -> None:
    for corpus_id, raw in mime_messages():
        assert text_of(raw).startswith("From: "), corpus_id
