"""MailStore writes against the fake server, including servers without MOVE/UIDPLUS."""

import pytest

from imapfs.config import Options
from imapfs.errors import (
    AlreadyExists,
    NotEmpty,
    NotFound,
    NotPermitted,
    ProtocolError,
    Refused,
    ServerUnavailable,
    WriteUncertain,
)
from imapfs.pool import Namespaces
from imapfs.spool import Literal, Spool
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


def test_without_move_or_uidplus_a_move_copies_then_expunges_when_nothing_else_is_deleted():
    server, store = make(capabilities=("IMAP4REV1",))
    server.add("INBOX", b"Subject: a\r\n\r\n")
    server.add("INBOX", b"Subject: b\r\n\r\n")
    validity, uid = uid_in(store, "INBOX")
    before = len(server.commands)
    store.move("INBOX", validity, uid, "Archive")
    verbs = [c[0] for c in server.commands[before:] if c[0] in {"UID COPY", "UID STORE +FLAGS", "UID SEARCH",
                                                                  "EXPUNGE"}]
    # Checked before the COPY, and again (with ours marked) right before the EXPUNGE.
    assert verbs == ["UID SEARCH", "UID COPY", "UID STORE +FLAGS", "UID SEARCH", "EXPUNGE"]
    assert uid not in server.mailboxes["INBOX"].messages and len(server.mailboxes["INBOX"].messages) == 1
    assert len(server.mailboxes["Archive"].messages) == 1


def test_without_move_or_uidplus_another_deleted_message_refuses_the_move_before_the_copy():
    server, store = make(capabilities=("IMAP4REV1",))
    server.add("INBOX", b"Subject: a\r\n\r\n")
    other = server.add("INBOX", b"Subject: b\r\n\r\n", flags=("\\Deleted",))
    listing = store.listing("INBOX")
    with pytest.raises(Refused, match="other message"):
        store.move("INBOX", listing.uidvalidity, 1, "Archive")
    assert sorted(server.mailboxes["INBOX"].messages) == [1, other]
    assert "\\Deleted" not in server.mailboxes["INBOX"].messages[1].flags
    assert not server.mailboxes["Archive"].messages
    assert not any(c[0] in {"UID COPY", "EXPUNGE"} for c in server.commands)


def test_without_uidplus_a_message_deleted_elsewhere_after_the_copy_leaves_both_and_says_so():
    server, store = make(capabilities=("IMAP4REV1",))
    server.add("INBOX", b"Subject: a\r\n\r\n")
    other = server.add("INBOX", b"Subject: b\r\n\r\n")
    listing = store.listing("INBOX")

    before = len(server.commands)

    def another_client_deletes(folder):
        if any(c[0] == "UID COPY" for c in server.commands[before:]):
            server.mailboxes["INBOX"].messages[other].flags.add("\\Deleted")

    server.before_search = another_client_deletes
    with pytest.raises(Refused, match="both folders"):
        store.move("INBOX", listing.uidvalidity, 1, "Archive")
    assert sorted(server.mailboxes["INBOX"].messages) == [1, other]  # the other's EXPUNGE never came
    assert server.mailboxes["INBOX"].messages[1].flags == set()  # ours got its flags back
    assert len(server.mailboxes["Archive"].messages) == 1
    assert not any(c[0] == "EXPUNGE" for c in server.commands[before:])


def test_without_uidplus_rm_in_trash_expunges_alone_or_refuses():
    server, store = make(capabilities=("IMAP4REV1",))
    server.add("Trash", b"Subject: a\r\n\r\n")
    server.add("Trash", b"Subject: b\r\n\r\n", flags=("\\Deleted", "\\Seen"))
    listing = store.listing("Trash")
    with pytest.raises(Refused, match="UID 2"):
        store.delete("Trash", listing.uidvalidity, 1)
    assert sorted(server.mailboxes["Trash"].messages) == [1, 2]
    store.delete("Trash", listing.uidvalidity, 2)  # the one already marked is the only one: it may go
    assert sorted(server.mailboxes["Trash"].messages) == [1]
    store.delete("Trash", listing.uidvalidity, 1)
    assert not server.mailboxes["Trash"].messages


def test_create_outside_a_prefixed_personal_namespace_is_refused_naming_what_works():
    server, store = make()
    server.namespaces = Namespaces(personal=(("INBOX.", "."),), other=(("#Users.", "."),), shared=())
    with pytest.raises(NotPermitted, match="'INBOX.NewFolder'"):
        store.create_folder("NewFolder")
    assert not any(c[0] == "CREATE" for c in server.commands)
    store.create_folder("INBOX.NewFolder")
    assert "INBOX.NewFolder" in server.mailboxes


