"""pool.Session over a stub IMAPClient: the state a session keeps about its connection."""

from __future__ import annotations

import imaplib
import logging

import pytest

from imapfs.config import Account
from imapfs.errors import NotFound, ProtocolError
from imapfs.pool import Session
from imapfs.spool import Literal

ACCOUNT = Account(user="alice", host="stub.invalid", port=993, implicit_tls=True)


class StubClient:
    """The few IMAPClient methods Session calls, answering from a dict of folders."""

    def __init__(self, folders: dict[str, int], listed: list[bytes] = ()) -> None:
        self.folders = folders  # name -> UIDVALIDITY
        self.listed = list(listed)  # names as LIST sends them
        self.calls: list[tuple] = []
        self.folder_encode = True

    def capabilities(self) -> tuple[bytes, ...]:
        return (b"IMAP4REV1", b"UNSELECT")

    def list_folders(self):
        # imapclient decodes names itself unless told not to, and fails the
        # whole LIST on one name that is not valid modified UTF-7.
        assert not self.folder_encode, "imapfs decodes folder names itself"
        return [((b"\\HasNoChildren",), b"/", name) for name in self.listed]

    def select_folder(self, folder, readonly=False):
        assert not self.folder_encode and isinstance(folder, str) and folder.isascii()
        self.calls.append(("SELECT", folder, readonly))
        if folder not in self.folders:
            # What imaplib raises for Dovecot's tagged NO.
            raise imaplib.IMAP4.error("select failed: Mailbox doesn't exist: " + str(folder))
        return {b"UIDVALIDITY": self.folders[folder], b"EXISTS": 1, b"UIDNEXT": 2}


def test_a_failed_select_leaves_no_folder_selected():
    client = StubClient({"A": 7})
    session = Session(client, ACCOUNT)
    session.select("A")
    with pytest.raises(NotFound):
        session.select("B")  # deleted elsewhere
    # The server deselected A before it tried B: A must be selected again
    # before the next UID command, not taken as still selected.
    assert session.selected is None and session.status is None
    assert session.ensure_selected("A").uidvalidity == 7
    assert [call[1] for call in client.calls] == ["A", "B", "A"]
    assert not session.broken


def test_folders_are_listed_whatever_their_names_and_named_back_exactly(caplog):
    listed = [b"INBOX", b"Donn&AOk-es", b"bad&Zz-name", b"nul&AAA-x", b"a//b", b"trailing/", "café".encode()]
    client = StubClient({"bad&Zz-name": 3, "Donn&AOk-es": 4}, listed)
    session = Session(client, ACCOUNT)
    caplog.set_level(logging.DEBUG, logger="imapfs.pool")
    for _ in range(3):  # LIST runs every few seconds
        folders = session.list_folders()
    assert [f.name for f in folders] == ["INBOX", "Données", "bad\udc26Zz-name", "nul\x00x", "a//b", "trailing/"]
    assert client.folder_encode  # left as imapclient expects it
    skipped = [r for r in caplog.records if "café".encode() in r.getMessage().encode("utf-8", "replace")
               or "caf\\xc3" in r.getMessage()]
    assert [r.levelno for r in skipped] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    # Selected by the very bytes LIST gave, not by a re-encoding of them.
    assert session.select(folders[2].name).uidvalidity == 3
    assert session.select("Données").uidvalidity == 4
    assert [call[1] for call in client.calls] == ["bad&Zz-name", "Donn&AOk-es"]


class Stream:
    """imaplib's side of a connection: read(size) serves a literal of `size` bytes."""

    def __init__(self) -> None:
        self.largest_read = 0
        self.served = 0

    def read(self, size: int) -> bytes:
        self.largest_read = max(self.largest_read, size)
        self.served += size
        return b"x" * size


