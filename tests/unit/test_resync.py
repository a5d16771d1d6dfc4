"""Incremental resync: a changed folder costs what changed, not its size."""

import pytest

from imapfs.config import Options
from imapfs.store import MailStore
from tests.unit.fakes import FakePool, FakeServer

WITH_QRESYNC = ("IMAP4REV1", "MOVE", "UIDPLUS", "CONDSTORE", "QRESYNC", "UNSELECT")
CONDSTORE_ONLY = ("IMAP4REV1", "MOVE", "UIDPLUS", "CONDSTORE", "UNSELECT")
PLAIN = ("IMAP4REV1", "UIDPLUS")


def setup(capabilities, count=300):
    server = FakeServer(capabilities)
    for i in range(count):
        server.add("INBOX", f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode())
    store = MailStore(FakePool(server), Options(listing_ttl=3600))
    store.listing("INBOX")
    server.commands.clear()
    return server, store


def resync(store):
    store.changed_elsewhere("INBOX")
    return store.listing("INBOX")


def verbs(server):
    return [(c[0], c[1] if c[0] == "UID SEARCH" else None) for c in server.commands]


def metadata_fetches(server):
    return [c for c in server.commands if c[0] == "UID FETCH" and "RFC822.SIZE" in c[2]]


def test_vanished_and_changed_flags_come_from_one_fetch():
    server, store = setup(WITH_QRESYNC)
    server.expunge("INBOX", 5)
    server.expunge("INBOX", 200)
    server.set_flags("INBOX", 7, {"\\Seen"})
    new = server.add("INBOX", b"Subject: late\r\n\r\n")
    listing = resync(store)
    assert 5 not in listing.messages and 200 not in listing.messages
    assert listing.messages[7].flags == ("\\Seen",)
    assert new in listing.messages and len(listing.messages) == 299
    assert ("UID SEARCH", "ALL") not in verbs(server)
    assert [c[1] for c in metadata_fetches(server)] == [[new]]
    vanished_fetches = [c for c in server.commands if c[0] == "UID FETCH" and "VANISHED" in " ".join(c[3])]
    assert len(vanished_fetches) == 1


def test_new_mail_without_expunges_needs_no_full_uid_list():
    server, store = setup(CONDSTORE_ONLY)
    new = [server.add("INBOX", b"Subject: n\r\n\r\n") for _ in range(3)]
    listing = resync(store)
    assert all(uid in listing.messages for uid in new)
    assert ("UID SEARCH", "ALL") not in verbs(server)
    assert [c[1] for c in metadata_fetches(server)] == [new]


def test_expunge_without_qresync_is_found_from_exists():
    server, store = setup(CONDSTORE_ONLY)
    server.expunge("INBOX", 10)
    listing = resync(store)
    assert 10 not in listing.messages and len(listing.messages) == 299
    assert ("UID SEARCH", "ALL") in verbs(server)
    assert metadata_fetches(server) == []


def test_unchanged_modseq_sends_nothing_but_select():
    server, store = setup(WITH_QRESYNC)
    resync(store)
    assert [c[0] for c in server.commands] == ["EXAMINE"]


def test_highestmodseq_jump_with_only_flag_changes_fetches_only_changed_flags():
    server, store = setup(CONDSTORE_ONLY)
    server.mailboxes["INBOX"].modseq += 1000  # a jump: other activity, nothing we know changed
    server.set_flags("INBOX", 3, {"\\Flagged"})
    listing = resync(store)
    assert listing.messages[3].flags == ("\\Flagged",)
    flag_fetches = [c for c in server.commands if c[0] == "UID FETCH" and c[2] == ("UID", "FLAGS")]
    assert len(flag_fetches) == 1 and flag_fetches[0][3][0].startswith("CHANGEDSINCE")


@pytest.mark.parametrize("capabilities", [WITH_QRESYNC, CONDSTORE_ONLY, PLAIN])
def test_uidvalidity_change_relists_from_scratch(capabilities):
    server, store = setup(capabilities, count=20)
    old = store.listing("INBOX")
    del server.mailboxes["INBOX"]
    server.create("INBOX")
    server.add("INBOX", b"Subject: reborn\r\n\r\n")
    listing = resync(store)
    assert listing.uidvalidity != old.uidvalidity
    assert list(listing.messages) == [1] and listing.messages[1].filename.endswith("_reborn_1.eml")


@pytest.mark.parametrize("capabilities", [WITH_QRESYNC, CONDSTORE_ONLY, PLAIN])
def test_random_changes_always_converge_to_the_server(capabilities):
    import random

    server, store = setup(capabilities, count=50)
    rng = random.Random(len(capabilities))
    for _round in range(30):
        for _ in range(rng.randint(0, 4)):
            action = rng.random()
            uids = list(server.mailboxes["INBOX"].messages)
            if action < 0.4 or not uids:
                server.add("INBOX", b"Subject: r\r\n\r\n")
            elif action < 0.7:
                server.expunge("INBOX", rng.choice(uids))
            else:
                server.set_flags("INBOX", rng.choice(uids), {rng.choice(["\\Seen", "\\Flagged", "$X"])})
        listing = resync(store)
        truth = server.mailboxes["INBOX"].messages
        assert set(listing.messages) == set(truth)
        assert all(set(listing.messages[u].flags) == truth[u].flags for u in truth)


@pytest.mark.parametrize("capabilities", [WITH_QRESYNC, CONDSTORE_ONLY, PLAIN])
def test_a_folder_changes_time_only_when_its_entries_change(capabilities):
    # Its directory's mtime: incremental indexers rescan only directories whose mtime moved.
    server, store = setup(capabilities, count=20)
    first = store.listing("INBOX").changed_ns
    assert first > 0
    assert resync(store).changed_ns == first  # nothing changed
    server.add("INBOX", b"Subject: new\r\n\r\n")
    gained = resync(store).changed_ns
    assert gained > first
    server.expunge("INBOX", 3)
    lost = resync(store).changed_ns
    assert lost > gained
    server.set_flags("INBOX", 4, {"\\Seen"})
    flagged = resync(store).changed_ns
    assert flagged > lost  # a Maildir name carries the flags
    assert resync(store).changed_ns == flagged
