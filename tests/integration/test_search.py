""".search/QUERY/ on a real mount, every answer checked against imapclient's own UID SEARCH.

The test's folders live under one fresh root (with subfolders and a
non-ASCII name), and every query carries in:ROOT, so other tests' folders in
the shared Dovecot cannot change what is expected.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
from pathlib import Path

import pytest

from imapfs import names
from imapfs.query import parse
from tests.integration.helpers import message, server_messages, sh

SUBFOLDERS = ("", "/Work", "/Work/Deep", "/Données")
EARLY = dt.datetime(2023, 6, 1, 9, 0, tzinfo=dt.timezone.utc)
LATE = dt.datetime(2024, 3, 5, 14, 32, tzinfo=dt.timezone.utc)


def _mail(subject: str, body: str, sender: str = "Alice <alice@example.org>", extra: str = "") -> bytes:
    raw = message(subject, body, extra=extra)
    return raw.replace(b"From: Alice <alice@example.org>", f"From: {sender}".encode())


def _seed(dovecot, root: str) -> None:
    for sub in SUBFOLDERS[1:]:
        dovecot.create_folder(root + sub)
    bodies = [
        (_mail("Invoice 42", "please pay the invoice"), (), LATE),
        (_mail("Special offer", "quarterly report attached", sender="Bob <bob@example.net>"), ("\\Seen",), EARLY),
        (_mail("=?utf-8?q?Z=C3=BCrich_meeting?=", "see you there"), ("\\Flagged",), LATE),
        (_mail("Lunch", "Grüße aus Zürich", extra="Cc: Carol <carol@example.org>\r\n"), ("\\Seen", "\\Answered"),
         LATE),
        (_mail("List mail", "needle in a haystack " + "x" * 6000, extra="List-Id: <dev.example.org>\r\n"), (),
         EARLY),
    ]
    for index, sub in enumerate(SUBFOLDERS):
        # Every folder a different mix, so results differ per folder.
        for number, (raw, flags, when) in enumerate(bodies):
            if (number + index) % 3 != 2:
                dovecot.append(root + sub, raw, flags=flags, msg_time=when)


def _shown(top: Path) -> dict[str, set[int]]:
    """folder name -> UIDs, as the result directory shows them (directories nest like folders)."""
    shown: dict[str, set[int]] = {}
    for directory, _dirs, files in os.walk(top):
        parts = Path(directory).relative_to(top).parts
        uids = {names.uid_from_filename(f) for f in files}
        if uids:
            shown[names.parts_to_folder(list(parts), "/")] = uids  # type: ignore[arg-type]
    return shown


def _expected(imap, root: str, text: str) -> dict[str, set[int]]:
    """What imapclient's own UID SEARCH of the same keys finds, folder by folder."""
    query = parse(text)
    expected: dict[str, set[int]] = {}
    for sub in SUBFOLDERS:
        imap.select_folder(root + sub, readonly=True)
        found = set(imap.search(list(query.keys), charset=query.charset))
        if found:
            expected[root + sub] = found
    return expected


QUERIES = [
    "invoice",
    "from:alice since:2024-01-01 invoice",
    '"quarterly report"',
    "subject:offer OR subject:invoice",
    "-is:read",
    "is:read",
    "is:flagged",
    "is:answered",
    "-from:alice",
    "cc:carol",
    "to:bob@example.com body:needle",
    "header:List-Id:dev.example.org",
    "larger:5k",
    "smaller:1k",
    "before:2024-01-01",
    "on:2024-03-05",
    "Zürich",
    "subject:zürich",
    "Grüße -is:flagged",
    "nothing-matches-this-7f3a",
]


def test_every_query_finds_what_imapclients_uid_search_finds(dovecot, imap, fresh_folder, mount):
    _seed(dovecot, fresh_folder)
    m = mount()
    empty = []
    for text in QUERIES:
        top = m.path / ".search" / f"{text} in:{fresh_folder}"
        assert top.is_dir(), text
        shown = _shown(top)
        expected = _expected(imap, fresh_folder, text)
        assert shown == expected, text
        if not expected:
            empty.append(text)
    assert empty == ["nothing-matches-this-7f3a"]  # the comparisons above compared something
    # Results spanning several folders are what the nesting is for.
    assert len(_shown(m.path / ".search" / f"invoice in:{fresh_folder}")) >= 3


