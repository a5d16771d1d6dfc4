"""The test mail corpus: each promised case is present, exact, deterministic, and
accepted byte-for-byte by Dovecot (so an imapfs test failing on it is imapfs's fault)."""

from __future__ import annotations

import base64
import email
import email.policy
import re

import imapclient

from tests.support.corpus import (
    ATTACHMENT_8MB,
    LONG_LINE_BYTES,
    LONG_SUBJECT_CHARS,
    bad_input_message,
    bad_input_messages,
    demo_folders,
    demo_messages,
    odd_folder_names,
)
from tests.support.dovecot import Dovecot

REQUIRED_IDS = {
    "subject-slash", "subject-dotdot", "subject-dot", "subject-shell-meta", "subject-700-chars",
    "subject-rfc2047-utf8-b", "subject-rfc2047-iso-2022-jp", "subject-rfc2047-koi8-r",
    "header-8bit-utf8", "header-8bit-latin1", "no-subject", "no-date", "bad-date",
    "same-subject-1", "same-subject-2", "same-subject-3", "empty-body", "long-body-line",
    "mime-missing-boundary", "mime-wrong-boundary", "mime-bad-base64", "attachment-8mb",
}  # fmt: skip


def _header_block(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


def _subject(raw: bytes) -> str:
    return str(email.message_from_bytes(raw, policy=email.policy.default)["Subject"])


def test_every_case_is_present_once_with_crlf_only() -> None:
    messages = bad_input_messages()
    ids = [corpus_id for corpus_id, _raw in messages]
    assert len(ids) == len(set(ids))
    assert REQUIRED_IDS <= set(ids)
    for corpus_id, raw in messages:
        assert re.search(rb"(?<!\r)\n", raw) is None, corpus_id
        assert b"\r\n\r\n" in raw, corpus_id
        assert f"X-Corpus-Id: {corpus_id}\r\n".encode() in raw


def test_corpus_is_deterministic() -> None:
    assert bad_input_messages() == bad_input_messages()
    assert [m.raw for m in demo_messages()] == [m.raw for m in demo_messages()]


def test_cases_are_what_their_ids_say() -> None:
    assert _subject(bad_input_message("subject-dotdot")) == ".."
    assert _subject(bad_input_message("subject-dot")) == "."
    assert "/" in _subject(bad_input_message("subject-slash"))
    assert set("\"'$();|&*?<>`\\") <= set(_subject(bad_input_message("subject-shell-meta")))
    assert len(_subject(bad_input_message("subject-700-chars"))) == LONG_SUBJECT_CHARS
    assert _subject(bad_input_message("subject-rfc2047-iso-2022-jp")) == "会議のお知らせ"
    assert _subject(bad_input_message("subject-rfc2047-koi8-r")) == "Привет, мир"
    assert "会議" in _subject(bad_input_message("subject-rfc2047-utf8-b"))
    assert "Grüße".encode() in _header_block(bad_input_message("header-8bit-utf8"))
    assert "Café".encode("latin-1") in _header_block(bad_input_message("header-8bit-latin1"))
    assert b"\r\nSubject:" not in _header_block(bad_input_message("no-subject"))
    assert b"\r\nDate:" not in _header_block(bad_input_message("no-date"))
    assert bad_input_message("empty-body").endswith(b"\r\n\r\n")
    body_lines = bad_input_message("long-body-line").split(b"\r\n\r\n", 1)[1].split(b"\r\n")
    assert max(map(len, body_lines)) == LONG_LINE_BYTES
    subjects = {_subject(bad_input_message(f"same-subject-{n}")) for n in (1, 2, 3)}
    assert subjects == {"Weekly sync"}


def test_big_attachment_decodes_to_8_mib() -> None:
    raw = bad_input_message("attachment-8mb")
    payload = raw.split(b"Content-Transfer-Encoding: base64\r\n\r\n", 1)[1].split(b"--big-boundary--")[0]
    assert len(base64.b64decode(payload)) == ATTACHMENT_8MB


def test_odd_folder_names_cover_the_promised_cases() -> None:
    names = odd_folder_names()
    assert {"a.b.c", "Données/Été", "Входящие", "日本語", "L1/L2/L3/L4/L5/L6", "& Co"} <= set(names)
    assert any(" " in name for name in names)
    assert len(names) == len(set(names))


def test_demo_mail_is_realistic() -> None:
    messages = demo_messages()
    assert 25 <= len(messages) <= 40
    assert {m.folder for m in messages} <= set(demo_folders()) | {"INBOX"}
    assert "Données/Été" in demo_folders()
    assert sum(b"Content-Disposition: attachment" in m.raw for m in messages) >= 10
    assert len({m.date.year for m in messages}) >= 2


def test_dovecot_stores_the_bad_input_byte_for_byte(dovecot: Dovecot, fresh_folder: str) -> None:
    uids = {corpus_id: dovecot.append(fresh_folder, raw) for corpus_id, raw in bad_input_messages()}
    with dovecot.client() as client:
        client.select_folder(fresh_folder, readonly=True)
        for corpus_id, raw in bad_input_messages():
            uid = uids[corpus_id]
            fetched = client.fetch([uid], ["BODY.PEEK[]", "RFC822.SIZE"])[uid]
            assert fetched[b"BODY[]"] == raw, corpus_id
            assert fetched[b"RFC822.SIZE"] == len(raw), corpus_id


def test_dovecot_accepts_every_odd_folder_name(dovecot: Dovecot, fresh_folder: str) -> None:
    wanted = {f"{fresh_folder}/{name}" for name in odd_folder_names()}
    for name in sorted(wanted):  # parents sort before their children
        dovecot.create_folder(name)
    with dovecot.client() as client:
        listed = {name for _flags, _delimiter, name in client.list_folders(fresh_folder + "/")}
        assert listed == wanted
        message = b"Subject: odd\r\n\r\nx\r\n"
        for name in sorted(wanted):
            client.append(name, message)
            assert client.folder_status(name, [b"MESSAGES"])[b"MESSAGES"] == 1, name
    assert imapclient  # imported for its types in failures
