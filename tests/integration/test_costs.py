"""Costs that follow the work (#13), counted in the commands imapfs sends.

A relay in front of the test Dovecot (tests/support/proxy.py) records every
line the mount sends, so each test can say what crossed the wire, not only
what the mount showed; what it showed is checked against a second IMAP
connection too.
"""

from __future__ import annotations

import os
import re
import threading

import pytest

from imapfs import names
from tests.integration.helpers import message, sh, wait_for
from tests.support.proxy import ImapProxy


class CommandLog(ImapProxy):
    """Records the command lines clients send (tag stripped, upper-cased verb kept as sent)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.lock = threading.Lock()  # guards lines
        self.lines: list[str] = []

    def from_client(self, conn, line):
        with self.lock:
            self.lines.append(line.decode("utf-8", "replace").rstrip("\r\n").split(" ", 1)[-1])
        return line

    def take(self) -> list[str]:
        with self.lock:
            taken, self.lines = self.lines, []
        return taken


@pytest.fixture
def command_log(dovecot):
    proxy = CommandLog(dovecot.imaps_port, dovecot.tls_dir, dovecot.ca_file)
    yield proxy
    proxy.close()


def _name_of(imap, folder: str, uid: int) -> tuple[str, int, float]:
    """The file name, size and mtime imapfs gives a message, from a second connection's view of it."""
    imap.select_folder(folder, readonly=True)
    data = imap.fetch([uid], ["RFC822.SIZE", "INTERNALDATE", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])[uid]
    header = next(v for k, v in data.items() if k.startswith(b"BODY[HEADER"))
    subject = names.decode_header_text(names.header_value(header, "Subject") or b"")
    when = data[b"INTERNALDATE"].timestamp()
    return names.message_filename(uid, when, subject), data[b"RFC822.SIZE"], when


def test_stat_of_one_file_right_after_mounting_fetches_that_uid_only(dovecot, imap, fresh_folder, mount,
                                                                    command_log):
    for number in range(300):
        dovecot.append(fresh_folder, message(f"one of many {number}", "x" * number))
    imap.select_folder(fresh_folder, readonly=True)
    uids = sorted(imap.search("ALL"))
    wanted = uids[137]
    name, size, when = _name_of(imap, fresh_folder, wanted)
    m = mount("cache_dir=none", url=command_log.url(dovecot.user))
    command_log.take()  # logins, the folder list: not this test's business
    shown = os.stat(m.path / fresh_folder / name)
    assert shown.st_size == size and shown.st_mtime == pytest.approx(when, abs=1)
    sent = command_log.take()
    fetches = [line for line in sent if line.upper().startswith("UID FETCH")]
    assert fetches and all(re.match(rf"UID FETCH {wanted} ", line, re.IGNORECASE) for line in fetches), sent
    assert not [line for line in sent if "SEARCH" in line.upper()], sent  # no listing was made
    # A name the folder does not hold (another UID's, or a wrong subject) is ENOENT.
    other, _, _ = _name_of(imap, fresh_folder, uids[0])
    for wrong in (other.replace(f"_{uids[0]}.eml", f"_{wanted}.eml"), f"nothing_{uids[-1] + 50}.eml"):
        assert sh("stat", m.path / fresh_folder / wrong, check=False).returncode != 0
    # And the folder, listed afterwards, shows the same file as the lookup did.
    listed = os.stat(m.path / fresh_folder / name)
    assert (listed.st_size, listed.st_mtime) == (shown.st_size, shown.st_mtime)
    assert name in os.listdir(m.path / fresh_folder)


