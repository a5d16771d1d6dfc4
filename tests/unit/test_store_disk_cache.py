"""MailStore over a disk cache: a remount (a new MailStore over the same
cache directory) costs what changed while unmounted, counted at the pool."""

from __future__ import annotations

import threading
import time

import pytest

from imapfs.cache import DiskCache
from imapfs.config import Options
from imapfs.errors import ServerUnavailable
from imapfs.store import CHUNK_SIZE, WHOLE_LIMIT, MailStore
from tests.unit.fakes import FakePool, FakeServer

WITH_QRESYNC = ("IMAP4REV1", "MOVE", "UIDPLUS", "CONDSTORE", "QRESYNC", "UNSELECT")
CONDSTORE_ONLY = ("IMAP4REV1", "MOVE", "UIDPLUS", "CONDSTORE", "UNSELECT")
PLAIN = ("IMAP4REV1", "UIDPLUS")
MiB = 1024 * 1024


def mount(server, directory, **options) -> MailStore:
    options.setdefault("listing_ttl", 3600)
    return MailStore(FakePool(server), Options(**options), disk=DiskCache.open(directory, 64 * MiB))


def metadata_fetches(server):
    return [c for c in server.commands if c[0] == "UID FETCH" and "RFC822.SIZE" in c[2]]


def body_fetches(server):
    return [c for c in server.commands if c[0] == "UID FETCH" and any("BODY.PEEK[]" in i for i in c[2])]


def stall(store, once=False):
    """Every pool.run (or only the first) waits for release: a server that
    does not answer. Returns (entered: set once one waits, release, the
    pool's own run)."""
    entered, release = threading.Event(), threading.Event()
    run = store.pool.run

    def stalled(work):
        if not (once and entered.is_set()):
            entered.set()
            assert release.wait(10)
        return run(work)

    store.pool.run = stalled
    return entered, release, run


@pytest.fixture
def directory(tmp_path):
    return str(tmp_path / "acct")


def first_mount(server, directory, count=200):
    for i in range(count):
        server.add("INBOX", f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode())
    store = mount(server, directory)
    store.folders()
    listing = store.listing("INBOX")
    store.close()
    return listing


@pytest.mark.parametrize("capabilities", [WITH_QRESYNC, CONDSTORE_ONLY])
def test_remount_of_an_unchanged_folder_fetches_no_metadata(directory, capabilities):
    server = FakeServer(capabilities)
    before = first_mount(server, directory)
    server.commands.clear()
    store = mount(server, directory)
    listing = store.listing("INBOX")
    assert listing.messages == before.messages
    assert listing.changed_ns == before.changed_ns  # the directory's mtime survives the remount
    assert [c[0] for c in server.commands] == ["EXAMINE"]


@pytest.mark.parametrize("capabilities", [WITH_QRESYNC, CONDSTORE_ONLY, PLAIN])
def test_changes_while_unmounted_are_picked_up_at_their_cost(directory, capabilities):
    server = FakeServer(capabilities)
    before = first_mount(server, directory)
    server.expunge("INBOX", 5)
    server.expunge("INBOX", 150)
    server.set_flags("INBOX", 7, {"\\Seen"})
    new = server.add("INBOX", b"Subject: while away\r\n\r\n")
    server.commands.clear()
    store = mount(server, directory)
    listing = store.listing("INBOX")
    truth = server.mailboxes["INBOX"].messages
    assert set(listing.messages) == set(truth)
    assert all(set(listing.messages[u].flags) == truth[u].flags for u in truth)
    assert listing.changed_ns > before.changed_ns
    # Only the new message's metadata crosses the wire, never the folder's.
    assert [c[1] for c in metadata_fetches(server)] == [[new]]
    store.close()
    # ... and what was learnt was written back: a third mount sees it without asking.
    server.commands.clear()
    third = mount(server, directory)
    assert set(third.disk.listing("INBOX").messages) == set(truth)
    assert third.disk.listing("INBOX").messages[7].flags == ("\\Seen",)
    assert metadata_fetches(server) == []


