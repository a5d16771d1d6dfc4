"""The hidden views .text and .parts through the real CLI on a real Dovecot:
grep finds what a person reads, attachments are what the email package
decodes, a part is fetched without the rest of its message, and neither
view shows up in ls or find of the mount."""

from __future__ import annotations

import base64
import email
import email.policy
import random
import threading
from pathlib import Path

import pytest

from imapfs import render
from tests.integration.helpers import server_messages, sh
from tests.support.corpus import bad_input_message, mime_message, mime_messages
from tests.support.proxy import ImapProxy

BROKEN = ("mime-bad-base64", "mime-missing-boundary", "mime-wrong-boundary", "mime-unterminated",
          "header-8bit-latin1", "subject-rfc2047-koi8-r")
SMALL_IDS = [cid for cid, _ in mime_messages() if cid != "mime-big-and-small"]
ONE_MB = 1024 * 1024


def seed(dovecot, folder: str, ids: list[str]) -> dict[str, tuple[int, bytes]]:
    """corpus id -> (UID, raw) of each message appended to folder."""
    seeded = {}
    for cid in ids:
        raw = mime_message(cid) if cid in SMALL_IDS or cid == "mime-big-and-small" else bad_input_message(cid)
        seeded[cid] = (dovecot.append(folder, raw), raw)
    return seeded


def by_uid(directory: Path, suffix: str = "") -> dict[int, Path]:
    return {int(p.name.removesuffix(suffix).rsplit("_", 1)[1]): p for p in directory.iterdir()
            if p.name.endswith(suffix)}


def expected_text(raw: bytes) -> bytes:
    return render.render(render.entity_from_message(email.message_from_bytes(raw, policy=email.policy.default)))


@pytest.mark.parametrize("options", [(), ("ro",)], ids=["rw", "ro-kernel-opens"])
def test_grep_over_text_finds_encoded_subjects_and_bodies(dovecot, imap, fresh_folder, mount, options):
    seeded = seed(dovecot, fresh_folder, [*SMALL_IDS, *BROKEN])
    m = mount(*options)
    directory = m.path / ".text" / fresh_folder
    found = sh("grep", "-ril", "zürich", m.path / ".text" / fresh_folder).stdout.decode().split()
    expected = {"mime-subject-latin1-q", "mime-subject-utf8-b", "mime-body-qp-latin1", "mime-body-base64",
                "mime-html-only", "mime-nested"}
    uids = {seeded[cid][0] for cid in expected}
    assert {int(Path(p).name.removesuffix(".txt").rsplit("_", 1)[1]) for p in found} == uids
    # The .eml files hold none of it in a form grep can see.
    assert sh("grep", "-ril", "zürich", m.path / fresh_folder, check=False).stdout == b""
    files = by_uid(directory, ".txt")
    assert sorted(files) == sorted(uid for uid, _ in seeded.values())
    for cid, (uid, raw) in seeded.items():
        data = files[uid].read_bytes()
        assert data == expected_text(raw), cid
        assert b"\0" not in data
        assert files[uid].stat().st_size == len(data), cid  # right once read, whatever it showed before
    # Reading never marks mail as read.
    assert all(b"\\Seen" not in d["flags"] for d in server_messages(imap, fresh_folder).values())


def test_parts_hold_headers_text_and_attachments_as_email_decodes_them(dovecot, imap, fresh_folder, mount):
    seeded = seed(dovecot, fresh_folder, [*SMALL_IDS, "mime-bad-base64"])
    m = mount()
    directories = {int(p.name.rsplit("_", 1)[1]): p for p in (m.path / ".parts" / fresh_folder).iterdir()}
    assert sorted(directories) == sorted(uid for uid, _ in seeded.values())
    for cid, (uid, raw) in seeded.items():
        directory = directories[uid]
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        wanted = {a.name: a.entity for a in render.attachments(render.entity_from_message(parsed))}
        assert sorted(p.name for p in directory.iterdir()) == sorted(["headers", "text", *wanted]), cid
        assert (directory / "headers").read_bytes() == raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n", cid
        assert (directory / "text").read_bytes() == expected_text(raw), cid
        for name, entity in wanted.items():
            data = (directory / name).read_bytes()
            if entity.inner is not None:  # message/rfc822: the attached message as it was sent
                # (Dovecot's BODY[2] keeps the CRLF before the closing
                # delimiter, which MIME counts as the delimiter's.)
                sent = raw.split(b'filename="original.eml"\r\n\r\n', 1)[1].split(b"\r\n--fwd--")[0]
                assert data in (sent, sent + b"\r\n")
                assert str(email.message_from_bytes(data, policy=email.policy.default)["Subject"]) == "Ursprünglich"
            else:
                assert data == entity.content(), (cid, name)  # email's own get_payload(decode=True)
            assert (directory / name).stat().st_size == len(data)
    nested = directories[seeded["mime-nested"][0]]
    assert sorted(p.name for p in nested.iterdir()) == sorted(
        ["headers", "text", "Zürich Bericht — final.pdf", "Köln.csv", "passwd", "passwd (2)"])
    assert sh("cp", nested / "Köln.csv", m.path.parent / "out.csv").returncode == 0
    assert all(b"\\Seen" not in d["flags"] for d in server_messages(imap, fresh_folder).values())


