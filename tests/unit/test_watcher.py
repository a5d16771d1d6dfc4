"""The watcher's poll: which folders it reports as changed, against the fake server."""

from imapfs.config import Options
from imapfs.store import MailStore
from imapfs.watcher import Watcher
from tests.unit.fakes import FakePool, FakeServer


def make(capabilities=None):
    server = FakeServer(**({"capabilities": capabilities} if capabilities else {}))
    server.create("Archive")
    server.add("INBOX", b"Subject: a\r\n\r\n")
    server.add("Archive", b"Subject: b\r\n\r\n")
    pool = FakePool(server)
    store = MailStore(pool, Options())
    store.folders()
    store.listing("INBOX")
    store.listing("Archive")
    changed: list[str] = []
    folder_lists: list[bool] = []

    def folder_changed(folder: str) -> None:  # as ImapFS.folder_changed: note it, resync
        changed.append(folder)
        store.changed_elsewhere(folder)
        store.listing(folder)

    watcher = Watcher(pool.account, "pw", Options(), pool, listings=store.cached_listings,
                      folders=store.cached_folders, folder_changed=folder_changed,
                      folders_changed=lambda: folder_lists.append(True))
    return server, watcher, changed, folder_lists


def test_quiet_server_reports_nothing():
    _server, watcher, changed, folder_lists = make()
    watcher.poll_once()
    assert changed == [] and folder_lists == []


def test_new_mail_expunge_and_flags_are_reported_per_folder():
    server, watcher, changed, _ = make()
    server.add("INBOX", b"Subject: new\r\n\r\n")
    watcher.poll_once()
    assert changed == ["INBOX"]
    changed.clear()
    server.set_flags("Archive", 1, {"\\Seen"})  # only HIGHESTMODSEQ moves
    watcher.poll_once()
    assert changed == ["Archive"]


def test_with_list_status_a_poll_is_one_command_however_many_folders():
    server, watcher, changed, _ = make(capabilities=("IMAP4REV1", "MOVE", "UIDPLUS", "CONDSTORE", "LIST-STATUS"))
    server.commands.clear()
    watcher.poll_once()
    assert server.commands == [("LIST", "RETURN STATUS")] and changed == []
    server.set_flags("Archive", 1, {"\\Flagged"})
    server.add("INBOX", b"Subject: new\r\n\r\n")
    watcher.poll_once()
    assert sorted(changed) == ["Archive", "INBOX"]


def test_recreated_and_created_folders_are_reported():
    server, watcher, changed, folder_lists = make()
    del server.mailboxes["Archive"]
    server.create("Archive")  # same name, new UIDVALIDITY
    server.create("Projects")
    watcher.poll_once()
    assert "Archive" in changed
    assert folder_lists == [True]


def test_changes_made_while_idle_was_away_are_reported_when_it_selects_again():
    # IDLE reports only what happens while it listens: after a reconnect, or
    # on moving back to a folder, what changed meanwhile must still be seen.
    server, watcher, changed, _ = make()
    watcher.select_and_compare(server.session(), "INBOX")
    assert changed == []
    del server.mailboxes["Archive"]
    server.create("Archive")  # recreated while unwatched: UIDVALIDITY moves
    server.add("Archive", b"Subject: b\r\n\r\n")  # same count, same UIDs
    watcher.select_and_compare(server.session(), "Archive")
    assert changed == ["Archive"]
    server.add("INBOX", b"Subject: new\r\n\r\n")
    watcher.select_and_compare(server.session(), "INBOX")
    assert changed == ["Archive", "INBOX"]