def test_find_over_many_folders_lists_them_ahead_and_shows_every_message(dovecot, imap, fresh_folder, mount,
                                                                        command_log):
    """find walks 30 small folders: after the second, the rest are listed in the
    background, several folders per command batch (EXAMINE + UID FETCH 1:* each,
    sent together); what find prints is every message, as the server has them."""
    children = [f"{fresh_folder}/f{number:02d}" for number in range(30)]
    for child in children:
        dovecot.create_folder(child)
        for number in range(3):
            dovecot.append(child, message(f"{child} {number}"))
    m = mount("cache_dir=none", url=command_log.url(dovecot.user))
    found = sh("find", m.path / fresh_folder, "-type", "f").stdout.decode().split("\n")
    shown: dict[str, set[int]] = {}
    for line in filter(None, found):
        path = os.path.relpath(line, m.path)
        folder, name = path.rsplit("/", 1)
        shown.setdefault(folder, set()).add(names.uid_from_filename(name))
    expected = {}
    for child in children:
        imap.select_folder(child, readonly=True)
        expected[child] = set(imap.search("ALL"))
    assert shown == expected
    sent = command_log.take()
    whole = [line for line in sent if re.match(r"UID FETCH 1:\* ", line, re.IGNORECASE)]
    assert len(whole) >= 20, sent  # most folders listed ahead, whole, in batches
    examined = [line for line in sent if line.upper().startswith("EXAMINE")]
    assert len(examined) <= 2 * len(children), examined  # nobody listed twice over


class HeldExamine(CommandLog):
    """A CommandLog that holds the first EXAMINE of one folder until released:
    a server slow to answer the resync a remount starts."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.folder: str | None = None
        self.held = threading.Event()  # set once an EXAMINE is being held
        self.release = threading.Event()

    def from_client(self, conn, line):
        line = super().from_client(conn, line)
        text = line.decode("utf-8", "replace").upper()
        if self.folder and not self.held.is_set() and f"EXAMINE {self.folder.upper()}" in text.replace('"', ""):
            self.held.set()
            self.release.wait(60)
        return line


@pytest.fixture
def held_examine(dovecot):
    proxy = HeldExamine(dovecot.imaps_port, dovecot.tls_dir, dovecot.ca_file)
    yield proxy
    proxy.release.set()
    proxy.close()


def test_remount_shows_the_cached_listing_at_once_and_resyncs_only_changes_in_the_background(
        dovecot, imap, fresh_folder, mount, held_examine, tmp_path):
    for number in range(40):
        dovecot.append(fresh_folder, message(f"kept {number}", "body " * number))
    first = mount(url=held_examine.url(dovecot.user))
    before = sorted(path.name for path in (first.path / fresh_folder).iterdir())
    assert len(before) == 40
    assert first.unmount() == 0

    # While unmounted: one expunged, one flagged, one new.
    imap.select_folder(fresh_folder)
    uids = sorted(imap.search("ALL"))
    imap.delete_messages([uids[5]])
    imap.expunge()
    imap.add_flags([uids[6]], [b"\\Flagged"])
    dovecot.append(fresh_folder, message("new while unmounted"))
    imap.select_folder(fresh_folder, readonly=True)
    truth = sorted(imap.search("ALL"))

    held_examine.folder = fresh_folder
    held_examine.take()
    second = mount(url=held_examine.url(dovecot.user))
    folder = second.path / fresh_folder
    # Nothing asked for: the mount resyncs the folder it has on disk by itself.
    assert held_examine.held.wait(20), "no resync of the cached folder was started at mount"
    # While that resync waits on the server, ls shows the previous mount's listing.
    shown = sh("ls", folder, timeout=20).stdout.decode().split()
    assert shown == before
    held_examine.release.set()

    def listed_uids() -> list[int]:
        return sorted(names.uid_from_filename(name) or 0 for name in os.listdir(folder))

    assert wait_for(lambda: listed_uids() == truth, timeout=20), listed_uids()
    gone = next(name for name in before if names.uid_from_filename(name) == uids[5])
    assert sh("cat", folder / gone, check=False).returncode != 0  # the kernel forgot it
    flagged = next(name for name in os.listdir(folder) if names.uid_from_filename(name) == uids[6])
    assert "\\Flagged" in sh("getfattr", "-n", "user.imap.flags", "--only-values", folder / flagged).stdout.decode()
    sent = held_examine.take()
    metadata = [line for line in sent if line.upper().startswith("UID FETCH") and "RFC822.SIZE" in line.upper()]
    # Only the new message's metadata crossed the wire, not the folder's.
    assert metadata and all(re.match(rf"UID FETCH {truth[-1]} ", line, re.IGNORECASE) for line in metadata), sent