def test_hidden_views_are_never_listed_or_entered_by_ls_or_find(dovecot, fresh_folder, mount):
    seed(dovecot, fresh_folder, ["mime-body-base64"])
    m = mount()
    assert ".text" not in sh("ls", "-a", m.path).stdout.decode().split()
    assert ".parts" not in sh("ls", "-a", m.path).stdout.decode().split()
    listed = sh("find", m.path).stdout.decode()
    assert "/.text" not in listed and "/.parts" not in listed
    assert fresh_folder in listed  # find did walk the mount
    assert fresh_folder in sh("ls", m.path / ".text").stdout.decode().split()
    assert fresh_folder in sh("ls", m.path / ".parts").stdout.decode().split()
    # Read-only: nothing can be written, removed or renamed there.
    text = next((m.path / ".text" / fresh_folder).iterdir())
    assert sh("rm", "-f", text, check=False).returncode != 0 and text.exists()
    assert sh("sh", "-c", f"echo x > '{m.path}/.text/{fresh_folder}/new.txt'", check=False).returncode != 0


class CountingProxy(ImapProxy):
    """Counts the bytes the server sends (lines and literals)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.lock = threading.Lock()  # guards received
        self.received = 0

    def from_server(self, conn, line, literal):
        with self.lock:
            self.received += len(line) + (len(literal) if literal is not None else 0)
        yield line
        if literal is not None:
            yield literal

    def take(self) -> int:
        with self.lock:
            count, self.received = self.received, 0
        return count


def fifty_mb_message() -> bytes:
    attachment = random.Random(50).randbytes(37 * ONE_MB)
    encoded = base64.encodebytes(attachment).replace(b"\n", b"\r\n")
    return (b"From: Big <big@example.org>\r\nTo: alice@example.org\r\nSubject: Fifty megabytes\r\n"
            b"Date: Fri, 01 Mar 2024 09:00:00 +0100\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="fifty"\r\n\r\n'
            b"--fifty\r\nContent-Type: text/plain\r\n\r\nfiftyword\r\n"
            b"--fifty\r\nContent-Type: application/octet-stream\r\n"
            b'Content-Disposition: attachment; filename="huge.bin"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
            + encoded + b"--fifty--\r\n")


def test_one_part_of_a_huge_message_transfers_under_a_megabyte(dovecot, imap, fresh_folder, mount):
    fifty = fifty_mb_message()
    assert len(fifty) > 50 * 1000 * 1000
    big_uid = dovecot.append(fresh_folder, fifty)
    both = mime_message("mime-big-and-small")
    both_uid = dovecot.append(fresh_folder, both)
    proxy = CountingProxy(dovecot.imaps_port, dovecot.tls_dir, dovecot.ca_file)
    try:
        m = mount("connections=2", url=proxy.url(dovecot.user))
        directories = {int(p.name.rsplit("_", 1)[1]): p for p in (m.path / ".parts" / fresh_folder).iterdir()}
        proxy.take()  # the listing and the login are not what is measured

        headers = (directories[big_uid] / "headers").read_bytes()
        assert headers == fifty.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        assert proxy.take() < ONE_MB

        small = (directories[both_uid] / "small.bin").read_bytes()
        parsed = email.message_from_bytes(both)
        assert small == parsed.get_payload()[2].get_payload(decode=True)
        assert len(small) == 20 * 1024
        assert proxy.take() < ONE_MB

        # The text of a large message comes from its text parts alone.
        assert b"fiftyword" in (m.path / ".text" / fresh_folder / (directories[big_uid].name + ".txt")).read_bytes()
        assert b"bigsmallword" in (directories[both_uid] / "text").read_bytes()
        assert proxy.take() < ONE_MB

        # And the big attachment itself, in 1 MiB ranges, is exact.
        big = (directories[both_uid] / "big.bin").read_bytes()
        assert big == parsed.get_payload()[1].get_payload(decode=True)
    finally:
        proxy.close()
    assert all(b"\\Seen" not in d["flags"] for d in server_messages(imap, fresh_folder).values())
