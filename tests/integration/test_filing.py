"""Files people have, filed in once: git format-patch output, an mbox of many
messages, broken header lines, and the same mail copied in again (rsync -rt
twice, cp twice). Through the real CLI and Dovecot; every outcome checked
from a second IMAP connection.

The From_ line tests need ImapFS._append to file what imapfs.filing.messages_in
returns; until fs.py does, they fail (the file is refused as "begins with an
mbox From_ line").
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from tests.integration.helpers import server_messages, sh


def crlf(data: bytes) -> bytes:
    """What the server stores for a file: line endings made CRLF."""
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)


def lf_message(subject: str, body: str, date: str | None = "Tue, 05 Mar 2024 14:32:00 +0000") -> bytes:
    """A message as a local tool writes it: LF line endings."""
    dated = f"Date: {date}\n" if date else ""
    return (f"From: Alice <alice@example.org>\nTo: bob@example.com\nSubject: {subject}\n{dated}"
            f"Message-ID: <{uuid.uuid4().hex}@example.org>\n\n{body}\n").encode()


def stored(imap, folder) -> list[bytes]:
    return sorted(d["body"] for d in server_messages(imap, folder).values())


def test_cp_of_a_git_format_patch_file_stores_the_message_without_its_from_line(imap, fresh_folder, mount,
                                                                                 tmp_path):
    token = uuid.uuid4().hex
    patch = (b"From 8f2e4a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f Mon Sep 17 00:00:00 2001\n"
             b"From: Alice <alice@example.org>\n"
             b"Date: Tue, 5 Mar 2024 14:32:00 +0100\n"
             b"Subject: [PATCH] spool: stream the literal %s\n"
             b"\n"
             b"From now on the literal is streamed.\n"
             b"---\n imapfs/spool.py | 2 +-\n 1 file changed\n\n"
             b"diff --git a/imapfs/spool.py b/imapfs/spool.py\n--- a/imapfs/spool.py\n+++ b/imapfs/spool.py\n"
             b"@@ -1 +1 @@\n-old\n+new\n-- \n2.39.2\n\n") % token.encode()
    source = tmp_path / "0001-spool-stream-the-literal.patch"
    source.write_bytes(patch)
    m = mount()
    sh("cp", source, m.path / fresh_folder)
    message = crlf(patch.split(b"\n", 1)[1][:-1])  # no envelope line, no separating blank line
    assert stored(imap, fresh_folder) == [message]
    imap.select_folder(fresh_folder, readonly=True)
    (uid,) = imap.search("ALL")
    when = imap.fetch([uid], ["INTERNALDATE"])[uid][b"INTERNALDATE"]
    assert (when.year, when.month, when.day) == (2024, 3, 5)  # from Date:, not git's magic 2001


def test_cp_of_an_mbox_of_30_messages_stores_each_once_unquoted(imap, fresh_folder, mount, tmp_path):
    messages = [lf_message(f"mbox {n} {uuid.uuid4().hex[:8]}",
                           f"line one\nFrom the start, message {n}\n>From quoted {n}\nlast line")
                for n in range(30)]
    quoted = [re.sub(rb"(?m)^(>*From )", rb">\1", m) for m in messages]
    export = b"".join(b"From alice@example.org Tue Mar  5 14:32:00 2024\n" + q + b"\n" for q in quoted)
    source = tmp_path / "export.mbox"
    source.write_bytes(export)
    m = mount()
    sh("cp", source, m.path / fresh_folder)
    got = stored(imap, fresh_folder)
    assert got == sorted(crlf(m) for m in messages)
    assert not any(body.startswith(b"From ") for body in got)
    assert all(b"\r\n>From quoted" in body and b"\r\nFrom the start" in body for body in got)
    sh("cp", source, m.path / fresh_folder / "export-again.mbox")  # again: nothing new
    assert stored(imap, fresh_folder) == got


def test_rsync_rt_twice_of_12_messages_leaves_12(imap, fresh_folder, mount, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    raws = [lf_message(f"rsynced twice {i}", f"body {i}") for i in range(12)]
    for i, raw in enumerate(raws):
        (src / f"m{i}.eml").write_bytes(raw)  # LF: the written name's size never matches the source
    m = mount()
    for _ in range(2):
        sh("rsync", "-rt", f"{src}/", f"{m.path / fresh_folder}/")
    assert stored(imap, fresh_folder) == sorted(crlf(r) for r in raws)


def test_cp_twice_of_one_file_leaves_one_message(imap, fresh_folder, mount, tmp_path):
    raw = lf_message(f"copied twice {uuid.uuid4().hex}", "once is enough")
    source = tmp_path / "twice.eml"
    source.write_bytes(raw)
    m = mount()
    sh("cp", source, m.path / fresh_folder / "first.eml")
    # The same name again is EACCES today (the written name is a read-only message); the same
    # content under another name is what a second copy of a renamed file looks like.
    sh("cp", source, m.path / fresh_folder / "second.eml")
    assert stored(imap, fresh_folder) == [crlf(raw)]


def test_lf_and_crlf_copies_of_one_message_are_one_message(imap, fresh_folder, mount, tmp_path):
    raw = lf_message(f"line endings {uuid.uuid4().hex}", "same either way")
    (tmp_path / "lf.eml").write_bytes(raw)
    (tmp_path / "crlf.eml").write_bytes(crlf(raw))
    m = mount()
    sh("cp", tmp_path / "lf.eml", tmp_path / "crlf.eml", m.path / fresh_folder)
    assert stored(imap, fresh_folder) == [crlf(raw)]


def test_a_message_with_a_broken_header_line_after_valid_fields_is_stored(imap, fresh_folder, mount,
                                                                          tmp_path):
    raw = (b"Return-Path: <alice@example.org>\nFrom: Alice <alice@example.org>\nTo: bob@example.com,\n"
           b"carol@example.com\nSubject: wrapped by a broken mailer %s\n\nbody\n") % uuid.uuid4().hex.encode()
    (tmp_path / "broken.eml").write_bytes(raw)
    m = mount()
    sh("cp", tmp_path / "broken.eml", m.path / fresh_folder)
    assert stored(imap, fresh_folder) == [crlf(raw)]


def test_text_beginning_with_from_is_still_refused_at_the_first_write(imap, fresh_folder, mount):
    """"From " may open an mbox envelope line, so it is let through, but a
    second line that is no header field shows it is no mail."""
    m = mount()
    done = sh("bash", "-c", f'printf "From here on,\\nno mail at all\\n" > "{m.path / fresh_folder}/x"',
              check=False)
    assert done.returncode != 0
    assert stored(imap, fresh_folder) == []


def test_real_git_format_patch_output_and_gio_copy_file_in(imap, fresh_folder, mount, tmp_path):
    # Files as the real tools write them: git format-patch (a From_ line with
    # git's magic date), copied in by a file manager's gio copy.
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=Alice", "-c", "user.email=alice@example.org"]
    sh(*git, "init", "-q")
    (repo / "notes.txt").write_text(f"From now on, {uuid.uuid4().hex}\n")  # a body line starting "From "
    sh(*git, "add", "notes.txt")
    sh(*git, "commit", "-q", "-m", "Add notes", env={**os.environ, "GIT_AUTHOR_DATE": "2024-03-05T14:32:00+0100",
                                                      "GIT_COMMITTER_DATE": "2024-03-05T14:32:00+0100"})
    [patch] = sh(*git, "format-patch", "-1", "-o", str(tmp_path / "out")).stdout.decode().split()
    raw = Path(patch).read_bytes()
    assert raw.startswith(b"From ") and b"Mon Sep 17 00:00:00 2001" in raw.split(b"\n", 1)[0]
    m = mount()
    sh("gio", "copy", patch, m.path / fresh_folder)
    [body] = stored(imap, fresh_folder)
    assert not body.startswith(b"From ") and body.startswith(b"From: Alice <alice@example.org>\r\n")
    assert b"Subject: [PATCH] Add notes\r\n" in body and b"+From now on, " in body
