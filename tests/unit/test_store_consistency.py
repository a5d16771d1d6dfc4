"""What the store shows, and when it tells the kernel to forget, while a
resync, a read and a notice overlap: each test is a race a review of the
remount work found (a lookup served the old listing after the notice, a
size told before the listing held it, a torn table copy, a walk listing a
folder shown from disk, a deleted folder shown from disk again, a message
refused during a resync taken for the folder gone)."""

from __future__ import annotations

import threading

import imapclient.exceptions
import pytest

from imapfs.cache import DiskCache
from imapfs.config import Options
from imapfs.errors import NotFound
from imapfs.model import Listing, MessageMeta, MessageTable
from imapfs.pool import translate
from imapfs.store import CHUNK_SIZE, WHOLE_LIMIT, MailStore
from tests.unit.fakes import FakePool, FakeServer, FakeSession

WITH_QRESYNC = ("IMAP4REV1", "MOVE", "UIDPLUS", "CONDSTORE", "QRESYNC", "UNSELECT")
MiB = 1024 * 1024


def mount(server, directory, **options) -> MailStore:
    options.setdefault("listing_ttl", 3600)
    return MailStore(FakePool(server), Options(**options), disk=DiskCache.open(directory, 64 * MiB))


def listed_once(server, directory, folder: str) -> Listing:
    """A previous mount that listed folder (its listing is on disk)."""
    first = mount(server, directory)
    first.folders()
    listing = first.listing(folder)
    first.close()
    return listing


def remounted_with_uid_3_expunged(directory) -> tuple[MailStore, Listing, list[str]]:
    """A remount of five messages, UID 3 expunged since; the names the store
    tells the kernel to forget are collected."""
    server = FakeServer(WITH_QRESYNC)
    for i in range(5):
        server.add("INBOX", f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode())
    before = listed_once(server, directory, "INBOX")
    server.expunge("INBOX", 3)
    store = mount(server, directory, connections=3)
    store.folders()
    forgotten: list[str] = []
    store.on_names_changed = lambda folder, names: forgotten.extend(names)
    return store, before, forgotten


@pytest.fixture
def directory(tmp_path):
    return str(tmp_path / "acct")


# --- 1. the kernel is told to forget only once the fresh listing is what lookups get
def test_after_a_recreated_folders_forget_notice_no_lookup_gets_the_old_message(directory):
    """Remount after INBOX was deleted and recreated with a message of the same
    name (same date and subject, UIDs restart). The background resync sees the
    new UIDVALIDITY and tells the kernel to forget every old name *before* it
    fetches the new folder's metadata; a lookup+read arriving meanwhile is
    answered from the provisional listing: old UIDVALIDITY, OLD bytes from the
    disk cache. Nothing tells the kernel again afterwards, so a read-only
    (kernel_opens) mount keeps serving the old pages for that name."""
    server = FakeServer(WITH_QRESYNC)
    old_raw = b"Subject: same\r\n\r\n" + b"OLD BYTES " * 50
    new_raw = b"Subject: same\r\n\r\n" + b"NEW BYTES " * 60
    server.add("INBOX", old_raw)
    first = mount(server, directory)
    first.folders()
    listing = first.listing("INBOX")
    name = listing.messages[1].filename
    assert first.read("INBOX", listing.uidvalidity, listing.messages[1], 0, 1 << 16) == old_raw
    first.close()

    del server.mailboxes["INBOX"]
    server.create("INBOX")
    assert server.add("INBOX", new_raw) == 1

    store = mount(server, directory, connections=3)
    store.folders()
    events: list[tuple] = []
    store.on_names_changed = lambda folder, names: events.append(("forget", tuple(names)))
    real_fetch = store._fetch_metadata

    def fetch_then_a_lookup_comes(session, listing, uids):
        if events and events[-1][0] == "forget":
            # A FUSE lookup + read while the resync fetches the new folder's rows.
            uidvalidity, meta = store.message("INBOX", name)
            data = store.read("INBOX", uidvalidity, meta, 0, 1 << 16)
            events.append(("answer", uidvalidity, data))
        return real_fetch(session, listing, uids)

    store._fetch_metadata = fetch_then_a_lookup_comes
    store._resync_remounted()  # one folder: runs inline
    fresh = store.cached_listing("INBOX")
    assert fresh is not None and fresh.uidvalidity != listing.uidvalidity
    last_forget = max(i for i, e in enumerate(events) if e[0] == "forget")
    stale_after = [e for e in events[last_forget:] if e[0] == "answer"
                   and (e[1] != fresh.uidvalidity or e[2] == old_raw)]
    assert stale_after == [], f"answered with the old message after the last forget notice: {events}"