def test_uidvalidity_change_while_unmounted_drops_listing_and_bodies(directory):
    server = FakeServer(WITH_QRESYNC)
    first_mount(server, directory, count=5)
    store = mount(server, directory)
    listing = store.listing("INBOX")
    meta = listing.messages[1]
    assert store.read("INBOX", listing.uidvalidity, meta, 0, 100) == b"Subject: m0\r\n\r\nbody 0\r\n"
    store.close()
    old_uidvalidity = listing.uidvalidity
    del server.mailboxes["INBOX"]
    server.create("INBOX")
    server.add("INBOX", b"Subject: reborn\r\n\r\nnew bytes\r\n")
    store = mount(server, directory)
    listing = store.listing("INBOX")
    assert listing.uidvalidity != old_uidvalidity
    assert list(listing.messages) == [1] and listing.messages[1].filename.endswith("_reborn_1.eml")
    assert store.disk.get_body(("INBOX", old_uidvalidity, 1)) is None
    server.commands.clear()
    assert store.read("INBOX", listing.uidvalidity, listing.messages[1], 0, 100) == \
        b"Subject: reborn\r\n\r\nnew bytes\r\n"
    assert len(body_fetches(server)) == 1


def test_bodies_read_once_are_read_from_disk_after_a_remount(directory):
    server = FakeServer(WITH_QRESYNC)
    big = b"Subject: big\r\n\r\n" + bytes(range(256)) * ((WHOLE_LIMIT + 3 * CHUNK_SIZE) // 256)  # read in chunks
    server.add("INBOX", b"Subject: small\r\n\r\nsmall body\r\n")
    server.add("INBOX", big)
    store = mount(server, directory)
    listing = store.listing("INBOX")
    small_meta, big_meta = listing.messages[1], listing.messages[2]
    assert store.read("INBOX", listing.uidvalidity, small_meta, 0, 1000) == b"Subject: small\r\n\r\nsmall body\r\n"
    assert store.read("INBOX", listing.uidvalidity, big_meta, CHUNK_SIZE + 5, 10) == big[CHUNK_SIZE + 5:CHUNK_SIZE + 15]
    store.close()
    server.commands.clear()
    store = mount(server, directory)
    listing = store.listing("INBOX")
    assert store.read("INBOX", listing.uidvalidity, listing.messages[1], 0, 1000) == \
        b"Subject: small\r\n\r\nsmall body\r\n"
    assert store.read("INBOX", listing.uidvalidity, listing.messages[2], CHUNK_SIZE, 100) == \
        big[CHUNK_SIZE:CHUNK_SIZE + 100]
    assert body_fetches(server) == []
    # A chunk never read is fetched, and only it.
    assert store.read("INBOX", listing.uidvalidity, listing.messages[2], 0, 10) == big[:10]
    assert len(body_fetches(server)) == 1


def test_a_size_learnt_is_kept_across_mounts(directory):
    server = FakeServer(WITH_QRESYNC)
    uid = server.add("INBOX", b"Subject: liar\r\n\r\nthe real body\r\n", reported_size=5)
    store = mount(server, directory)
    listing = store.listing("INBOX")
    store.read("INBOX", listing.uidvalidity, listing.messages[uid], 0, 4096)
    assert listing.messages[uid].size_verified
    store.close()
    store = mount(server, directory)
    meta = store.listing("INBOX").messages[uid]
    assert meta.size == len(b"Subject: liar\r\n\r\nthe real body\r\n") and meta.size_verified


def test_server_away_at_remount_serves_listing_folders_and_bodies(directory):
    server = FakeServer(WITH_QRESYNC)
    first_mount(server, directory, count=3)
    store = mount(server, directory)
    listing = store.listing("INBOX")
    store.read("INBOX", listing.uidvalidity, listing.messages[2], 0, 100)
    store.close()
    server.fail_next = [ServerUnavailable("connection refused")] * 100
    store = mount(server, directory, retry_for=0)
    assert [f.name for f in store.folders()] == ["INBOX"]
    offline = store.listing("INBOX")
    assert offline.messages == listing.messages
    assert store.read("INBOX", offline.uidvalidity, offline.messages[2], 0, 100) == b"Subject: m1\r\n\r\nbody 1\r\n"
    with pytest.raises(ServerUnavailable):
        store.read("INBOX", offline.uidvalidity, offline.messages[1], 0, 100)  # never read: not cached


def test_without_a_disk_cache_nothing_is_kept(directory):
    server = FakeServer(WITH_QRESYNC)
    server.add("INBOX", b"Subject: x\r\n\r\n")
    store = MailStore(FakePool(server), Options())
    store.listing("INBOX")
    store.close()
    assert not DiskCache.exists(directory)


def test_a_write_marks_the_folder_stale_and_the_next_listing_is_written_back(directory):
    server = FakeServer(WITH_QRESYNC)
    first_mount(server, directory, count=3)
    store = mount(server, directory)
    listing = store.listing("INBOX")
    store.set_flags("INBOX", listing.uidvalidity, 1, ("\\Flagged",))
    assert store.listing("INBOX").messages[1].flags == ("\\Flagged",)
    assert store.disk.listing("INBOX").messages[1].flags == ("\\Flagged",)


def test_a_sync_dropped_for_a_concurrent_write_still_reaches_the_disk(directory):
    server = FakeServer(WITH_QRESYNC)
    first_mount(server, directory, count=3)
    store = mount(server, directory)
    store.listing("INBOX")
    server.set_flags("INBOX", 2, {"\\Answered"})
    store.changed_elsewhere("INBOX")
    real_sync = store._sync

    def sync_racing_a_write(*args):
        result = real_sync(*args)
        store.listings.mark_stale("INBOX")  # a write to the folder ran meanwhile: the result is dropped
        return result

    store._sync = sync_racing_a_write
    store.listing("INBOX")
    store._sync = real_sync
    assert store.listing("INBOX").messages[2].flags == ("\\Answered",)
    assert store.disk.listing("INBOX").messages[2].flags == ("\\Answered",)


def test_a_remount_resyncs_stored_folders_in_the_background_and_shows_them_while_the_server_stalls(
        directory):
    server = FakeServer(WITH_QRESYNC)
    before = first_mount(server, directory, count=20)
    new = server.add("INBOX", b"Subject: while unmounted\r\n\r\nnew\r\n")
    store = mount(server, directory, connections=3)
    store.folders()
    server.commands.clear()
    used: list[str] = []
    store.on_folder_used = used.append
    entered, release, run = stall(store)
    resync = threading.Thread(target=store._resync_remounted)
    resync.start()
    assert entered.wait(10)
    assert used == []  # a background resync is no folder a user opened: the watcher stays where it was
    shown = store.shown_listing("INBOX")
    assert shown.messages == before.messages  # the previous mount's, while the server does not answer
    name = before.messages.filename_at(3)
    assert store.message("INBOX", name)[1] == before.messages.at(3)
    release.set()
    resync.join(10)
    assert not resync.is_alive()
    assert [c[1] for c in metadata_fetches(server)] == [[new]]  # only what changed crossed the wire
    store.pool.run = run  # type: ignore[method-assign]
    server.commands.clear()
    fresh = store.shown_listing("INBOX")
    assert len(fresh.messages) == 21 and server.commands == []  # resynced already: nothing asked again


def test_a_write_while_a_remount_resync_is_stalled_is_not_hidden_by_the_old_listing(directory):
    server = FakeServer(WITH_QRESYNC)
    first_mount(server, directory, count=5)
    store = mount(server, directory, connections=3)
    store.folders()
    entered, release, _ = stall(store, once=True)
    resync = threading.Thread(target=store._resync_remounted)
    resync.start()
    assert entered.wait(10)
    store.invalidate("INBOX")  # what a write into the folder does: a new generation
    assert store.provisional_listing("INBOX") is not None
    waiter = threading.Thread(target=store.shown_listing, args=("INBOX",))
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive()  # not shown the old listing: it waits for the resync
    release.set()
    waiter.join(10)
    resync.join(10)
    assert not waiter.is_alive() and not resync.is_alive()


def test_the_first_ls_of_a_stored_folder_is_shown_at_once_and_resynced_behind_it(directory):
    server = FakeServer(WITH_QRESYNC)
    before = first_mount(server, directory, count=10)
    gone = sorted(server.mailboxes["INBOX"].messages)[2]
    server.expunge("INBOX", gone)
    store = mount(server, directory, connections=3)
    store.folders()
    forgotten: list[tuple[str, list[str]]] = []
    store.on_names_changed = lambda folder, names: forgotten.append((folder, names))
    _, release, _ = stall(store)
    shown = store.shown_listing("INBOX")  # the server does not answer: shown from disk, at once
    assert shown.messages == before.messages
    release.set()
    for _ in range(200):
        if store.fresh_listing("INBOX") is not None:
            break
        threading.Event().wait(0.05)
    resynced = store.fresh_listing("INBOX")  # by the background resync: nothing here asked the server
    assert resynced is not None and gone not in resynced.messages and len(resynced.messages) == 9
    assert forgotten == [("INBOX", [before.messages[gone].filename])]  # the kernel forgets what went away
    assert store.provisional_listing("INBOX") is None


def test_a_lookup_while_a_resync_stores_its_listing_leaves_no_old_listing_behind(directory):
    server = FakeServer(WITH_QRESYNC)
    first_mount(server, directory, count=10)
    server.expunge("INBOX", sorted(server.mailboxes["INBOX"].messages)[0])
    store = mount(server, directory, connections=3)
    store.folders()
    seen: list[int] = []
    put = store.listings.put

    def a_lookup_first(listing, generation):
        # Between the resync's answer and its listing being stored, a lookup comes.
        seen.append(len(store.shown_listing(listing.folder).messages))
        return put(listing, generation)
    store.listings.put = a_lookup_first
    forgotten_then: list[int] = []
    store.on_names_changed = lambda folder, names: forgotten_then.append(len(store.shown_listing(folder).messages))
    assert len(store.listing("INBOX").messages) == 9
    assert seen == [10]  # it was shown the previous listing, then
    assert forgotten_then == [9]  # the kernel told to forget once the fresh listing is what a lookup gets
    assert store.provisional_listing("INBOX") is None  # nothing of it is left to be shown later
    store.invalidate("INBOX")
    assert len(store.shown_listing("INBOX").messages) == 9


def test_a_folder_written_before_its_remount_resync_is_never_shown_the_old_listing(directory):
    server = FakeServer(WITH_QRESYNC)
    first_mount(server, directory, count=5)
    store = mount(server, directory, connections=3)
    store.folders()
    store.invalidate("INBOX")  # what a write (cp, mv) into the folder does, before any resync
    _, release, _ = stall(store)
    resync = threading.Thread(target=store._resync_remounted)
    resync.start()
    waiter = threading.Thread(target=store.shown_listing, args=("INBOX",))
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive() and store.provisional_listing("INBOX") is None  # waits for the server
    release.set()
    waiter.join(10)
    resync.join(10)
    assert not waiter.is_alive() and not resync.is_alive()


def test_a_changed_folder_list_is_not_shown_the_previous_mounts(directory):
    server = FakeServer(WITH_QRESYNC)
    first_mount(server, directory, count=1)
    store = mount(server, directory, connections=3)
    _, release, _ = stall(store)
    store.prefetch_folders()
    assert [f.name for f in store.folders()] == ["INBOX"]  # at once, while LIST waits
    store.listings.invalidate_folders()  # what mkdir, rmdir or a relist do
    lister = threading.Thread(target=store.folders)
    lister.start()
    lister.join(0.5)
    assert lister.is_alive()  # waits for the server's list now
    release.set()
    lister.join(10)
    assert not lister.is_alive()


def test_a_remounts_folder_list_is_shown_at_once_and_replaced_when_the_server_differs(directory):
    server = FakeServer(WITH_QRESYNC)
    first_mount(server, directory, count=1)
    server.mailboxes.pop("INBOX")  # gone while unmounted
    server.create("Archive")
    store = mount(server, directory, connections=3)
    replaced: list[tuple[list[str], list[str]]] = []
    store.on_folders_replaced = lambda shown, listed: replaced.append(
        ([f.name for f in shown], [f.name for f in listed]))
    _, release, _ = stall(store)
    store.prefetch_folders()
    assert [f.name for f in store.folders()] == ["INBOX"]  # the previous mount's, while LIST waits
    release.set()
    for _ in range(100):
        if replaced:
            break
        threading.Event().wait(0.05)
    assert replaced == [(["INBOX"], ["Archive"])]
    assert [f.name for f in store.folders()] == ["Archive"]


def test_remount_resyncs_leave_the_workers_to_searches(directory):
    # Right after mounting, up to 64 stored folders are resynced in the
    # background; a search (or the resync of a folder someone looks at) asked
    # for meanwhile must not wait behind them all: here they never answer.
    server = FakeServer(WITH_QRESYNC)
    for i in range(10):
        server.create(f"F{i}")
        server.add(f"F{i}", f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode())
    first = mount(server, directory)
    first.folders()
    for i in range(10):
        first.listing(f"F{i}")
    first.close()
    store = mount(server, directory, connections=4)
    store.folders()
    stalled, release, searching = threading.Event(), threading.Event(), threading.local()
    run = store.pool.run

    def remount_resyncs_stall(work):
        if not getattr(searching, "now", False):
            stalled.set()
            assert release.wait(10)
        return run(work)
    store.pool.run = remount_resyncs_stall
    resyncs = threading.Thread(target=store._resync_remounted)
    resyncs.start()
    try:
        assert stalled.wait(5)
        time.sleep(0.2)  # every resync queued by now
        searched, failed = threading.Event(), []

        def search():
            searching.now = True
            try:
                store.pool.run(lambda s: s.noop())
            except Exception as exc:  # shown by the assertion below, not lost in the worker
                failed.append(repr(exc))
            searched.set()
        store._in_background(search)
        assert searched.wait(5), "work asked for after mounting waited behind the remount resyncs"
        assert not failed
    finally:
        release.set()
        resyncs.join(10)
    assert not resyncs.is_alive()
    assert all(store.cached_listing(f"F{i}") is not None for i in range(10))
