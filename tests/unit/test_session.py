"""pool.Session over a stub IMAPClient: the state a session keeps about its connection."""

from __future__ import annotations

import imaplib

import pytest

from imapfs.config import Account
from imapfs.errors import NotFound
from imapfs.pool import Session

ACCOUNT = Account(user="alice", host="stub.invalid", port=993, implicit_tls=True)


class StubClient:
    """The few IMAPClient methods Session calls, answering from a dict of folders."""

    def __init__(self, folders: dict[str, int]) -> None:
        self.folders = folders  # name -> UIDVALIDITY
        self.calls: list[tuple] = []
        self.folder_encode = True

    def capabilities(self) -> tuple[bytes, ...]:
        return (b"IMAP4REV1", b"UNSELECT")

    def select_folder(self, folder, readonly=False):
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
