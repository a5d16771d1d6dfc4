"""MailStore writes against the fake server, including servers without MOVE/UIDPLUS."""

import pytest

from imapfs.config import Options
from imapfs.errors import NotEmpty, NotFound, NotSupported, ServerUnavailable
from imapfs.store import MailStore
from tests.unit.fakes import FakePool, FakeServer


def make(capabilities=("IMAP4REV1", "MOVE", "UIDPLUS", "CONDSTORE", "UNSELECT"), **options):
    server = FakeServer(capabilities)
    server.create("Trash")
    server.create("Archive")
    return server, MailStore(FakePool(server), Options(**options))


def uid_in(store, folder):
    listing = store.listing(folder)
    return listing.uidvalidity, next(iter(listing.messages))


def test_move_uses_uid_move_when_offered():
    server, store = make()
    server.add("INBOX", b"Subject: a\r\n\r\n")
    validity, uid = uid_in(store, "INBOX")
    store.move("INBOX", validity, uid, "Archive")
    assert [c[0] for c in server.commands if c[0].startswith("UID M") or c[0].startswith("UID C")] == ["UID MOVE"]
    assert not server.mailboxes["INBOX"].messages and len(server.mailboxes["Archive"].messages) == 1


def test_move_falls_back_to_copy_store_uid_expunge_of_that_uid_only():
    server, store = make(capabilities=("IMAP4REV1", "UIDPLUS"))
    server.add("INBOX", b"Subject: a\r\n\r\n")
    other = server.add("INBOX", b"Subject: b\r\n\r\n", flags=("\\Deleted",))
    listing = store.listing("INBOX")
    store.move("INBOX", listing.uidvalidity, 1, "Archive")
    verbs = [c[0] for c in server.commands if c[0] in {"UID COPY", "UID STORE +FLAGS", "UID EXPUNGE", "UID MOVE"}]
    assert verbs == ["UID COPY", "UID STORE +FLAGS", "UID EXPUNGE"]
    assert ("UID EXPUNGE", [1]) in server.commands
    assert list(server.mailboxes["INBOX"].messages) == [other]  # the other \Deleted message survives
    assert len(server.mailboxes["Archive"].messages) == 1


def test_move_failing_after_copy_leaves_the_message_in_both_and_reports():
    server, store = make(capabilities=("IMAP4REV1", "UIDPLUS"))
    server.add("INBOX", b"Subject: a\r\n\r\n")
    listing = store.listing("INBOX")
    original_add_flags = type(server.session()).add_flags

    def dropping(self, uids, flags):
        raise ServerUnavailable("connection dropped")

    type(server.session()).add_flags = dropping
    try:
        with pytest.raises(ServerUnavailable):
            store.move("INBOX", listing.uidvalidity, 1, "Archive")
    finally:
        type(server.session()).add_flags = original_add_flags
    assert len(server.mailboxes["INBOX"].messages) == 1
    assert len(server.mailboxes["Archive"].messages) == 1
    assert sum(1 for c in server.commands if c[0] == "UID COPY") == 1  # a write is never retried


def test_without_move_or_uidplus_nothing_is_moved():
    server, store = make(capabilities=("IMAP4REV1",))
    server.add("INBOX", b"Subject: a\r\n\r\n")
    validity, uid = uid_in(store, "INBOX")
    with pytest.raises(NotSupported):
        store.move("INBOX", validity, uid, "Archive")
    with pytest.raises(NotSupported):
        store.delete("Trash", validity, uid)
    assert len(server.mailboxes["INBOX"].messages) == 1


def test_delete_goes_to_trash_and_expunges_in_trash():
    server, store = make()
    server.add("INBOX", b"Subject: a\r\n\r\n")
    validity, uid = uid_in(store, "INBOX")
    store.delete("INBOX", validity, uid)
    assert len(server.mailboxes["Trash"].messages) == 1
    validity, uid = uid_in(store, "Trash")
    store.delete("Trash", validity, uid)
    assert not server.mailboxes["Trash"].messages


def test_delete_expunge_option_skips_trash():
    server, store = make(delete="expunge")
    server.add("INBOX", b"Subject: a\r\n\r\n")
    validity, uid = uid_in(store, "INBOX")
    store.delete("INBOX", validity, uid)
    assert not server.mailboxes["INBOX"].messages and not server.mailboxes["Trash"].messages