def test_a_literal_over_the_limit_is_read_in_pieces_and_dropped(caplog):
    client = StubClient({})
    client._imap = stream = Stream()
    session = Session(client, ACCOUNT)
    assert client._imap.read(1000) == b"x" * 1000  # no limit: as imaplib would
    session.literal_limit = 64 * 1024
    caplog.set_level(logging.WARNING, logger="imapfs.pool")
    dropped = client._imap.read(500_000_000)
    assert bytes(dropped) == b"" and dropped[:10] == b"" and b"Subject" not in dropped
    assert len(dropped) == 500_000_000  # what both FETCH parsers check against the announced size
    assert stream.served == 1000 + 500_000_000  # the connection stays in step
    assert stream.largest_read <= 1 << 16  # never held whole
    assert session.literals_dropped == 1
    assert len([r for r in caplog.records if "500000000-byte literal" in r.getMessage()]) == 1
    assert client._imap.read(100) == b"x" * 100


class CourierLikeClient(StubClient):
    """No UNSELECT, as Courier: a folder is left with CLOSE, which on one
    selected read-write expunges every message marked \\Deleted there."""

    def __init__(self, folders: dict[str, int]) -> None:
        super().__init__(folders)
        self.read_write: str | None = None
        self.expunged_by_close: list[str] = []

    def capabilities(self) -> tuple[bytes, ...]:
        return (b"IMAP4REV1", b"UIDPLUS")

    def select_folder(self, folder, readonly=False):
        self.read_write = None
        answer = super().select_folder(folder, readonly)
        self.read_write = None if readonly else folder
        return answer

    def close_folder(self):
        self.calls.append(("CLOSE",))
        if self.read_write is not None:
            self.expunged_by_close.append(self.read_write)
        self.read_write = None

    def rename_folder(self, old, new):
        self.calls.append(("RENAME", old, new))


def test_leaving_a_folder_selected_read_write_without_unselect_expunges_nothing():
    client = CourierLikeClient({"A": 7})
    session = Session(client, ACCOUNT)
    session.select("A", readonly=False)
    session.unselect()
    assert client.calls == [("SELECT", "A", False), ("SELECT", "A", True), ("CLOSE",)]
    assert client.expunged_by_close == []
    assert session.selected is None and session.status is None


def test_leaving_a_folder_deleted_meanwhile_needs_no_close():
    client = CourierLikeClient({"A": 7})
    session = Session(client, ACCOUNT)
    session.select("A", readonly=False)
    del client.folders["A"]
    session.unselect()  # the failed EXAMINE left nothing selected: a CLOSE would be BAD
    assert client.calls[-1] == ("SELECT", "A", True)
    assert session.selected is None and not session.broken


def test_a_folder_is_renamed_only_once_neither_it_nor_one_below_it_is_open():
    client = CourierLikeClient({"A": 7, "A.B": 8, "C": 9})
    session = Session(client, ACCOUNT)
    session.select("C")
    session.rename_folder("A", "Z")  # another folder open: left open
    assert session.selected == "C" and client.calls[-1] == ("RENAME", "A", "Z")
    session.select("A.B")
    session.rename_folder("A", "Y")  # Courier: "Can't RENAME the currently-open folder"
    assert client.calls[-2:] == [("CLOSE",), ("RENAME", "A", "Y")]
    assert session.selected is None


def test_an_append_refused_into_the_folder_examined_is_sent_again_after_leaving_it(monkeypatch):
    client = CourierLikeClient({"A": 7, "B": 8})
    session = Session(client, ACCOUNT)
    sent: list[tuple[str, str | None]] = []

    def append(folder, literal, flags, when):
        sent.append((folder, session.selected))
        if session.selected == folder and session.selected_readonly:
            raise ProtocolError("append failed: Current box is selected READ-ONLY.")
        return (7, 1)
    monkeypatch.setattr(session, "_append", append)
    session.select("A")
    assert session.append("A", Literal.from_bytes(b"Subject: x\r\n\r\n"), (), None) == (7, 1)
    assert sent == [("A", "A"), ("A", None)] and client.calls[-1] == ("CLOSE",)
    # Refused for another reason, or while another folder is open: not sent again.
    session.select("B")
    monkeypatch.setattr(session, "_append", lambda *a: (_ for _ in ()).throw(ProtocolError("NO [TRYCREATE]")))
    with pytest.raises(ProtocolError):
        session.append("A", Literal.from_bytes(b"Subject: x\r\n\r\n"), (), None)
    assert session.selected == "B"