def test_a_create_the_server_refuses_is_not_permitted_with_its_words():
    server, store = make()
    server.namespaces = Namespaces(personal=(("INBOX.", "."), ("", "/")), other=(), shared=())
    store.create_folder("Top")  # an empty personal prefix too: anything goes, the server decides
    server.fail_next = [ProtocolError("[NOPERM] Permission denied")]
    with pytest.raises(NotPermitted, match=r"refused to create folder 'Other'.*Permission denied"):
        store.create_folder("Other")
    with pytest.raises(AlreadyExists):
        store.create_folder("Top")


def test_a_create_the_server_refuses_at_a_shared_top_level_names_what_works():
    """Cyrus with Debian's defaults: personal "INBOX.", shared "" (the top
    level is shared folders, made by admins): the server refuses, and the
    message says where the user's own folders go."""
    server, store = make()
    server.namespaces = Namespaces(personal=(("INBOX.", "."),), other=(("user.", "."),), shared=(("", "."),))
    server.fail_next = [ProtocolError("Permission denied")]
    with pytest.raises(NotPermitted, match=r"'NewFolder': Permission denied.*NAMESPACE.*'INBOX.NewFolder'"):
        store.create_folder("NewFolder")
    assert ("CREATE", "NewFolder") in server.commands
    server.fail_next = [ProtocolError("Invalid mailbox name")]
    with pytest.raises(NotPermitted, match=r"Invalid mailbox name$"):  # inside INBOX: no hint
        store.create_folder("INBOX.a/b")


def test_rm_without_a_trash_creates_one_in_a_prefixed_personal_namespace():
    server = FakeServer(("IMAP4REV1", "MOVE", "UIDPLUS"))
    server.namespaces = Namespaces(personal=(("INBOX.", "."),), other=(), shared=(("", "."),))
    store = MailStore(FakePool(server), Options())
    server.add("INBOX", b"Subject: a\r\n\r\n")
    validity, uid = uid_in(store, "INBOX")
    store.delete("INBOX", validity, uid)
    assert [c for c in server.commands if c[0] == "CREATE"] == [("CREATE", "INBOX.Trash")]
    assert len(server.mailboxes["INBOX.Trash"].messages) == 1 and not server.mailboxes["INBOX"].messages


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


WITH_ID = b"Subject: x\r\nMessage-ID: <once@example.org>\r\n\r\nbody\r\n"


def appends(server):
    return sum(1 for c in server.commands if c[0] == "APPEND")


def test_append_failing_before_it_was_sent_whole_is_sent_again_once():
    server, store = make()
    server.fail_before["APPEND"] = ServerUnavailable("dropped before the command was complete")
    _, uid = store.append("INBOX", Literal.from_bytes(WITH_ID), (), None)
    assert appends(server) == 2
    assert list(server.mailboxes["INBOX"].messages) == [uid]


def test_append_whose_reply_was_lost_is_found_by_content_not_repeated():
    server, store = make()
    # An older, different message with the same Message-ID must not be taken for it.
    older = server.add("INBOX", WITH_ID.replace(b"body", b"another body"))
    server.fail_after["APPEND"] = WriteUncertain("reply lost")
    _, uid = store.append("INBOX", Literal.from_bytes(WITH_ID), (), None)
    assert appends(server) == 1
    assert uid != older and server.mailboxes["INBOX"].messages[uid].raw == WITH_ID
    assert len(server.mailboxes["INBOX"].messages) == 2


def test_append_lost_and_not_stored_fails_and_is_never_sent_again():
    server, store = make(retry_for=0.6)
    server.add("INBOX", WITH_ID.replace(b"body", b"BODY"))  # same size and Message-ID, other bytes
    server.unstored_after["APPEND"] = WriteUncertain("reply lost")
    with pytest.raises(WriteUncertain, match="not sent again"):
        store.append("INBOX", Literal.from_bytes(WITH_ID), (), None)
    assert appends(server) == 1
    assert all(m.raw != WITH_ID for m in server.mailboxes["INBOX"].messages.values())
    verbs = [c[0] for c in server.commands]
    looks_after = verbs[verbs.index("APPEND"):].count("UID SEARCH")
    assert looks_after >= 2  # looked more than once: a slow server may still store it


