"""MailStore: folders, listings and message bodies, over the caches and the pool.

Speaks model objects (Folder, Listing, MessageMeta) and imapfs errors, never
paths or errno. Listings are synchronised incrementally: a folder whose
UIDVALIDITY is unchanged costs a SELECT plus a fetch of what is new; a
changed UIDVALIDITY drops everything known about the folder. Bodies are
fetched with BODY.PEEK, so reading never sets \\Seen.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple, TypeVar

from cachetools import LRUCache, TTLCache

from imapfs import mime, names, spool
from imapfs.cache import BodyCache, DiskCache, ListingCache
from imapfs.config import Options
from imapfs.errors import (
    AlreadyExists,
    FolderGone,
    ImapFSError,
    InvalidQuery,
    NotEmpty,
    NotFound,
    NotPermitted,
    ProtocolError,
    QuotaError,
    Refused,
    ServerUnavailable,
    StaleMessage,
    WriteUncertain,
)
from imapfs.model import Folder, FolderStatus, Listing, MessageMeta, MessageTable
from imapfs.pool import ConnectionPool, Namespaces, Searched, Session, compact_uid_set
from imapfs.readahead import ReadAhead
from imapfs.spool import Literal

log = logging.getLogger(__name__)
T = TypeVar("T")

HEADER_FIELDS = "BODY.PEEK[HEADER.FIELDS (SUBJECT MESSAGE-ID)]"
# Two header fields are a few hundred bytes; a server sending more than this
# for them has them dropped (the message lists as no-subject) rather than
# held in memory: a listing must not cost what a hostile server decides.
HEADER_LITERAL_LIMIT = 64 * 1024
METADATA_ITEMS = ["UID", "FLAGS", "RFC822.SIZE", "INTERNALDATE", HEADER_FIELDS]
# Messages up to WHOLE_LIMIT are fetched whole on first read; larger ones in
# aligned chunks, so `head` on a 50 MB message costs one small chunk, not
# 50 MB. A reader going through a large message chunk after chunk gets
# growing spans (up to MAX_SPAN_CHUNKS per FETCH), so `cat` is not one round
# trip per 128 KiB either.
WHOLE_LIMIT = 1 << 20
CHUNK_SIZE = 128 * 1024
MAX_UID = 2**32 - 1  # RFC 3501's nz-number: what a listing's UID column holds
MAX_SPAN_CHUNKS = 32
# BODYSTRUCTURE is a few hundred bytes per part; more than this is not a real message's.
STRUCTURE_LITERAL_LIMIT = 1 << 20
# A message with more parts than this has the headers of the first ones only fetched.
MAX_HEADER_SECTIONS = 500
# Parts are fetched in ranges of this size (BODY.PEEK[2]<0.1048576> ...).
PART_RANGE = 1 << 20
# While the server is unreachable, cached listings are shown and the server
# is tried again after this many seconds.
OFFLINE_RETRY_SECONDS = 5.0
# Folders listed ahead of a walk per command batch (one round trip each).
WALK_BATCH = 10
# A lookup of a folder path the list does not hold fetches the list again, at most this often.
MISS_RELIST_SECONDS = 2.0
# At mount, the previous mount's listings of at most this many folders (those
# that changed last first) are resynchronised in the background.
REMOUNT_RESYNC_FOLDERS = 64


class MailStore:
    """The mail account as folders and immutable messages."""

    def __init__(self, pool: ConnectionPool, options: Options,
                 clock: Callable[[], float] = time.monotonic, disk: DiskCache | None = None) -> None:
        self.pool = pool
        self.options = options
        self._clock = clock
        self.listings = ListingCache(options.header_cache_folders)
        self.bodies = BodyCache(options.body_cache_mb * 1024 * 1024)
        # Listings and bodies kept across mounts (cache_dir), or None. Memory
        # is asked first; the disk is the second level under the same keys.
        self.disk = disk
        # Folders whose disk listing may lag what memory holds: a sync's
        # result was dropped (a write ran meanwhile) after it had updated
        # flags in place, so the next write-back cannot tell what changed.
        self._disk_lagging: set[str] = set()
        self._spans_lock = threading.Lock()  # guards _spans
        # per large message: (last chunk index fetched, span of that fetch)
        self._spans: LRUCache[tuple[str, int, int], tuple[int, int]] = LRUCache(maxsize=1024)
        self.readahead = ReadAhead(self.fetch_bodies, small=lambda size: size <= WHOLE_LIMIT,
                                   cached=self._body_cached, budget_bytes=self.bodies.max_bytes,
                                   workers=max(1, options.connections - 1))
        self._sync_locks: dict[str, threading.Lock] = {}
        self._sync_locks_guard = threading.Lock()  # guards _sync_locks
        self._folders_lock = threading.Lock()  # serialises LIST so parallel lookups share one
        self._last_miss_relist = float("-inf")  # when relist_after_miss last fetched the list
        self._walk_lock = threading.Lock()  # guards _walk_last, _walks_started
        self._walk_last: tuple[str | None, str] | None = None  # (parent, folder) last listed from the server
        # Parents whose folders were listed ahead of a walk (once per listing_ttl each).
        self._walks_started: TTLCache[str | None, bool] = TTLCache(maxsize=1024, ttl=max(options.listing_ttl, 0.001),
                                                                    timer=clock)
        # (when, folder -> status, generations before) of the last LIST-STATUS (see listed_status).
        self._listed: tuple[float, dict[str, FolderStatus], dict[str, int]] = (float("-inf"), {}, {})
        # Called with a folder's name whenever it is listed: the watcher IDLEs on the latest.
        self.on_folder_used: Callable[[str], None] | None = None
        # Called with (folder, file names) whose attributes the kernel may hold
        # wrongly now: the folder was recreated, or a size proved wrong.
        self.on_names_changed: Callable[[str, list[str]], None] | None = None
        # (folder, filename, grew): a message's real length differs from its RFC822.SIZE.
        self.on_size_corrected: Callable[[str, str, bool], None] | None = None
        # Moves on whenever a shown size is corrected, so views built from
        # listings (directory entries with attributes) know to rebuild.
        self.size_epoch = 0
        self.started_ns = time.time_ns()  # the mount's time: directories' mtime until they change
        # actor -> Trash's (UIDVALIDITY, UIDNEXT) before the actor first moved mail there (see delete).
        self._trashing: TTLCache[Hashable, tuple[int, int]] = TTLCache(maxsize=1024, ttl=24 * 3600)
        self._trashing_lock = threading.Lock()  # guards _trashing
        # (folder, keys, charset) -> (folder generation, when, (UIDVALIDITY, UIDs)) of a search.
        self._searches: TTLCache[tuple[str, tuple[str, ...], str | None], tuple[int, float, Found]] = \
            TTLCache(maxsize=1024, ttl=max(options.listing_ttl, 0.001), timer=clock)
        self._searches_lock = threading.Lock()  # guards _searches and _workers
        self._workers: concurrent.futures.ThreadPoolExecutor | None = None
        # (folder, UID) -> (generation, when, UIDVALIDITY, metadata or None) of lookups
        # answered without a listing (see message()).
        self._lookups: TTLCache[tuple[str, int], tuple[int, float, int, MessageMeta | None]] = \
            TTLCache(maxsize=4096, ttl=max(options.listing_ttl, 0.001), timer=clock)
        self._lookups_lock = threading.Lock()  # guards _lookups
        # folder -> a previous mount's listing while its first resync of this
        # mount is in flight (see shown_listing).
        # Only folders of generation 0 (nothing written there this mount) have one.
        self._provisional: dict[str, Listing] = {}
        # (folders generation, the previous mount's folder list) while this mount's first LIST is in flight.
        self._provisional_folders: tuple[int, list[Folder]] | None = None
        self._provisional_lock = threading.Lock()  # guards _provisional, _provisional_folders
        # Called with (list shown, list the server gave) when a previous mount's folder list proved wrong.
        self.on_folders_replaced: Callable[[list[Folder], list[Folder]], None] | None = None
        self._structures_lock = threading.Lock()  # guards _structures
        self._structures: LRUCache[tuple[str, int, int], tuple[mime.StructPart, dict[str, bytes]]] = \
            LRUCache(maxsize=4096)

    def close(self) -> None:
        with self._searches_lock:
            workers, self._workers = self._workers, None
        if workers is not None:
            workers.shutdown(wait=False, cancel_futures=True)
        self.readahead.close()
        self.pool.close()
        if self.disk is not None:
            self.disk.close()

    # --- folders ---------------------------------------------------------
    def folders(self) -> list[Folder]:
        cached = self.listings.folders()
        if cached and self._clock() - cached[0] < self.options.folders_ttl:
            return cached[1]
        with self._provisional_lock:
            shown = self._provisional_folders
        if shown is not None and shown[0] == self.listings.folders_generation():
            return shown[1]  # the mount's first LIST is in flight: the previous mount's list, at once
        return self._list_folders()

    def _list_folders(self) -> list[Folder]:
        with self._folders_lock:
            cached = self.listings.folders()
            if cached and self._clock() - cached[0] < self.options.folders_ttl:
                return cached[1]
            generation = self.listings.folders_generation()
            if not cached and self.disk is not None:
                from_disk = self.disk.folders()
                if from_disk is not None:
                    cached = (float("-inf"), from_disk)  # a previous mount's: shown only if the server is away
            before = self.listings.generations()
            try:
                folders, statuses = self.pool.run(lambda s: s.list_folders_with_status())
            except ServerUnavailable as exc:
                if not cached:
                    raise
                log.warning("cannot list folders (%s); showing them as last seen", exc)
                self.listings.put_folders(self._clock() - self.options.folders_ttl + OFFLINE_RETRY_SECONDS,
                                          cached[1], generation)
                return cached[1]
            if cached and cached[1] == folders:
                folders = cached[1]  # the same object: views do not build their trees again
            self.listings.put_folders(self._clock(), folders, generation)
            self._listed = (self._clock(), statuses, before)
            if self.disk is not None and (not cached or cached[1] != folders):
                self.disk.put_folders(folders)
            return folders

    def listed_status(self, folder: str) -> FolderStatus | None:
        """The folder's status as the last LIST-STATUS gave it, while that is
        as trustworthy as a listing: younger than listing_ttl, and nothing
        changed the folder since (its generation has not moved)."""
        when, statuses, generations = self._listed
        status = statuses.get(folder)
        if status is None or self._clock() - when >= self.options.listing_ttl \
                or self.listings.generation(folder) != generations.get(folder, 0):
            return None
        return status

    def prefetch_folders(self) -> None:
        """folders() in a thread of its own, right after mounting: the first
        lookup (an ls, a search) then finds the folder list already known
        instead of waiting a round trip for LIST. Meanwhile a previous
        mount's list (the disk cache's) is shown at once; when the server's
        differs, on_folders_replaced tells the FUSE edge."""
        shown = self.disk.folders() if self.disk is not None else None
        with self._provisional_lock:
            # Shown only while the folder list is not changed (mkdir, rmdir, a relist).
            self._provisional_folders = None if shown is None else (self.listings.folders_generation(), shown)

        def list_now() -> None:
            try:
                folders = self._list_folders()
            except ImapFSError as exc:
                log.debug("listing folders at mount failed: %s", exc)
                return
            finally:
                with self._provisional_lock:
                    self._provisional_folders = None
            if shown is not None and shown != folders and self.on_folders_replaced is not None:
                self.on_folders_replaced(shown, folders)
            self._resync_remounted()

        threading.Thread(target=list_now, name="imapfs-folders", daemon=True).start()

    def _resync_remounted(self) -> None:
        """A previous mount's listings (the disk cache's), resynchronised in
        the background right after mounting, at the cost of what changed
        (one EXAMINE for a folder that did not): the first ls of such a
        folder then finds it fresh, and one asked for meanwhile is shown
        as it was (shown_listing) instead of waiting for its resync."""
        if self.disk is None:
            return
        known = {folder.name for folder in self.cached_folders() or [] if folder.selectable}
        wanted = [name for name in self.disk.listed_folders(REMOUNT_RESYNC_FOLDERS)
                  if name in known and self.listings.get(name) is None]

        def resync(folder: str) -> None:
            try:
                self.listing(folder, background=True)
            except ImapFSError as exc:
                log.debug("resynchronising %r at mount failed: %s", folder, exc)

        # Not on the workers searches use: 64 resyncs queued there would
        # make a search (or a shown folder's own resync) right after
        # mounting wait behind them all. Half the spare connections at most.
        width = max(1, (self.options.connections - 1) // 2)
        with concurrent.futures.ThreadPoolExecutor(max_workers=width, thread_name_prefix="imapfs-remount") as resyncs:
            list(resyncs.map(resync, wanted))

    def relist_after_miss(self) -> bool:
        """A path that names no folder was looked up: fetch the folder list
        again, so a folder made elsewhere a moment ago is found (``mkdir``
        in another client, then ``mv x M/New``) without waiting for
        folders_ttl. At most once per MISS_RELIST_SECONDS, so tools that
        probe names that do not exist do not cost a LIST each. Whether a
        new list was fetched."""
        now = self._clock()
        with self._folders_lock:
            if now - self._last_miss_relist < MISS_RELIST_SECONDS:
                return False
            self._last_miss_relist = now
        self.listings.invalidate_folders()
        self.folders()
        return True

    def folder(self, name: str) -> Folder:
        for folder in self.folders():
            if folder.name == name:
                return folder
        raise NotFound(f"no folder {name!r}")

    # --- listings --------------------------------------------------------
    def _sync_lock(self, folder: str) -> threading.Lock:
        with self._sync_locks_guard:
            return self._sync_locks.setdefault(folder, threading.Lock())

    def shown_listing(self, folder: str) -> Listing:
        """listing(), for what is only shown (a directory's entries, a name
        looked up): a folder not listed yet this mount whose previous
        listing is on disk is shown that listing at once, and resynchronised
        in the background (as right after mounting, see _resync_remounted).
        What it shows is then as current as a change another client made a
        moment ago; the resync makes the kernel forget what went away. A
        folder written to this mount (its generation moved) is not shown
        the old listing: that waits for the resync."""
        listing = self.listings.get(folder)
        if self._fresh(listing):
            return listing
        if listing is not None or self.disk is None or self.listings.generation(folder) != 0:
            return self.listing(folder)
        with self._provisional_lock:
            held = self._provisional.get(folder)
        if held is None:
            stored = self.disk.listing(folder)
            if stored is None:
                return self.listing(folder)
            with self._provisional_lock:
                held = self._provisional.setdefault(folder, stored)
            if held is stored:
                self._in_background(lambda: self._resync_quietly(folder, stored))
        # Checked again: a resync may have stored its listing, or a write
        # moved the generation, while the disk was read.
        if self.listings.get(folder) is None and self.listings.generation(folder) == 0:
            self._used(folder)
            return held
        return self.listing(folder)

    def _resync_quietly(self, folder: str, stored: Listing) -> None:
        try:
            self.listing(folder, background=True, stored=stored)
        except ImapFSError as exc:
            log.debug("resynchronising %r in the background failed: %s", folder, exc)
        finally:
            # A resync another thread finished meanwhile leaves this one's entry behind.
            with self._provisional_lock:
                if self._provisional.get(folder) is stored:
                    del self._provisional[folder]

    def _in_background(self, work: Callable[[], None]) -> None:
        """work on one of the workers (see _in_parallel), not waited for:
        what it raises is logged (nobody else would see it)."""
        def logged() -> None:
            try:
                work()
            except Exception:
                log.exception("work in the background failed")
        self._worker_pool().submit(logged)

    def _worker_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._searches_lock:
            if self._workers is None:
                # Made at first use, never before FUSE's init: no thread may exist when the mount forks.
                self._workers = concurrent.futures.ThreadPoolExecutor(
                    # One connection stays free for the reads of whoever else uses the mount.
                    max_workers=max(1, self.options.connections - 1), thread_name_prefix="imapfs-search")
            return self._workers

    def listing(self, folder: str, *, background: bool = False, stored: Listing | None = None) -> Listing:
        """The folder's messages, revalidated when older than listing_ttl.
        background: not asked for by a user, so neither the folder the
        watcher follows nor the start of a walk. stored: the disk's
        listing of the folder, read already."""
        if not background:
            self._used(folder)
        listing = self.listings.get(folder)
        if self._fresh(listing):
            return listing
        if not background:
            self._note_walk(folder)
        with self._sync_lock(folder):
            listing = self.listings.get(folder)
            if self._fresh(listing):
                return listing
            generation = self.listings.generation(folder)
            from_disk = False
            if listing is None and self.disk is not None:
                # A previous mount's listing, resynchronised at the cost of
                # what changed since. Until then shown_listing may show it
                # (generation 0 only); listing() serves it as it is only
                # while the server cannot be reached.
                if stored is None:
                    with self._provisional_lock:
                        stored = self._provisional.get(folder)
                listing = stored if stored is not None else self.disk.listing(folder)
                from_disk = listing is not None
            flag_changes: list[int] = []
            if listing is not None and from_disk and generation == 0:
                with self._provisional_lock:
                    self._provisional[folder] = listing
            stale_names: list[str] = []
            try:
                return self._resync_and_keep(folder, listing, from_disk, generation, flag_changes, stale_names)
            except FolderGone:
                if from_disk and self.disk is not None:
                    # Deleted since the previous mount: shown from disk no more.
                    self.disk.drop_folder(folder)
                    stale_names += sorted(listing.filenames())
                raise
            finally:
                if from_disk:
                    # Dropped only now, with the fresh listing stored: a lookup
                    # in between would otherwise read the disk's again.
                    with self._provisional_lock:
                        self._provisional.pop(folder, None)
                # Last: the kernel, told to forget, looks the names up again
                # at once, and must find only the fresh listing by then.
                self._names_changed(folder, stale_names)

    def _resync_and_keep(self, folder: str, listing: Listing | None, from_disk: bool, generation: int,
                         flag_changes: list[int], stale_names: list[str]) -> Listing:
        """listing()'s work under the folder's sync lock: resync, and keep
        what came of it. stale_names gets the names the kernel may hold
        wrongly now, for listing() to tell once nothing shows them."""
        try:
            fresh = self.pool.run(lambda s: self._sync(s, folder, listing, flag_changes))
        except ServerUnavailable as exc:
            if listing is None:
                raise
            # Offline: show the folder as last seen rather than fail, and
            # try the server again after a short pause, not on every call.
            log.warning("cannot revalidate %r (%s); showing it as last seen", folder, exc)
            listing.stale = False
            listing.synced_at = self._clock() - self.options.listing_ttl + OFFLINE_RETRY_SECONDS
            if from_disk:
                self.listings.put(listing, generation)
            return listing
        if listing is not None and fresh.uidvalidity != listing.uidvalidity:
            stale_names += sorted(listing.filenames())  # the folder was recreated: every name
        elif from_disk and listing is not None and fresh is not listing:
            # It may have been shown (shown_listing): what went away, or
            # changed its name (a Maildir's flags), is forgotten.
            shown = listing.messages
            moved = listing.messages.uids_not_in(fresh.messages) + flag_changes
            stale_names += sorted({shown[uid].filename for uid in moved if uid in shown})
        if listing is not None and fresh is not listing and fresh.uidvalidity == listing.uidvalidity:
            # Sizes learnt on the old table while the resync ran (a read
            # beside it) are kept: the fresh table was copied before. Under
            # a new UIDVALIDITY the same UIDs are other messages.
            fresh.messages.take_verified_sizes(listing.messages)
        if fresh is listing:
            # Unchanged on the server (one EXAMINE said so): the same object, so
            # the directory entries built from it are served again as they are.
            self.listings.confirm(fresh, generation, self._clock())
            return fresh
        if self.listings.put(fresh, generation):
            self._write_back(listing, fresh, flag_changes)
        elif self.disk is not None:
            self._disk_lagging.add(folder)  # guarded by the folder's sync lock, held here
        return fresh

    # --- walks: many folders listed one after another ---------------------
    def _note_walk(self, folder: str) -> None:
        """A folder is about to be listed from the server. When it is the
        second folder in a row under the same parent (find, grep -r, du walk
        a tree so), the parent's other folders are listed in the
        background, side by side over the pool: a walk of 300 small folders
        then waits for a few round trips, not for 300 times three."""
        parent = _parent_name(folder, self._delimiter_of(folder))
        with self._walk_lock:
            previous, self._walk_last = self._walk_last, (parent, folder)
            if previous is None or previous[0] != parent or previous[1] == folder or parent in self._walks_started:
                return
            self._walks_started[parent] = True
        siblings = [f.name for f in self.cached_folders() or []
                    if f.selectable and f.name != folder and _parent_name(f.name, f.delimiter) == parent]
        wanted = [name for name in siblings if not self._fresh(self.listings.get(name))]
        if wanted:
            threading.Thread(target=self._prefetch_listings, args=(wanted,), name="imapfs-walk", daemon=True).start()

    def _delimiter_of(self, folder: str) -> str | None:
        for known in self.cached_folders() or []:
            if known.name == folder:
                return known.delimiter
        return None

    def _prefetch_listings(self, folders: list[str]) -> None:
        """Only folders LIST-STATUS showed small: listing ahead must stay
        cheap (at most fetch_batch messages each, ten to a round trip);
        a big folder is listed when the walk reaches it."""
        small = [name for name in folders if (status := self.listed_status(name)) is not None
                 and status.exists <= self.options.fetch_batch]
        batches = [small[start:start + WALK_BATCH] for start in range(0, len(small), WALK_BATCH)]
        try:
            self._in_parallel(self._list_small, batches)
        except ImapFSError as exc:
            log.debug("listing folders ahead of a walk stopped: %s", exc)

    def _list_small(self, folders: list[str]) -> None:
        """Listings of small folders not listed yet, for all of them in one
        round trip: EXAMINE and UID FETCH 1:* of each, sent at once. A folder
        whose lock another lister holds is left to it."""
        held: list[tuple[str, threading.Lock, int]] = []
        try:
            for name in folders:
                lock = self._sync_lock(name)
                # A folder shown from disk is left to its own resync, which
                # tells the kernel what went away.
                if (self.listings.get(name) is None and self.provisional_listing(name) is None
                        and lock.acquire(blocking=False)):
                    held.append((name, lock, self.listings.generation(name)))
            if not held:
                return
            answers = self.pool.run(lambda session: session.fetch_each_folder(
                [name for name, _, _ in held], METADATA_ITEMS, literal_limit=HEADER_LITERAL_LIMIT))
            for (name, _, generation), (status, fetched) in zip(held, answers, strict=True):
                if status is None or (fetched is None and status.exists):
                    continue  # gone, or refused: the foreground lists it as usual
                listing = Listing(folder=name, uidvalidity=status.uidvalidity, uidnext=status.uidnext,
                                  highestmodseq=status.highestmodseq)
                for uid, data in sorted((fetched or {}).items()):
                    meta = _meta_from_fetch(uid, data)
                    if meta is not None:
                        listing.add(meta)
                if len(listing.messages) != status.exists:
                    continue  # changed meanwhile: the foreground lists it as usual
                if self.provisional_listing(name) is not None:
                    continue  # shown from disk meanwhile: its own resync tells the kernel what went away
                listing.synced_at = self._clock()
                listing.changed_ns = self.started_ns if not self.listings.seen_before(name) else time.time_ns()
                if self.listings.put(listing, generation):
                    self._write_back(None, listing, [])
        finally:
            for _, lock, _ in held:
                lock.release()

    def _write_back(self, old: Listing | None, fresh: Listing, flag_changes: list[int]) -> None:
        """Store a synchronised listing on disk in one transaction, writing
        only what changed when the old one is known: an unchanged folder
        costs nothing, a new message one row."""
        if self.disk is None:
            return
        if old is None or old.uidvalidity != fresh.uidvalidity or fresh.folder in self._disk_lagging:
            self._disk_lagging.discard(fresh.folder)
            self.disk.save_listing(fresh)
            return
        removed = old.messages.uids_not_in(fresh.messages)
        changed = [fresh.messages[uid] for uid in fresh.messages.uids_not_in(old.messages)]
        changed += [meta for uid in dict.fromkeys(flag_changes) if (meta := fresh.messages.get(uid)) is not None]
        if (removed or changed or old.uidnext != fresh.uidnext or old.highestmodseq != fresh.highestmodseq
                or old.changed_ns != fresh.changed_ns):
            self.disk.save_listing(fresh, removed, changed)

    def _used(self, folder: str) -> None:
        if self.on_folder_used is not None:
            self.on_folder_used(folder)

    def _fresh(self, listing: Listing | None) -> bool:
        return (listing is not None and not listing.stale
                and self._clock() - listing.synced_at < self.options.listing_ttl)

    def _sync(self, session: Session, folder: str, old: Listing | None,
              flag_changes: list[int] | None = None) -> Listing:
        """Bring a listing up to date, at a cost proportional to what changed.

        Known UIDVALIDITY: new mail is found with UID SEARCH from the old
        UIDNEXT; flags and expunges with one CHANGEDSINCE ... VANISHED fetch
        (QRESYNC), or, without it, expunges are inferred from EXISTS and only
        then is the full UID list fetched. A changed UIDVALIDITY, or counts
        that do not add up, mean a full listing. The UIDs whose flags
        changed are appended to flag_changes (for the disk cache's write-back).
        """
        if flag_changes is None:
            flag_changes = []
        del flag_changes[:]  # a retried attempt starts over
        try:
            status = session.select(folder, readonly=True)
        except NotFound as exc:
            # Told apart from a message gone between two commands (an
            # EXPUNGEISSUED refusal of a FETCH is a NotFound too).
            raise FolderGone(str(exc)) from exc
        if old is not None and _unchanged(old, status):
            return old  # listing() confirms it as it is: nothing rebuilt, nothing copied
        if old is not None and old.uidvalidity != status.uidvalidity:
            # Every old name is forgotten once the fresh listing is stored
            # (_resync_and_keep): told now, a lookup meanwhile would teach the
            # kernel the old listing again.
            log.info("UIDVALIDITY of %r changed (%s -> %s): dropping what was cached",
                     folder, old.uidvalidity, status.uidvalidity)
            old = None
        listing = Listing(folder=folder, uidvalidity=status.uidvalidity, uidnext=status.uidnext,
                          highestmodseq=status.highestmodseq)
        if old is None:
            self._fetch_metadata(session, listing, session.search_all_uids() if status.exists else [])
        else:
            listing.messages = old.messages.copy()
            flag_changes += self._sync_known(session, listing, old, status.exists)
            if len(listing.messages) != status.exists:
                log.debug("%r: %d listed but EXISTS is %d; relisting UIDs", folder, len(listing.messages),
                          status.exists)
                self._reconcile(session, listing)
        listing.synced_at = self._clock()
        # A directory's mtime must move whenever its entries do (incremental
        # indexers such as notmuch skip directories whose mtime stands still);
        # names follow UIDs and, in a Maildir, flags. Unchanged, it keeps the
        # time it had, from the mount on.
        if old is None:
            listing.changed_ns = self.started_ns if not self.listings.seen_before(folder) else time.time_ns()
        elif listing.flags_moved or not listing.messages.same_uids(old.messages):
            listing.changed_ns = max(time.time_ns(), old.changed_ns + 1)
        else:
            listing.changed_ns = old.changed_ns
        return listing

    def _sync_known(self, session: Session, listing: Listing, old: Listing, exists: int) -> list[int]:
        """Apply what changed since old; returns the UIDs whose flags changed."""
        new_uids: list[int] = []
        changed: list[int] = []
        if old.uidnext is None or listing.uidnext != old.uidnext:
            new_uids = session.search_uids_from(old.uidnext or 1)
            new_uids = [u for u in new_uids if u not in listing.messages]
        modseq_moved = not (old.highestmodseq and listing.highestmodseq == old.highestmodseq)
        if old.messages and modseq_moved and session.qresync and old.highestmodseq:
            flags, vanished = session.changes_since(compact_uid_set(old.messages), old.highestmodseq)
            listing.messages.remove_many(vanished)
            changed = self._apply_flags(listing, flags)
        else:
            if len(old.messages) + len(new_uids) != exists:
                self._drop_expunged(session, listing)
            if old.messages and modseq_moved:
                changed = self._refresh_flags(session, listing, old)
        self._fetch_metadata(session, listing, new_uids)
        return changed

    def _reconcile(self, session: Session, listing: Listing) -> None:
        present = self._drop_expunged(session, listing)
        self._fetch_metadata(session, listing, [u for u in present if u not in listing.messages])

    def _drop_expunged(self, session: Session, listing: Listing) -> list[int]:
        present = session.search_all_uids()
        present_set = set(present)
        listing.messages.remove_many([u for u in listing.messages if u not in present_set])
        return present

    def _fetch_metadata(self, session: Session, listing: Listing, uids: list[int]) -> None:
        """Metadata only, never bodies: batches of fetch_batch UIDs as compact
        sets, pipelined (the next batches are asked for while one is parsed)."""
        def add(fetched: dict[int, dict[bytes, Any]]) -> None:
            listing.messages.add_many([meta for uid, data in sorted(fetched.items())
                                       if (meta := _meta_from_fetch(uid, data)) is not None])

        step = self.options.fetch_batch
        uids = sorted(uids)  # the table's rows are in UID order: appended, never inserted
        session.fetch_each((uids[start:start + step] for start in range(0, len(uids), step)), METADATA_ITEMS, add,
                           literal_limit=HEADER_LITERAL_LIMIT)

    @staticmethod
    def _apply_flags(listing: Listing, flags: dict[int, tuple[str, ...]]) -> list[int]:
        changed = []
        for uid, new_flags in flags.items():
            if listing.messages.set_flags(uid, _flags(new_flags)):
                listing.flags_moved = True
                changed.append(uid)
        return changed

    def _refresh_flags(self, session: Session, listing: Listing, old: Listing) -> list[int]:
        """Flags are the only mutable part of a message; fetch only what changed.
        Returns the UIDs whose flags changed."""
        known = [uid for uid in old.messages if uid in listing.messages]
        changed: list[int] = []
        if not known:
            return changed
        modifiers = None
        if session.has("CONDSTORE") and old.highestmodseq:
            modifiers = [f"CHANGEDSINCE {old.highestmodseq}"]
        for uid, data in session.fetch(compact_uid_set(known), ["UID", "FLAGS"], modifiers).items():
            if b"FLAGS" in data and listing.messages.set_flags(uid, _flags(data[b"FLAGS"])):
                listing.flags_moved = True
                changed.append(uid)
        return changed

    def message(self, folder: str, filename: str) -> tuple[int, MessageMeta]:
        """(UIDVALIDITY, metadata) of the message a file name stands for.

        The name holds the UID. A folder listed this mount (or on disk) is
        looked in, resynchronised if stale. One not listed this mount is not
        listed whole for one name: a ``stat`` of one file right after
        mounting a 100,000-message folder fetches that UID's metadata alone
        (EXAMINE and UID FETCH sent together, one round trip), kept as a
        listing would be (listing_ttl, the folder's generation). With the
        server away, the listing on disk answers, if there is one.
        """
        uid = names.uid_from_filename(filename)
        if uid is None:
            raise NotFound(filename)
        found: tuple[int, MessageMeta | None] | None = None
        with self._provisional_lock:
            provisional = folder in self._provisional
        if self.listings.get(folder) is None and not provisional:
            try:
                found = self._one_message(folder, uid)
            except ServerUnavailable:
                if self.disk is None:
                    raise
                # Offline: the listing on disk, if there is one, is what can be shown.
        if found is None:
            listing = self.shown_listing(folder)
            found = listing.uidvalidity, listing.messages.get(uid)
        uidvalidity, meta = found
        if meta is None or meta.filename != filename:
            raise NotFound(filename)
        return uidvalidity, meta

    def _one_message(self, folder: str, uid: int) -> tuple[int, MessageMeta | None]:
        """One UID's metadata, without a listing of its folder."""
        key = (folder, uid)
        generation = self.listings.generation(folder)
        with self._lookups_lock:
            hit = self._lookups.get(key)
        if hit is not None and hit[0] == generation and self._clock() - hit[1] < self.options.listing_ttl:
            return hit[2], hit[3]
        started = self._clock()
        status, fetched = self.pool.run(lambda session: session.fetch_in(
            folder, [uid], METADATA_ITEMS, literal_limit=HEADER_LITERAL_LIMIT))
        if status is None:
            raise NotFound(f"no folder {folder!r}")
        meta = _meta_from_fetch(uid, fetched[uid]) if uid in fetched else None
        with self._lookups_lock:
            if self.listings.generation(folder) == generation:
                self._lookups[key] = (generation, started, status.uidvalidity, meta)
        return status.uidvalidity, meta

    def invalidate(self, folder: str) -> None:
        self.listings.invalidate(folder)

    # --- what the watcher and the FUSE layer ask of the caches ------------
    def cached_listing(self, folder: str) -> Listing | None:
        """The listing as last synchronised, without asking the server."""
        return self.listings.get(folder)

    def provisional_listing(self, folder: str) -> Listing | None:
        """The previous mount's listing while its first resync is in flight (see shown_listing)."""
        with self._provisional_lock:
            return self._provisional.get(folder)

    def fresh_listing(self, folder: str) -> Listing | None:
        """The listing if it is fresh (within listing_ttl, not marked stale), without asking the server."""
        listing = self.listings.get(folder)
        return listing if self._fresh(listing) else None

    def cached_listings(self) -> list[Listing]:
        """Every folder listed since mount (within the header cache's bound)."""
        return self.listings.snapshot()

    def cached_folders(self) -> list[Folder] | None:
        cached = self.listings.folders()
        return cached[1] if cached else None

    def changed_elsewhere(self, folder: str) -> None:
        """Another client changed folder: the next listing resynchronises."""
        self.listings.mark_stale(folder)

    def folders_changed_elsewhere(self) -> None:
        self.listings.invalidate_folders()

    # --- search ----------------------------------------------------------
    def has_capability(self, name: str) -> bool:
        return self.pool.run(lambda s: s.has(name))

    def search(self, folder: str, keys: tuple[str, ...], charset: str | None = None) -> Found:
        """search_folders() in one folder."""
        return self.search_folders([folder], keys, charset)[folder]

    def search_folders(self, folders: list[str], keys: tuple[str, ...],
                       charset: str | None = None) -> dict[str, Found]:
        """(UIDVALIDITY, UIDs) of each folder's messages matching keys (from
        imapfs.query): UID SEARCH on the server, no body fetched. For a
        folder whose listing is not fresh, the matches' metadata (what a
        listing holds, for those UIDs only) comes with it.

        The folders are spread over the pool's connections, and each
        connection gets all of its folders' commands at once
        (Session.search_each): the whole search costs about one round trip,
        where 30 folders one after another would cost 60.

        Kept for listing_ttl, as a listing is, and dropped as soon as the
        folder's generation moves (a write through this mount, or the
        watcher's notice of a change elsewhere), so a search is never older
        than the listing it is shown with. A folder that cannot be selected
        (deleted meanwhile) has no matches; a search the server refuses
        (BAD, NO [BADCHARSET]) is an InvalidQuery.
        """
        results: dict[str, Found] = {}
        generations = {name: self.listings.generation(name) for name in folders}
        started = self._clock()
        with self._searches_lock:
            for name in folders:
                hit = self._searches.get((name, tuple(keys), charset))
                if hit is not None and hit[0] == generations[name]:
                    results[name] = hit[2]
        for name in folders:
            status = self.listed_status(name)
            if name not in results and status is not None and status.exists == 0:
                results[name] = Found(status.uidvalidity, (), {})  # an empty folder matches nothing
        missing = [name for name in folders if name not in results]
        if not missing:
            return {name: results[name] for name in folders}
        unlisted = frozenset(name for name in missing if not self._fresh(self.listings.get(name)))
        lanes = max(1, min(len(missing), self.options.connections - 1))

        def work(share: list[str]) -> list[Searched]:
            # A text search on a server without an index scans bodies and may take
            # longer than retry_for: not cut off (nor counted as the server down).
            return self.pool.run(lambda session: session.search_each(
                share, keys, charset, METADATA_ITEMS, fetch_in=unlisted, literal_limit=HEADER_LITERAL_LIMIT),
                bounded=False)

        shares = [missing[lane::lanes] for lane in range(lanes)]
        refused: list[str] = []
        for answers in self._in_parallel(work, shares):
            for answer in answers:
                if answer.status is None:
                    results[answer.folder] = Found(0, ())
                    continue
                if answer.refused is not None:
                    refused.append(f"{answer.folder!r}: {answer.refused}")
                    continue
                metas = None
                if answer.metadata is not None:
                    metas = {uid: meta for uid in answer.uids if uid in answer.metadata
                             and (meta := _meta_from_fetch(uid, answer.metadata[uid])) is not None}
                found = Found(answer.status.uidvalidity, tuple(answer.uids), metas)
                results[answer.folder] = found
                with self._searches_lock:
                    if self.listings.generation(answer.folder) == generations[answer.folder]:
                        self._searches[(answer.folder, tuple(keys), charset)] = \
                            (generations[answer.folder], started, found)
        if refused:
            raise InvalidQuery(f"the server refused the search in {'; '.join(refused)}")
        return {name: results[name] for name in folders}

    def listings_of(self, folders: list[str]) -> dict[str, Listing]:
        """listing() of each folder, those that need the server synchronised side by side."""
        fresh = {name: listing for name in folders if self._fresh(listing := self.listings.get(name))}
        missing = [name for name in folders if name not in fresh]
        fresh.update(zip(missing, self.each(self.listing, missing), strict=True))
        return {name: fresh[name] for name in folders}

    def each(self, work: Callable[[str], T], folders: list[str]) -> list[T]:
        """work(folder) for each folder, side by side (_in_parallel)."""
        return self._in_parallel(work, folders)

    def _in_parallel(self, work: Callable[[Any], T], tasks: list[Any]) -> list[T]:
        """work(task) for each task, up to connections - 1 at once (each
        borrows its own session); the first error is raised once all ended."""
        if len(tasks) <= 1:
            return [work(task) for task in tasks]
        workers = self._worker_pool()
        futures = [workers.submit(work, task) for task in tasks]
        concurrent.futures.wait(futures)
        return [future.result() for future in futures]

    # --- bodies ----------------------------------------------------------
    def read(self, folder: str, uidvalidity: int, meta: MessageMeta, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of a message, exactly as the server has them.

        Small messages are fetched whole and the shown size corrected from
        the real length; large ones in aligned chunks, so reading the start
        of a huge message fetches only that.
        """
        self._used(folder)
        if size <= 0 or (meta.size_verified and offset >= meta.size):
            return b""
        if meta.size <= WHOLE_LIMIT:
            return self.body(folder, uidvalidity, meta)[offset:offset + size]
        pieces = []
        position, end = offset, offset + size
        while position < end:
            index = position // CHUNK_SIZE
            chunk = self._chunk(folder, uidvalidity, meta, index)
            within = position - index * CHUNK_SIZE
            piece = chunk[within:within + (end - position)]
            if not piece:
                break
            pieces.append(piece)
            position += len(piece)
            if len(chunk) < CHUNK_SIZE:
                break  # the message ends inside this chunk
        if not meta.size_verified and end >= meta.size:
            self._find_real_end(folder, uidvalidity, meta)
        return b"".join(pieces)

    def _body_cached(self, key: Hashable) -> bool:
        return key in self.bodies or (self.disk is not None and self.disk.has_body(key))

    def _cached_body(self, key: Hashable) -> bytes | None:
        """A body or chunk from memory, else from the disk cache (then kept in memory too)."""
        data = self.bodies.get(key)
        if data is None and self.disk is not None:
            data = self.disk.get_body(key)
            if data is not None:
                self.bodies.put(key, data)
        return data

    def _keep_body(self, key: Hashable, data: bytes) -> None:
        self.bodies.put(key, data)
        if self.disk is not None:
            self.disk.put_body(key, data)

    def _learn_size_kept(self, meta: MessageMeta, real_size: int, folder: str, uidvalidity: int) -> None:
        """_learn_size, and the folder's listing (in memory and on disk) told
        when the size shown changes or becomes verified. meta is a copy of
        the listing's row (MessageTable): what another copy learnt first is
        taken from the row, so it is warned about and counted once."""
        listing = self.listings.get(folder) or self.provisional_listing(folder)
        table = listing.messages if listing is not None and listing.uidvalidity == uidvalidity else None
        row = table.get(meta.uid) if table is not None else None
        if row is not None and row.size_verified and not meta.size_verified:
            meta.size, meta.size_verified = row.size, True
        before = (meta.size, meta.size_verified)
        self._learn_size(meta, real_size, folder, table)
        if (meta.size, meta.size_verified) != before:
            if table is not None:
                table.set_size(meta.uid, meta.size, meta.size_verified)
            if self.disk is not None:
                self.disk.note_size(folder, uidvalidity, meta)

    def body(self, folder: str, uidvalidity: int, meta: MessageMeta) -> bytes:
        key = (folder, uidvalidity, meta.uid)
        data = self._cached_body(key)
        if data is None:
            self.readahead.wait_for(key)
            data = self._cached_body(key)
        listing = self.listings.get(folder)
        if listing is not None and listing.uidvalidity != uidvalidity:
            listing = None
        if data is not None:
            if listing is not None:
                self.readahead.note_hit(listing, meta.uid)
        else:
            batch = self.readahead.plan(listing, meta.uid) if listing is not None else [meta.uid]
            if len(batch) > 1:
                keys = self.readahead.claim([(folder, uidvalidity, uid) for uid in batch])
                try:
                    self.fetch_bodies(folder, uidvalidity, keys)
                finally:
                    self.readahead.release(keys)
                data = self._cached_body(key)
            if data is None:
                data = self.pool.run(lambda s: self._fetch_part(s, folder, uidvalidity, meta.uid, None))
                self._keep_body(key, data)
        self._learn_size_kept(meta, len(data), folder, uidvalidity)
        return data

    def fetch_bodies(self, folder: str, uidvalidity: int, keys: list[Hashable]) -> None:
        """Fetch many whole bodies in one UID FETCH into the body cache (read-ahead).

        The caller has claimed keys (readahead.claim) and releases them.
        Only bodies that arrive intact are cached; anything odd (a message
        expunged meanwhile) is left for the reader's own fetch, which knows
        how to tell "gone" from "empty".
        """
        uids = [key[2] for key in keys]  # type: ignore[index]
        if not uids:
            return

        def work(session: Session) -> dict[int, dict[bytes, Any]]:
            status = session.ensure_selected(folder)
            if status.uidvalidity != uidvalidity:
                return {}
            return session.fetch(uids, ["BODY.PEEK[]"])

        listing = self.listings.get(folder)
        messages = listing.messages if listing is not None and listing.uidvalidity == uidvalidity else {}
        for uid, data in self.pool.run(work).items():
            body = data.get(b"BODY[]")
            if body:
                self._keep_body((folder, uidvalidity, uid), body)
                meta = messages.get(uid)
                if meta is not None and not meta.size_verified:
                    # Correct a wrong RFC822.SIZE before the kernel reads the
                    # file (it clamps its cached reads at the size it holds).
                    self._learn_size_kept(meta, len(body), folder, uidvalidity)

    def _chunk(self, folder: str, uidvalidity: int, meta: MessageMeta, index: int) -> bytes:
        key = (folder, uidvalidity, meta.uid, index)
        data = self._cached_body(key)
        if data is None:
            span = self._span_for(key)
            start = index * CHUNK_SIZE
            blob = self.pool.run(
                lambda s: self._fetch_part(s, folder, uidvalidity, meta.uid, (start, span * CHUNK_SIZE)))
            for i in range(span):
                piece = blob[i * CHUNK_SIZE:(i + 1) * CHUNK_SIZE]
                if i and not piece:
                    break
                self._keep_body((folder, uidvalidity, meta.uid, index + i), piece)
                if len(piece) < CHUNK_SIZE:
                    break
            data = blob[:CHUNK_SIZE]
        if len(data) < CHUNK_SIZE:
            self._learn_size_kept(meta, index * CHUNK_SIZE + len(data), folder, uidvalidity)
        return data

    def _span_for(self, key: tuple[str, int, int, int]) -> int:
        """Chunks to fetch from key on: 1 for a jump, doubling while a reader goes straight on."""
        message, index = key[:3], key[3]
        with self._spans_lock:
            last = self._spans.get(message)
            span = min(last[1] * 2, MAX_SPAN_CHUNKS) if last and last[0] == index - 1 else 1
            self._spans[message] = (index + span - 1, span)
        return span

    def _learn_size(self, meta: MessageMeta, real_size: int, folder: str | None = None,
                    table: MessageTable | None = None) -> None:
        """meta's size is real_size, verified; a change is counted and told
        (on_size_corrected) only once table (the listing's) shows it: the
        kernel, told to forget, asks again at once."""
        if meta.size != real_size:
            log.warning("server said UID %d has %d bytes, it has %d; showing the real size",
                        meta.uid, meta.size, real_size)
            grew = real_size > meta.size
            meta.size = real_size
            meta.size_verified = True
            if table is not None:
                table.set_size(meta.uid, real_size, True)
            self.size_epoch += 1
            if folder is not None and self.on_size_corrected is not None:
                self.on_size_corrected(folder, meta.filename, grew)
        meta.size_verified = True

    def _find_real_end(self, folder: str, uidvalidity: int, meta: MessageMeta) -> None:
        """A large message read up to its reported end: read on until a chunk
        comes back short, so that an RFC822.SIZE that was too small gets
        corrected. A reader that trusts the reported size (the kernel's page
        cache does) would never ask for the bytes past it."""
        index = meta.size // CHUNK_SIZE
        while not meta.size_verified:
            if len(self._chunk(folder, uidvalidity, meta, index)) < CHUNK_SIZE:
                break
            index += 1

    def _names_changed(self, folder: str, filenames: list[str]) -> None:
        if self.on_names_changed is not None and filenames:
            self.on_names_changed(folder, filenames)

    def _fetch_part(self, session: Session, folder: str, uidvalidity: int, uid: int,
                    part: tuple[int, int] | None, section: str = "") -> bytes:
        """One FETCH of a whole body or a range, checked to belong to exactly
        (folder, uidvalidity, uid).

        A message another client expunged can still be fetched in a session
        that has not been told yet, and servers then answer NIL, an empty
        string or NO [EXPUNGEISSUED]. None of these is the message's content:
        the session's view is refreshed (SELECT) and the fetch repeated once;
        if the message is still not there it is gone.
        """
        status = session.ensure_selected(folder)
        if status.uidvalidity != uidvalidity:
            raise StaleMessage(f"folder {folder!r} was recreated; UID {uid} no longer names this message")
        item = f"BODY.PEEK[{section}]" if part is None else f"BODY.PEEK[{section}]<{part[0]}.{part[1]}>"
        # RFC 3501 answers a partial fetch as BODY[]<origin>; some servers
        # add a length too (BODY[]<origin.length>). Both are this range.
        exact = f"BODY[{section}]".encode() if part is None else f"BODY[{section}]<{part[0]}>".encode()
        with_length = None if part is None else f"BODY[{section}]<{part[0]}.".encode()

        def matches(key: bytes) -> bool:
            return key == exact or (with_length is not None and key.startswith(with_length)
                                    and key.endswith(b">") and key[len(with_length):-1].isdigit())

        for attempt in range(2):
            if attempt:
                status = session.select(folder)
                if status.uidvalidity != uidvalidity:
                    raise StaleMessage(f"folder {folder!r} was recreated")
            dropped = session.literals_dropped
            try:
                # A range is never longer than asked for: more is not held.
                data = session.fetch([uid], [item], literal_limit=part[1] if part else None).get(uid)
            except NotFound:  # NO [EXPUNGEISSUED] and the like
                continue
            if session.literals_dropped != dropped:
                raise ProtocolError(f"the server answered {item} of UID {uid} in {folder!r} with more bytes "
                                    "than asked for")
            key = next((key for key in data if matches(key)), None) if data else None
            if data and key is None:
                answered = sorted(key for key in data if key.startswith((b"BODY", b"RFC822")))
                if answered:
                    # A body, but not under a name imapfs asked for: the
                    # server speaks differently, the message is not gone.
                    raise ProtocolError(f"the server answered {item} of UID {uid} in {folder!r} with "
                                        f"{b', '.join(answered).decode('ascii', 'replace')}, which imapfs "
                                        "cannot match")
            value = data[key] if key is not None else None
            if value is None or (value == b"" and not section and (part is None or part[0] == 0)):
                continue  # a part may be empty; a whole message never is
            return value
        raise NotFound(f"UID {uid} is no longer in {folder!r}")

    # --- parts: BODYSTRUCTURE, header, one part --------------------------
    # What .parts and .text read of a message without its whole body. All of
    # it is immutable under (folder, UIDVALIDITY, UID), so cached for good.

    def header(self, folder: str, uidvalidity: int, uid: int) -> bytes:
        """The message's header block, from BODY.PEEK[HEADER] alone (never \\Seen)."""
        key = (folder, uidvalidity, uid, "HEADER")
        data = self.bodies.get(key)
        if data is None:
            data = self.pool.run(lambda s: self._fetch_part(s, folder, uidvalidity, uid, None, "HEADER"))
            self.bodies.put(key, data)
        return data

    def structure(self, folder: str, uidvalidity: int, uid: int) -> tuple[mime.StructPart, dict[str, bytes]]:
        """The message's BODYSTRUCTURE, and the header fields describing each
        of its parts (BODY.PEEK[HEADER], [S.MIME], [S.HEADER]), fetched in one
        session: two small FETCHes, whatever the message's size."""
        key = (folder, uidvalidity, uid)
        with self._structures_lock:
            cached = self._structures.get(key)
        if cached is not None:
            return cached

        def work(session: Session) -> tuple[mime.StructPart, dict[str, bytes]]:
            status = session.ensure_selected(folder)
            if status.uidvalidity != uidvalidity:
                raise StaleMessage(f"folder {folder!r} was recreated; UID {uid} no longer names this message")
            data = session.fetch([uid], ["BODYSTRUCTURE"], literal_limit=STRUCTURE_LITERAL_LIMIT).get(uid)
            if not data or b"BODYSTRUCTURE" not in data:
                raise NotFound(f"UID {uid} is no longer in {folder!r}")
            try:
                tree = mime.parse_bodystructure(data[b"BODYSTRUCTURE"])
            except (TypeError, ValueError, IndexError) as exc:
                raise ProtocolError(f"cannot read the BODYSTRUCTURE of UID {uid} in {folder!r}: {exc}") from exc
            sections = sorted({part.header_section for part in tree.walk()})[:MAX_HEADER_SECTIONS]
            got = session.fetch([uid], [f"BODY.PEEK[{s}]" for s in sections],
                                literal_limit=HEADER_LITERAL_LIMIT).get(uid) or {}
            return tree, {s: bytes(got.get(f"BODY[{s}]".encode()) or b"") for s in sections}

        result = self.pool.run(work)
        if result[1].get("HEADER"):
            self.bodies.put((folder, uidvalidity, uid, "HEADER"), result[1]["HEADER"])
        with self._structures_lock:
            self._structures[key] = result
        return result

    def part(self, folder: str, uidvalidity: int, uid: int, section: str) -> bytes:
        """Part section of a message as stored (still transfer-encoded), from
        BODY.PEEK[section] in ranges of PART_RANGE: no answer is larger than
        that, whatever the BODYSTRUCTURE said."""
        key = (folder, uidvalidity, uid, section)
        data = self.bodies.get(key)
        if data is not None:
            return data
        pieces = []
        offset = 0
        while True:
            piece = self.pool.run(
                lambda s, start=offset: self._fetch_part(s, folder, uidvalidity, uid, (start, PART_RANGE), section))
            pieces.append(piece)
            offset += len(piece)
            if len(piece) < PART_RANGE:
                break
        data = b"".join(pieces)
        self.bodies.put(key, data)
        return data

    # --- writing ---------------------------------------------------------
    # Writes are never retried once sent (pool.run(idempotent=False)), and
    # every successful one marks the folders it touched stale, so the next
    # listing resynchronises instead of serving what was cached before.

    def append(self, folder: str, literal: Literal, flags: tuple[str, ...],
               when: dt.datetime | None, unless_present: bool = True) -> tuple[int, int] | None:
        """APPEND a message exactly once; returns (UIDVALIDITY, UID) when the server says (UIDPLUS).

        With unless_present, a message the folder already holds byte for
        byte (the literal's line endings are CRLF, as the server stores them)
        is not appended again, and its (UIDVALIDITY, UID) is returned: so
        ``rsync -rt`` twice, ``cp`` twice and ``cp -n`` file a message once.
        That costs an EXAMINE and one UID SEARCH LARGER/SMALLER, plus a
        fetch of each message of exactly the same size (none, usually). Two
        programs filing the same message at the same instant may still both
        append it: IMAP has no conditional APPEND. Its flags and date are
        left as they are.

        A failure before the command was sent whole is retried on a fresh
        connection (the server cannot have stored an incomplete command). A
        failure after it (a lost reply, a timeout) means nobody knows: the
        message is then looked for by content, again and again for up to
        ``retry_for`` seconds, since a slow server may still be storing it,
        and never sent again. Not found by then, the APPEND fails
        (WriteUncertain): the writer still has its copy, and the folder holds
        the message at most once.
        """
        if unless_present:
            digest = _once(literal.digest)
            present = self.pool.run(lambda s: self._find_by_content(s, folder, literal.size, digest, None))
            if present is not None:
                log.info("%d bytes are already in %r as UID %d; not appended again",
                         literal.size, folder, present[1])
                return present
        known = self.listings.get(folder)
        # UIDs the message may get start at UIDNEXT from before the APPEND;
        # a cached one can only be lower, which only widens the search.
        first_uid = known.uidnext if known is not None else None
        try:
            try:
                appended = self.pool.run(lambda s: s.append(folder, literal, flags, when), bounded=False,
                                         check_idle=True)
            except WriteUncertain as exc:
                appended = self._confirm_append(folder, literal, first_uid, exc)
        finally:
            self.listings.mark_stale(folder)
        log.info("appended %d bytes to %r as %s", literal.size, folder,
                 f"UID {appended[1]}" if appended else "a UID the server did not say")
        return appended

    def _confirm_append(self, folder: str, literal: Literal, first_uid: int | None,
                        cause: WriteUncertain) -> tuple[int, int]:
        """After an APPEND whose outcome is unknown: (UIDVALIDITY, UID) of the
        message if the folder holds it byte for byte, looking until retry_for
        has passed; WriteUncertain if it never shows."""
        log.warning("no answer to the APPEND of %d bytes to %r (%s); looking for it by content",
                    literal.size, folder, cause)
        digest = _once(literal.digest)
        deadline = self._clock() + max(self.options.retry_for, 1.0)
        delay = 0.25
        while True:
            try:
                found = self.pool.run(lambda s: self._find_by_content(s, folder, literal.size, digest, first_uid))
            except ServerUnavailable as exc:
                found = None
                log.info("cannot look for the APPEND to %r yet: %s", folder, exc)
            if found is not None:
                log.warning("the APPEND to %r arrived after all, as UID %d", folder, found[1])
                return found
            if self._clock() + delay > deadline:
                raise WriteUncertain(
                    f"the server never confirmed the APPEND of {literal.size} bytes to {folder!r}, and the "
                    f"message was not found there within {self.options.retry_for:g} s; it was not sent again "
                    f"(a slow server may still store it once): check {folder!r} before copying it again")
            time.sleep(delay)
            delay = min(delay * 2, 4.0)

    def _find_by_content(self, session: Session, folder: str, size: int, digest: Callable[[], bytes],
                         first_uid: int | None) -> tuple[int, int] | None:
        """A message of folder (from first_uid on) that is size bytes long and
        hashes to digest(), newest first; digest() is called only once a
        message of that size exists.

        A fresh EXAMINE, not the session's selected state: a session sees
        another's APPEND only once it synchronises (Dovecot does at
        command boundaries), and a copy missed would be filed twice."""
        status = session.select(folder, readonly=True)
        criteria = ["LARGER", str(size - 1), "SMALLER", str(size + 1)]
        if first_uid is not None:
            criteria = ["UID", f"{first_uid}:*", *criteria]
        for uid in reversed(session.search_uids(criteria)):  # the newest is the likeliest
            if self._server_digest(session, folder, status.uidvalidity, uid, size) == digest():
                return status.uidvalidity, uid
        return None

    def _server_digest(self, session: Session, folder: str, uidvalidity: int, uid: int, size: int) -> bytes | None:
        """SHA-256 of a message as the server has it, fetched in bounded pieces."""
        digest = hashlib.sha256()
        offset = 0
        while offset < size:
            try:
                piece = self._fetch_part(session, folder, uidvalidity, uid, (offset, spool.CHUNK))
            except NotFound:
                return None
            if not piece:
                break
            digest.update(piece)
            offset += len(piece)
        return digest.digest()

    def _select_for_write(self, session: Session, folder: str, uidvalidity: int, uid: int) -> None:
        status = session.select(folder, readonly=False)
        if status.uidvalidity != uidvalidity:
            raise StaleMessage(f"folder {folder!r} was recreated")
        if uid not in session.fetch([uid], ["UID"]):
            raise NotFound(f"UID {uid} is no longer in {folder!r}")

    def move(self, source: str, uidvalidity: int, uid: int, target: str) -> None:
        """Move one message between folders without it ever being in neither.

        UID MOVE (RFC 6851) is atomic. Without it: UID COPY, then \\Deleted
        and UID EXPUNGE of that UID only (UIDPLUS). With neither (GNU
        Mailutils imap4d), a plain EXPUNGE, which takes every message marked
        \\Deleted, so only when ours is the only one (_expunge_alone); with
        another marked, the move is refused before the COPY. A failure after
        the COPY leaves the message in both folders, and says so.
        """
        if source == target:
            return

        def work(session: Session) -> None:
            self._select_for_write(session, source, uidvalidity, uid)
            if session.has("MOVE"):
                session.move([uid], target)
                return
            marked_before = None
            if not session.has("UIDPLUS"):
                # Checked before the COPY too, so that the usual refusal
                # leaves the message where it was, in one folder.
                marked_before = self._marked_deleted(session, source, uid, "moved")
            session.copy([uid], target)
            try:
                if marked_before is None:
                    session.add_flags([uid], ["\\Deleted"])
                    session.uid_expunge([uid])
                else:
                    self._expunge_alone(session, source, uid, marked_before, copied_to=target)
            except Exception:
                log.error("UID %d was copied from %r to %r but could not be removed from %r; "
                          "it is now in both folders", uid, source, target, source)
                raise

        try:
            self.pool.run(work, idempotent=False)
        finally:
            self.listings.mark_stale(source)
            self.listings.mark_stale(target)
        log.info("moved UID %d from %r to %r", uid, source, target)

    @staticmethod
    def _marked_deleted(session: Session, folder: str, uid: int, verb: str) -> bool:
        """Whether uid is marked \\Deleted already; Refused if another message of
        the selected folder is (a plain EXPUNGE would take it too)."""
        marked = session.search_uids(["DELETED"])
        others = [u for u in marked if u != uid]
        if others:
            raise Refused(
                f"UID {uid} of {folder!r} was not {verb}: the server lacks UIDPLUS and MOVE, so only a plain "
                f"EXPUNGE could remove it, and that would also expunge the {len(others)} other message(s) "
                f"marked \\Deleted there (UID {compact_uid_set(others)}); expunge or undelete them first")
        return uid in marked

    def _expunge_alone(self, session: Session, folder: str, uid: int, marked_before: bool,
                       copied_to: str | None = None) -> None:
        """Mark uid \\Deleted and EXPUNGE, on a server without UIDPLUS, only if no
        other message of the folder is marked: checked with UID SEARCH DELETED
        right before the EXPUNGE. Otherwise uid gets its flags back and Refused.
        What stays open: another client marking a message in the moment
        between that search and the EXPUNGE (IMAP has no conditional EXPUNGE)."""
        if not marked_before:
            session.add_flags([uid], ["\\Deleted"])
        try:
            self._marked_deleted(session, folder, uid, "removed")
        except Refused as exc:
            if not marked_before:
                session.remove_flags([uid], ["\\Deleted"])
            if copied_to is None:
                raise
            raise Refused(f"{exc}; it was copied to {copied_to!r} first and is now in both folders") from None
        session.expunge()

    def find_trash_folder(self) -> str | None:
        """The folder with the \\Trash special-use attribute, else one named Trash, else None."""
        folders = self.folders()
        for folder in folders:
            if folder.special_use and folder.special_use.lower() == "\\trash":
                return folder.name
        for folder in folders:
            if folder.name.lower() == "trash" or folder.name.lower().endswith(("/trash", ".trash")):
                return folder.name
        return None

    def trash_folder(self) -> str:
        """The Trash folder (find_trash_folder), created as Trash if there is none:
        in the personal namespace, so "INBOX.Trash" where that is "INBOX."
        (Cyrus with Debian's defaults, Courier), which refuse a top-level one."""
        found = self.find_trash_folder()
        if found is not None:
            return found
        name = self.pool.run(lambda session: _personal_prefix(session.namespace()), idempotent=True) + "Trash"
        self.create_folder(name)
        return name

    def delete(self, folder: str, uidvalidity: int, uid: int, actor: Hashable = None) -> None:
        """rm: move to Trash; in Trash (or with delete=expunge), expunge that UID only.

        ``actor`` names the command deleting (the caller's process). What an
        actor moved into Trash, it may not expunge: `rm -r` of a tree holding
        both a folder and Trash would otherwise expunge, on reaching Trash,
        the mail it had just moved there. Precisely: once an actor has moved
        mail to Trash, it may expunge there only UIDs below Trash's UIDNEXT
        from before its first move, that is mail that was in Trash already.
        """
        trash = None if self.options.delete == "expunge" else self.trash_folder()
        if trash is not None and trash != folder:
            if actor is not None:
                self._note_trashing(actor, trash)
            self.move(folder, uidvalidity, uid, trash)
            return
        if trash is not None and actor is not None:
            bound = self._trashing.get(actor)
            if bound is not None and bound[0] == uidvalidity and uid >= bound[1]:
                raise Refused(f"UID {uid} came to {trash!r} after this command began deleting into it; "
                              "it is not expunged by the same command (run rm again to empty Trash)")

        def work(session: Session) -> None:
            self._select_for_write(session, folder, uidvalidity, uid)
            if not session.has("UIDPLUS"):
                # The refusal, if any, comes before anything changed.
                marked_before = self._marked_deleted(session, folder, uid, "expunged")
                self._expunge_alone(session, folder, uid, marked_before)
                return
            session.add_flags([uid], ["\\Deleted"])
            session.uid_expunge([uid])

        try:
            self.pool.run(work, idempotent=False)
        finally:
            self.listings.mark_stale(folder)
        log.info("expunged UID %d from %r", uid, folder)

    def _note_trashing(self, actor: Hashable, trash: str) -> None:
        """Remember Trash's (UIDVALIDITY, UIDNEXT) from before actor's first move into it."""
        with self._trashing_lock:
            if actor in self._trashing:
                return
        status = self.pool.run(lambda s: s.status_of(trash))
        with self._trashing_lock:
            self._trashing.setdefault(actor, (int(status[b"UIDVALIDITY"]), int(status[b"UIDNEXT"])))

    def set_flags(self, folder: str, uidvalidity: int, uid: int, flags: tuple[str, ...]) -> None:
        """Replace a message's flags (STORE FLAGS); safe to repeat, so retried."""
        def work(session: Session) -> None:
            self._select_for_write(session, folder, uidvalidity, uid)
            session.set_flags([uid], flags)

        try:
            self.pool.run(work, idempotent=True)
        finally:
            self.listings.mark_stale(folder)

    def create_folder(self, name: str) -> None:
        """CREATE a folder; NotPermitted when the server will not have it there.

        Servers whose personal namespace has a prefix (Courier and Cyrus
        with Debian's defaults: "INBOX.") refuse names outside it. Such a
        name is refused here, before asking, naming the one that would work
        (or, where it falls in another namespace, as Cyrus's top level does
        in its shared one, after the server refused, with the same hint);
        a CREATE the server refuses for any other reason is NotPermitted too,
        with the server's words, since asking again changes nothing.
        """
        def work(session: Session) -> None:
            namespaces = session.namespace()
            _check_namespace(namespaces, name)
            try:
                session.create_folder(name)
            except (AlreadyExists, QuotaError):
                raise
            except ProtocolError as exc:
                hint = _outside_personal_hint(namespaces, name)
                raise NotPermitted(f"the server refused to create folder {name!r}: {exc}"
                                   + (f" ({hint})" if hint else "")) from exc

        try:
            self.pool.run(work, idempotent=False)
        finally:
            self.listings.invalidate_folders()
        log.info("created folder %r", name)

    def delete_folder(self, name: str) -> None:
        """DELETE a folder, only if it holds no messages (IMAP would delete them with it)."""
        if name == self.find_trash_folder():
            # rm goes there: deleting it would leave the next rm to create a
            # new Trash elsewhere, and `rm -r` of its parent would take it.
            raise Refused(f"{name!r} is the Trash folder; imapfs keeps it")

        def work(session: Session) -> None:
            folder = next((f for f in session.list_folders() if f.name == name), None)
            if folder is None:
                raise NotFound(f"no folder {name!r}")
            if folder.selectable and session.select(name, readonly=True).exists:
                raise NotEmpty(f"folder {name!r} still holds messages")
            session.delete_folder(name)

        try:
            self.pool.run(work, idempotent=False)
        finally:
            self.listings.invalidate_folders()
            self.listings.invalidate(name)
        log.info("deleted folder %r", name)

    def rename_folder(self, old: str, new: str) -> None:
        try:
            self.pool.run(lambda s: s.rename_folder(old, new), idempotent=False)
        finally:
            self.listings.invalidate_folders()
            self.listings.invalidate(old)
        log.info("renamed folder %r to %r", old, new)


class Found(NamedTuple):
    """What a search found in one folder: UIDs, valid for that UIDVALIDITY (0: folder gone)."""

    uidvalidity: int
    uids: tuple[int, ...]
    # The matches' metadata by UID, fetched with the search where the folder's
    # listing was not fresh (None: not fetched; use the listing).
    metas: dict[int, MessageMeta] | None = None


def _personal_prefix(namespaces: Namespaces) -> str:
    """Where new folders of the user's own go: "" if any personal namespace has
    no prefix, else the first one's prefix ("INBOX.")."""
    if not namespaces.personal or any(not prefix for prefix, _ in namespaces.personal):
        return ""
    return namespaces.personal[0][0]


def _within(namespaces: Namespaces, prefix: str, name: str) -> bool:
    """Whether name is in the namespace of prefix. INBOX and its prefix are
    matched without regard to case, as RFC 3501 5.1 reads INBOX."""
    bare = prefix[:-1] if prefix and prefix[-1:] in {d for _, d in namespaces.all() if d} else prefix
    if prefix.upper().startswith("INBOX"):
        return name.upper().startswith(prefix.upper()) or name.upper() == bare.upper()
    return name.startswith(prefix) or name == bare


def _outside_personal_hint(namespaces: Namespaces, name: str) -> str:
    """For a new folder name outside the personal namespace, when that has a
    prefix ("INBOX."): what the server refuses and what to make instead. Else ""."""
    prefix = _personal_prefix(namespaces)
    if not prefix or name.upper() == "INBOX" or any(_within(namespaces, p, name) for p, _ in namespaces.personal):
        return ""
    return (f"this server keeps personal folders under {prefix!r} (its NAMESPACE) and refuses {name!r}; "
            f"make it inside that folder instead, as {prefix + name!r}")


def _check_namespace(namespaces: Namespaces, name: str) -> None:
    """NotPermitted for a new folder name outside every namespace, when no
    personal namespace has an empty prefix: the server would refuse it
    (Dovecot: "Client tried to access nonexistent namespace"), and the
    message can say what to make instead. A name in another user's or a
    shared namespace is the server's to refuse (Cyrus's shared one has the
    empty prefix: top-level folders are shared ones, made by its admins)."""
    hint = _outside_personal_hint(namespaces, name)
    if hint and not any(_within(namespaces, prefix, name) for prefix, _ in namespaces.other + namespaces.shared):
        raise NotPermitted(hint)


_FLAG_TUPLES: dict[tuple[Any, ...], tuple[str, ...]] = {}


def _once(compute: Callable[[], bytes]) -> Callable[[], bytes]:
    """compute, called at most once (a digest is a pass over the whole message)."""
    done: list[bytes] = []

    def value() -> bytes:
        if not done:
            done.append(compute())
        return done[0]
    return value


def _flags(raw: Any) -> tuple[str, ...]:
    """Flags as a tuple shared by every message with the same flags: a
    folder has a handful of combinations, and 10,000 copies cost memory."""
    key = tuple(raw)
    shared = _FLAG_TUPLES.get(key)
    if shared is not None:
        return shared
    flags = (f.decode("utf-8", "replace") if isinstance(f, bytes) else str(f) for f in raw)
    # \Recent belongs to one session (RFC 3501 2.3.2); showing it would only confuse.
    value = tuple(sys.intern(f) for f in flags if f.lower() != "\\recent")
    if len(_FLAG_TUPLES) < 4096:
        _FLAG_TUPLES[key] = value
    return value


def _parent_name(folder: str, delimiter: str | None) -> str | None:
    """The folder's parent's name ("" for a top-level folder; None without a delimiter)."""
    if not delimiter:
        return None
    return folder.rsplit(delimiter, 1)[0] if delimiter in folder else ""


def _unchanged(listing: Listing, status: FolderStatus) -> bool:
    """Whether a folder whose EXAMINE gave status still holds exactly what
    listing shows: same UIDVALIDITY, UIDNEXT and message count, and under
    CONDSTORE the same HIGHESTMODSEQ (no flag changed, nothing expunged).
    Without HIGHESTMODSEQ, flags may have moved unseen: never unchanged."""
    return (listing.highestmodseq is not None and status.highestmodseq == listing.highestmodseq
            and status.uidvalidity == listing.uidvalidity and status.uidnext == listing.uidnext
            and status.exists == len(listing.messages))


def _meta_from_fetch(uid: int, data: dict[bytes, Any]) -> MessageMeta | None:
    try:
        size = int(data[b"RFC822.SIZE"])
        when = data[b"INTERNALDATE"]
    except KeyError:
        log.warning("server sent incomplete metadata for UID %d; skipping it", uid)
        return None
    if not 0 < uid <= MAX_UID or size < 0:
        # A listing's columns hold no other: skipped, so the rest of the folder is still shown.
        log.warning("server sent UID %d with size %d, impossible; skipping it", uid, size)
        return None
    internaldate = when.timestamp() if hasattr(when, "timestamp") else 0.0
    header = b""
    for key, value in data.items():
        if key.startswith(b"BODY[HEADER") and value:
            header = value
            break
    subject_raw = names.header_value(header, "Subject")
    subject = names.decode_header_text(subject_raw) if subject_raw else ""
    return MessageMeta(
        uid=uid,
        size=size,
        internaldate=internaldate,
        flags=_flags(data.get(b"FLAGS", ())),
        filename=names.message_filename(uid, internaldate, subject),
        message_id=names.message_id_from_headers(header),
    )