def test_result_files_are_the_real_messages(dovecot, imap, fresh_folder, mount):
    _seed(dovecot, fresh_folder)
    m = mount()
    top = m.path / ".search" / f"Zürich in:{fresh_folder}"
    work = top / fresh_folder / "Work"
    files = sorted(work.iterdir())
    assert files, sh("ls", "-R", top).stdout
    bodies = server_messages(imap, f"{fresh_folder}/Work")
    for path in files:
        if path.is_dir():
            continue
        uid = names.uid_from_filename(path.name)
        assert sh("cat", path).stdout == bodies[uid]["body"]
        # The same name as in the folder view, and the same attributes.
        twin = m.path / fresh_folder / "Work" / path.name
        assert twin.stat().st_size == path.stat().st_size == len(bodies[uid]["body"])
        assert os.getxattr(path, "user.imap.uid") == str(uid).encode()
    # Hidden: the root does not list it, and .search lists no query.
    assert ".search" not in os.listdir(m.path)
    assert os.listdir(m.path / ".search") == []


def test_in_limits_the_search_to_a_folder_and_its_subfolders(dovecot, imap, fresh_folder, mount):
    _seed(dovecot, fresh_folder)
    m = mount()
    shown = _shown(m.path / ".search" / f"invoice in:{fresh_folder}%2FWork")
    every = _expected(imap, fresh_folder, "invoice")
    assert shown == {name: uids for name, uids in every.items() if name.startswith(f"{fresh_folder}/Work")}
    assert shown
    without = _shown(m.path / ".search" / f"invoice in:{fresh_folder} -in:{fresh_folder}%2fWork")
    assert without == {name: uids for name, uids in every.items() if not name.startswith(f"{fresh_folder}/Work")}


def test_an_unparsable_query_fails_with_einval_and_one_log_line(dovecot, mount):
    m = mount()
    bad = 'from:alice "unbalanced'
    with pytest.raises(OSError) as caught:
        os.stat(m.path / ".search" / bad)
    assert caught.value.errno == errno.EINVAL
    done = sh("ls", m.path / ".search" / "since:yesterday", check=False)
    assert done.returncode != 0
    assert b"Invalid argument" in done.stderr
    log = m.log()
    assert "unbalanced double quote" in log
    lines = [line for line in log.splitlines() if "since:yesterday" in line]
    assert len(lines) == 1 and "YYYY-MM-DD" in lines[0], lines


def test_search_sees_new_mail_and_rm_acts_on_the_real_message(dovecot, imap, fresh_folder, mount):
    dovecot.append(fresh_folder, message("first needle", "a"))
    m = mount("listing_ttl=0")
    top = m.path / ".search" / f"subject:needle in:{fresh_folder}" / fresh_folder
    assert len(os.listdir(top)) == 1
    uid = dovecot.append(fresh_folder, message("second needle", "b"))
    names_now = os.listdir(top)
    assert len(names_now) == 2
    victim = next(n for n in names_now if names.uid_from_filename(n) == uid)
    os.unlink(top / victim)
    assert uid not in server_messages(imap, fresh_folder)
    assert len(os.listdir(top)) == 1


def test_mv_out_of_a_result_into_a_folder_moves_the_real_message(dovecot, imap, fresh_folder, mount):
    dovecot.create_folder(f"{fresh_folder}/Archive")
    uid = dovecot.append(fresh_folder, message("move me needle", "a"))
    dovecot.append(fresh_folder, message("stay", "b"))
    m = mount()
    top = m.path / ".search" / f"subject:needle in:{fresh_folder}" / fresh_folder
    (name,) = os.listdir(top)
    assert names.uid_from_filename(name) == uid
    sh("mv", top / name, m.path / fresh_folder / "Archive" / "")
    moved = server_messages(imap, f"{fresh_folder}/Archive")
    assert [d["body"] for d in moved.values()] == [message("move me needle", "a")]
    assert uid not in server_messages(imap, fresh_folder)
    # The result now finds it in Archive (under in:, a subfolder), and no longer where it was.
    assert _shown(m.path / ".search" / f"subject:needle in:{fresh_folder}") == {
        f"{fresh_folder}/Archive": set(moved)}