# --- 2. a size learnt while the resync tells the kernel is kept
def test_a_size_learnt_while_the_resync_tells_the_kernel_is_kept(directory):
    server = FakeServer(WITH_QRESYNC)
    real = b"Subject: liar\r\n\r\nthe real body, longer than said\r\n"
    liar = server.add("INBOX", real, reported_size=10)
    for i in range(3):
        server.add("INBOX", f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode())
    liar_name = listed_once(server, directory, "INBOX").messages[liar].filename
    server.expunge("INBOX", 2)  # something for the resync to report gone

    store = mount(server, directory, connections=3)
    store.folders()

    read_done = threading.Event()

    def a_read_meanwhile(folder, names):
        # fs.names_changed -> _paths_of -> store.folder() may LIST (folders_ttl
        # expired): a read of the liar meanwhile must learn its real size on
        # the listing that is kept, not on the one being replaced.
        try:
            uidvalidity, meta = store.message("INBOX", liar_name)
            assert store.read("INBOX", uidvalidity, meta, 0, 4096) == real
        finally:
            read_done.set()

    store.on_names_changed = a_read_meanwhile
    store.shown_listing("INBOX")  # provisional, its resync queued
    fresh = store.listing("INBOX")
    assert read_done.wait(5)
    assert 2 not in fresh.messages
    row = store.listing("INBOX").messages[liar]
    assert (row.size, row.size_verified) == (len(real), True), row


# --- 3. MessageTable.copy() against a concurrent set_size
class _Hooked(MessageTable):
    __slots__ = ()
    hook = None

    def __getattribute__(self, name):
        hook = type(self).hook
        if name == "_verified" and hook is not None:
            type(self).hook = None
            hook(self)
        return object.__getattribute__(self, name)


_Hooked.__slots__ = MessageTable.__slots__  # copy() walks type(self).__slots__: the real columns


def test_a_copy_racing_set_size_never_holds_an_unverified_size_marked_verified():
    table = MessageTable([MessageMeta(uid=1, size=10, internaldate=0.0, flags=(), filename="a_1.eml",
                                      message_id="", size_verified=False)])
    table.__class__ = _Hooked
    # A read thread learns the real size while the resync's copy() is between
    # its _sizes and _verified columns (a GIL switch in copy()'s Python loop).
    _Hooked.hook = lambda t: t.set_size(1, 5000, True)
    twin = table.copy()
    twin.take_verified_sizes(table)
    assert (twin[1].size, twin[1].size_verified) in ((5000, True), (10, False)), twin[1]