def test_moving_an_expunged_message_is_not_found():
    server, store = make()
    server.add("INBOX", b"Subject: a\r\n\r\n")
    validity, uid = uid_in(store, "INBOX")
    server.expunge("INBOX", uid)
    with pytest.raises(NotFound):
        store.move("INBOX", validity, uid, "Archive")


def test_append_without_message_id_is_not_repeated_after_it_was_sent():
    server, store = make()
    server.fail_after["APPEND"] = ServerUnavailable("dropped")
    with pytest.raises(ServerUnavailable):
        store.append("INBOX", b"Subject: x\r\n\r\n", (), None)
    assert sum(1 for c in server.commands if c[0] == "APPEND") == 1
    assert len(server.mailboxes["INBOX"].messages) == 1


WITH_ID = b"Subject: x\r\nMessage-ID: <once@example.org>\r\n\r\nbody\r\n"


def test_append_whose_reply_was_lost_is_found_not_repeated():
    server, store = make()
    server.add("INBOX", WITH_ID)  # an older copy with the same Message-ID must not count
    server.fail_after["APPEND"] = ServerUnavailable("reply lost")
    _, uid = store.append("INBOX", WITH_ID, (), None)
    assert sum(1 for c in server.commands if c[0] == "APPEND") == 1
    assert uid == 2 and len(server.mailboxes["INBOX"].messages) == 2


def test_append_lost_before_arriving_is_sent_once_more():
    server, store = make()
    original_status = type(server.session()).status_of

    def status_then_fail_next(self, folder):  # STATUS succeeds; the following APPEND is lost
        result = original_status(self, folder)
        server.fail_next.append(ServerUnavailable("dropped before the server saw it"))
        return result

    type(server.session()).status_of = status_then_fail_next
    try:
        _, uid = store.append("INBOX", WITH_ID, (), None)
    finally:
        type(server.session()).status_of = original_status
    assert sum(1 for c in server.commands if c[0] == "APPEND") == 2
    assert list(server.mailboxes["INBOX"].messages) == [uid]


def test_append_reports_uidvalidity_and_uid_without_extra_round_trips():
    server, store = make()
    listing = store.listing("INBOX")
    server.commands.clear()
    assert store.append("INBOX", WITH_ID, (), None) == (listing.uidvalidity, 1)
    assert [c[0] for c in server.commands] == ["APPEND"]  # UIDNEXT came from the cached listing


def test_append_into_a_silently_dead_connection_is_checked_first_then_sent_once():
    server, store = make()
    store.listing("INBOX")
    with store.pool.session() as session:
        session.last_used -= 3600  # idle for an hour: the pool probes it before a write
    server.fail_next.append(ServerUnavailable("dropped while idle"))
    _, uid = store.append("INBOX", b"Subject: x\r\n\r\n", (), None)
    assert [c[0] for c in server.commands[-2:]] == ["NOOP", "APPEND"] or \
        [c[0] for c in server.commands if c[0] in {"NOOP", "APPEND"}] == ["NOOP", "APPEND"]
    assert sum(1 for c in server.commands if c[0] == "APPEND") == 1
    assert uid in server.mailboxes["INBOX"].messages


def test_append_shows_in_the_next_listing_at_once():
    server, store = make(listing_ttl=3600)
    store.listing("INBOX")
    _, uid = store.append("INBOX", b"Subject: fresh\r\n\r\n", ("\\Seen",), None)
    listing = store.listing("INBOX")
    assert listing.messages[uid].flags == ("\\Seen",)


def test_delete_folder_refuses_when_messages_remain():
    server, store = make()
    server.add("Archive", b"Subject: a\r\n\r\n")
    with pytest.raises(NotEmpty):
        store.delete_folder("Archive")
    assert "Archive" in server.mailboxes
    server.expunge("Archive", 1)
    store.delete_folder("Archive")
    assert "Archive" not in server.mailboxes


def test_set_flags_replaces_flags():
    server, store = make()
    server.add("INBOX", b"Subject: a\r\n\r\n", flags=("\\Answered",))
    validity, uid = uid_in(store, "INBOX")
    store.set_flags("INBOX", validity, uid, ("\\Seen", "\\Flagged"))
    assert server.mailboxes["INBOX"].messages[uid].flags == {"\\Seen", "\\Flagged"}
    assert set(store.listing("INBOX").messages[uid].flags) == {"\\Seen", "\\Flagged"}