def test_append_stored_late_by_a_slow_server_is_found_not_repeated():
    server, store = make(retry_for=5)
    server.unstored_after["APPEND"] = WriteUncertain("timed out")
    server.store_on_search = 3  # stored only while imapfs is already looking for it
    _, uid = store.append("INBOX", Literal.from_bytes(WITH_ID), (), None)
    assert appends(server) == 1
    assert [m.raw for m in server.mailboxes["INBOX"].messages.values()] == [WITH_ID]


def test_append_is_streamed_in_chunks_with_line_endings_made_crlf():
    server, store = make()
    raw = b"Subject: big\n\n" + b"line\n" * 500_000  # 2.5 MB with LF endings
    with Spool(in_memory=1 << 16) as spool:
        spool.write(0, raw)
        literal = spool.literal()
        store.append("INBOX", literal, (), None)
    assert server.append_chunks[-1] > 2  # never one bytes object
    stored = next(iter(server.mailboxes["INBOX"].messages.values())).raw
    assert stored == raw.replace(b"\n", b"\r\n") and literal.size == len(stored)


def test_append_reports_uidvalidity_and_uid_without_extra_round_trips():
    server, store = make()
    listing = store.listing("INBOX")
    server.commands.clear()
    assert store.append("INBOX", Literal.from_bytes(WITH_ID), (), None) == (listing.uidvalidity, 1)
    # The look for a copy already there (none of that size: nothing fetched), then the APPEND.
    assert [c[0] for c in server.commands] == ["EXAMINE", "UID SEARCH", "APPEND"]
    server.commands.clear()
    store.append("INBOX", Literal.from_bytes(WITH_ID.replace(b"x", b"y")), (), None, unless_present=False)
    assert [c[0] for c in server.commands] == ["APPEND"]


def test_append_shows_in_the_next_listing_at_once():
    server, store = make(listing_ttl=3600)
    store.listing("INBOX")
    _, uid = store.append("INBOX", Literal.from_bytes(b"Subject: fresh\r\n\r\n"), ("\\Seen",), None)
    listing = store.listing("INBOX")
    assert listing.messages[uid].flags == ("\\Seen",)


def test_rm_never_expunges_in_trash_what_the_same_command_moved_there():
    server, store = make()
    server.add("Trash", b"Subject: was in trash\r\n\r\n")
    server.add("Archive", b"Subject: archived\r\n\r\n")
    rm, later_rm = ("rm", 1), ("rm", 2)
    validity, uid = uid_in(store, "Archive")
    store.delete("Archive", validity, uid, rm)
    trash = store.listing("Trash")
    (old_uid, _), (moved_uid, _) = sorted(trash.messages.items())
    with pytest.raises(Refused):
        store.delete("Trash", trash.uidvalidity, moved_uid, rm)
    store.delete("Trash", trash.uidvalidity, old_uid, rm)  # it was in Trash before: expunged
    assert list(server.mailboxes["Trash"].messages) == [moved_uid]
    store.delete("Trash", trash.uidvalidity, moved_uid, later_rm)  # another command may
    assert not server.mailboxes["Trash"].messages


def test_the_trash_folder_itself_is_not_deleted():
    server, store = make()
    with pytest.raises(Refused):
        store.delete_folder("Trash")
    assert "Trash" in server.mailboxes


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


def test_delete_without_a_trash_folder_makes_it_inside_a_prefixed_personal_namespace():
    # Courier: every folder is under "INBOX.", a CREATE of "Trash" is refused.
    server = FakeServer(("IMAP4REV1", "UIDPLUS"))
    server.delimiter = "."
    server.namespaces = Namespaces(personal=(("INBOX.", "."),), other=(), shared=())
    store = MailStore(FakePool(server), Options())
    server.add("INBOX", b"Subject: a\r\n\r\n")
    validity, uid = uid_in(store, "INBOX")
    store.delete("INBOX", validity, uid)
    assert ("CREATE", "INBOX.Trash") in server.commands
    assert "Trash" not in server.mailboxes and len(server.mailboxes["INBOX.Trash"].messages) == 1
    assert store.trash_folder() == "INBOX.Trash"


def test_delete_without_a_trash_folder_makes_trash_at_the_top_elsewhere():
    server = FakeServer(("IMAP4REV1", "MOVE", "UIDPLUS"))
    store = MailStore(FakePool(server), Options())
    server.add("INBOX", b"Subject: a\r\n\r\n")
    validity, uid = uid_in(store, "INBOX")
    store.delete("INBOX", validity, uid)
    assert len(server.mailboxes["Trash"].messages) == 1