def test_a_large_message_whose_size_a_copy_caught_halfway_is_served_whole(directory):
    """In the store: a row marked verified at its RFC822.SIZE would make
    read() end there, and _find_real_end would never run."""
    server = FakeServer(WITH_QRESYNC)
    big = b"Subject: big\r\n\r\n" + bytes(range(256)) * ((WHOLE_LIMIT + 3 * CHUNK_SIZE) // 256)
    said = len(big) - 2 * CHUNK_SIZE  # the server understates it by two chunks
    uid = server.add("INBOX", big, reported_size=said)
    store = mount(server, directory, connections=4)
    store.folders()
    listing = store.listing("INBOX")
    server.add("INBOX", b"Subject: new\r\n\r\nx\r\n")
    store.changed_elsewhere("INBOX")
    reader_meta = listing.messages[uid]

    def a_read_to_the_end(table):
        table.__class__ = MessageTable
        store.read("INBOX", listing.uidvalidity, reader_meta, 0, len(big) + 1)  # learns the real end
    listing.messages.__class__ = _Hooked
    _Hooked.hook = a_read_to_the_end
    fresh = store.listing("INBOX")
    row = fresh.messages[uid]
    tail = store.read("INBOX", fresh.uidvalidity, row, said, 4096)
    assert tail == big[said:said + 4096], (row.size, row.size_verified, len(tail))


# --- 4. the walk prefetch leaves a folder shown from disk to its resync
def test_a_walk_prefetch_of_a_shown_folder_tells_the_kernel_what_went_away(directory):
    store, before, forgotten = remounted_with_uid_3_expunged(directory)
    queued = []
    store._in_background = queued.append  # the workers busy with the 64 remount resyncs
    shown = store.shown_listing("INBOX")
    assert 3 in shown.messages  # shown to the kernel (ls)
    store._list_small(["INBOX"])  # a walk elsewhere lists INBOX ahead
    for work in queued:
        work()
    assert 3 not in store.shown_listing("INBOX").messages
    assert before.messages[3].filename in forgotten


# --- 5. a folder deleted elsewhere is not shown from disk again
def test_a_folder_deleted_elsewhere_is_not_shown_again_from_disk(directory):
    server = FakeServer(WITH_QRESYNC)
    server.create("Old")
    for i in range(3):
        server.add("Old", f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode())
    listed_once(server, directory, "Old")

    store = mount(server, directory, connections=3)
    store.folders()  # Old still there
    del server.mailboxes["Old"]  # deleted by another client
    assert len(store.shown_listing("Old").messages) == 3  # shown at once (as designed)
    for _ in range(200):
        if store.provisional_listing("Old") is None:
            break
        threading.Event().wait(0.02)
    assert store.provisional_listing("Old") is None  # its resync failed: NotFound
    with pytest.raises(NotFound):
        store.shown_listing("Old")


# --- 6. the kernel is told of a corrected size once the listing holds it
def test_when_the_kernel_hears_of_a_corrected_size_the_listing_already_shows_it():
    server = FakeServer(WITH_QRESYNC)
    real = b"Subject: liar\r\n\r\nthe real body, longer than said\r\n"
    uid = server.add("INBOX", real, reported_size=10)
    store = MailStore(FakePool(server), Options(listing_ttl=3600))
    listing = store.listing("INBOX")
    seen: list[tuple] = []

    def told(folder, name, grew):
        # What a LOOKUP/GETATTR or READDIRPLUS answered right after the kernel
        # forgot the name would give it again (and, for readdir, under the new
        # size epoch, which _told_by_dir then trusts).
        row = store.cached_listing(folder).messages[uid]
        seen.append((grew, row.size, row.size_verified, store.size_epoch))

    store.on_size_corrected = told
    store.read("INBOX", listing.uidvalidity, listing.messages[uid], 0, 4096)
    assert seen == [(True, len(real), True, 1)], seen


# --- 7. a message refused mid-resync is not the folder gone; a walk during an ls
def test_a_fetch_refused_expungeissued_during_a_remount_resync_keeps_the_folder_on_disk(directory):
    """The folder still exists; only a message went away between UID SEARCH
    and UID FETCH (another client expunged it), which pool.translate makes
    a NotFound too: the folder's listing and bodies stay on disk."""
    server = FakeServer(WITH_QRESYNC)
    for i in range(3):
        server.add("INBOX", f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode())
    first = mount(server, directory)
    first.folders()
    listing = first.listing("INBOX")
    assert first.read("INBOX", listing.uidvalidity, listing.messages[1], 0, 4096)  # body now on disk
    first.close()
    server.add("INBOX", b"Subject: new\r\n\r\nnew\r\n")  # the resync fetches this one's metadata

    store = mount(server, directory, connections=3)
    store.folders()
    refusal = translate(imapclient.exceptions.IMAPClientError(
        "fetch failed: [EXPUNGEISSUED] Some of the requested messages no longer exist"))
    assert isinstance(refusal, NotFound)
    real_fetch = store._fetch_metadata
    calls = []

    def refused_once(session, listing, uids):
        calls.append(uids)
        if len(calls) == 1 and uids:
            raise refusal
        return real_fetch(session, listing, uids)
    store._fetch_metadata = refused_once
    with pytest.raises(NotFound):
        store.listing("INBOX", background=True)  # the remount's resync
    assert "INBOX" in server.mailboxes
    assert store.disk.listing("INBOX") is not None, "the folder's listing was dropped from disk"
    assert store.disk.get_body(("INBOX", listing.uidvalidity, 1)) is not None, "its bodies too"


def test_a_folder_shown_from_disk_while_a_walk_lists_it_ahead_still_has_its_gone_names_forgotten(
        directory, monkeypatch):
    """An ls during a walk's round trip shows the disk listing (with a
    message expunged since): the walk leaves the folder to that listing's
    resync, which tells the kernel to forget the expunged name."""
    store, before, forgotten = remounted_with_uid_3_expunged(directory)
    queued = []
    store._in_background = queued.append
    shown = []
    real = FakeSession.fetch_each_folder

    def an_ls_meanwhile(self, folders, *args, **kwargs):
        shown.append(store.shown_listing("INBOX"))
        return real(self, folders, *args, **kwargs)
    monkeypatch.setattr(FakeSession, "fetch_each_folder", an_ls_meanwhile)
    store._list_small(["INBOX"])
    for work in queued:
        work()
    assert 3 in shown[0].messages  # the kernel was shown the expunged message's name
    assert 3 not in store.shown_listing("INBOX").messages
    assert before.messages[3].filename in forgotten, "nobody tells the kernel to forget it"
