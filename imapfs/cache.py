"""Caches: folder listings (header cache) and message bodies.

Bodies are immutable for a given (folder, UIDVALIDITY, UID) (RFC 3501
2.3.1.1), so they are keyed by exactly that and never need invalidating;
a folder whose UIDVALIDITY changed simply stops asking for the old keys and
the LRU ages them out. Listings change, so each folder has a generation
counter: a listing fetched while a write to that folder ran (the generation
moved on in between) is not stored, as sshfs does in cache.c.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import TypeVar

from cachetools import LRUCache

from imapfs.model import Folder, Listing, MessageMeta

log = logging.getLogger(__name__)
T = TypeVar("T")

BodyKey = tuple[str, int, int]  # (folder, uidvalidity, uid)


class BodyCache:
    """Message bodies (or aligned chunks of them) in an LRU bounded by bytes."""

    def __init__(self, max_bytes: int) -> None:
        self._lock = threading.Lock()  # guards _lru: cachetools caches are not thread safe
        self.max_bytes = max_bytes
        self._lru: LRUCache[Hashable, bytes] = LRUCache(maxsize=max(max_bytes, 1), getsizeof=len)

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            return self._lru.get(key)

    def put(self, key: Hashable, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return  # larger than the whole cache: storing it would only evict everything else
        with self._lock:
            self._lru[key] = data

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._lru

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return int(self._lru.currsize)


class ListingCache:
    """Folder listings (the header cache), bounded by folder count, plus the
    folder list itself, each with a generation counter per folder.
    """

    def __init__(self, max_folders: int) -> None:
        self._lock = threading.Lock()  # guards _listings, _generations, _folders, _ever_listed
        self._ever_listed: set[str] = set()
        self._listings: LRUCache[str, Listing] = LRUCache(maxsize=max_folders)
        self._generations: dict[str, int] = {}
        self._folders: tuple[float, list[Folder]] | None = None
        self._folders_generation = 0

    # listings
    def generation(self, folder: str) -> int:
        with self._lock:
            return self._generations.get(folder, 0)

    def generations(self) -> dict[str, int]:
        """Every folder's generation now (a folder not in it: 0)."""
        with self._lock:
            return dict(self._generations)

    def get(self, folder: str) -> Listing | None:
        with self._lock:
            return self._listings.get(folder)

    def put(self, listing: Listing, generation: int) -> bool:
        """Store listing unless the folder changed since `generation` was read."""
        with self._lock:
            if self._generations.get(listing.folder, 0) != generation:
                return False
            self._listings[listing.folder] = listing
            self._ever_listed.add(listing.folder)
            return True

    def confirm(self, listing: Listing, generation: int, synced_at: float) -> bool:
        """Keep listing (the very object: views' entries built from it stay
        valid) as resynchronised at synced_at, found unchanged on the
        server, unless the folder changed since `generation` was read."""
        with self._lock:
            if self._generations.get(listing.folder, 0) != generation:
                return False
            listing.synced_at = synced_at
            listing.stale = False
            self._listings[listing.folder] = listing
            self._ever_listed.add(listing.folder)
            return True

    def seen_before(self, folder: str) -> bool:
        """Whether the folder was listed before (its listing may have been dropped since)."""
        with self._lock:
            return folder in self._ever_listed

    def snapshot(self) -> list[Listing]:
        """Every listing held now (the folders listed since mount, within the bound)."""
        with self._lock:
            return list(self._listings.values())

    def invalidate(self, folder: str) -> None:
        """Forget a folder's listing: the next lookup synchronises afresh."""
        with self._lock:
            self._generations[folder] = self._generations.get(folder, 0) + 1
            self._listings.pop(folder, None)

    def mark_stale(self, folder: str) -> None:
        """Keep the listing (an incremental resync needs it) but force a resync."""
        with self._lock:
            self._generations[folder] = self._generations.get(folder, 0) + 1
            listing = self._listings.get(folder)
            if listing is not None:
                listing.stale = True

    # folder list
    def folders(self) -> tuple[float, list[Folder]] | None:
        with self._lock:
            return self._folders

    def folders_generation(self) -> int:
        with self._lock:
            return self._folders_generation

    def put_folders(self, fetched_at: float, folders: list[Folder], generation: int) -> None:
        with self._lock:
            if generation == self._folders_generation:
                self._folders = (fetched_at, folders)

    def invalidate_folders(self) -> None:
        with self._lock:
            self._folders_generation += 1
            self._folders = None


# --- the disk cache --------------------------------------------------------

SCHEMA_VERSION = 1
# Recency marks of body reads are written to the database this many at a time.
READS_PER_WRITE = 256
DATABASE_NAME = "cache.sqlite3"
LOCK_NAME = "lock"
# Eviction frees down to this share of disk_cache_mb, so that a reader
# going through new mail does not pay for an eviction on every insert.
EVICT_TO = 0.9
WHOLE_BODY = -1  # the part number of a body stored whole (chunks are numbered from 0)

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE folder_list (position INTEGER PRIMARY KEY, name TEXT NOT NULL, delimiter TEXT, flags TEXT NOT NULL);
CREATE TABLE listings (
    folder TEXT PRIMARY KEY, uidvalidity INTEGER NOT NULL, uidnext INTEGER, highestmodseq INTEGER,
    changed_ns INTEGER NOT NULL);
CREATE TABLE messages (
    folder TEXT NOT NULL, uidvalidity INTEGER NOT NULL, uid INTEGER NOT NULL,
    size INTEGER NOT NULL, size_verified INTEGER NOT NULL, internaldate REAL NOT NULL,
    flags TEXT NOT NULL, filename TEXT NOT NULL, message_id TEXT NOT NULL,
    PRIMARY KEY (folder, uidvalidity, uid)) WITHOUT ROWID;
CREATE TABLE bodies (
    folder TEXT NOT NULL, uidvalidity INTEGER NOT NULL, uid INTEGER NOT NULL, part INTEGER NOT NULL,
    data BLOB NOT NULL, size INTEGER NOT NULL, digest BLOB NOT NULL, used INTEGER NOT NULL,
    PRIMARY KEY (folder, uidvalidity, uid, part));
CREATE INDEX bodies_by_use ON bodies (used);
"""


def _key(folder: str) -> bytes:
    """A folder name as stored: UTF-8 bytes, lone surrogates (bytes a server
    sent that are no UTF-8) kept as they are, which SQLite TEXT cannot hold."""
    return folder.encode("utf-8", "surrogatepass")


def _name(stored: bytes) -> str:
    return bytes(stored).decode("utf-8", "surrogatepass")


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


class DiskCache:
    """Listings and bodies of one account in one SQLite database, across mounts.

    Why SQLite (the standard library's): transactions make every change
    all-or-nothing, so a ``kill -9`` at any instant leaves the previous
    consistent state (WAL journal; synchronous=NORMAL loses at most the last
    commits on a power cut, never consistency); eviction is one DELETE over
    an access counter, not file management written by hand.

    Why one connection behind a lock rather than one per thread: every call
    is short (a row or a few, a blob of at most WHOLE_LIMIT), FUSE threads
    would otherwise each hold a connection and contend for SQLite's single
    writer with SQLITE_BUSY retries; a lock makes that wait explicit.

    Trust: nothing read back is served unless it passes checks. The schema
    version must match; after a shutdown that was not clean (the process
    was killed) ``PRAGMA quick_check`` must pass; each body carries a
    digest of its bytes, checked on every read. A database that fails any
    of these, or that SQLite reports corrupt at any time, is deleted and
    started afresh: the cache only ever costs a refetch, never wrong bytes.

    Keys are (folder, UIDVALIDITY, UID[, part]): a body under its key is
    immutable (RFC 3501 2.3.1.1), and a folder seen with a new UIDVALIDITY
    has every row of the old one dropped.

    Exclusive to one process: ``open`` takes an advisory lock (flock) on a
    lock file beside the database; a second mount of the same account gets
    None and runs without the disk cache (two processes writing listings of
    the same folder each from their own resync would only race).
    """

    def __init__(self, directory: str, max_bytes: int, lock_fd: int) -> None:
        self.directory = directory
        self.path = os.path.join(directory, DATABASE_NAME)
        self.max_bytes = max_bytes
        self._lock_fd = lock_fd
        self._lock = threading.Lock()  # guards _db, _used_bytes, _clock, _flag_tuples
        self._db: sqlite3.Connection | None = None
        self._used_bytes = 0
        self._clock = 0  # access counter: a body's `used` is the counter at its last read or write
        self._reads: dict[tuple[bytes, int, int, int], int] = {}  # row key -> `used` of reads not written yet
        self._flag_tuples: dict[str, tuple[str, ...]] = {}
        with self._lock:
            self._open_locked()

    @staticmethod
    def exists(directory: str | None) -> bool:
        """Whether a previous mount left a disk cache there (then an unreachable server need not stop a mount)."""
        return directory is not None and os.path.exists(os.path.join(directory, DATABASE_NAME))

    @classmethod
    def open(cls, directory: str | None, max_bytes: int) -> DiskCache | None:
        """The account's disk cache, or None: turned off (directory None), or
        another process holds it, or it cannot be made private to the user (logged)."""
        if directory is None:
            return None
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            os.chmod(directory, 0o700)  # an existing directory too: it holds mail
            lock_fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            log.warning("cannot use the disk cache in %s (%s); running without it", directory, exc)
            return None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            log.warning("another imapfs mount uses the disk cache in %s; this one runs without it", directory)
            return None
        try:
            cache = cls(directory, max_bytes, lock_fd)
            log.info("persistent cache in %s (%d MiB of bodies held, at most %d)", directory,
                     cache.used_bytes >> 20, max_bytes >> 20)
            return cache
        except (sqlite3.Error, OSError) as exc:
            os.close(lock_fd)
            log.warning("cannot open the disk cache in %s (%s); running without it", directory, exc)
            return None

    # --- opening, checking, rebuilding ---------------------------------------
    def _open_locked(self) -> None:
        """Open the database, or drop it and make a new one if it cannot be trusted. _lock held."""
        try:
            self._db = self._connect_checked()
        except sqlite3.DatabaseError as exc:
            log.warning("the disk cache %s is damaged (%s); dropping it and starting afresh", self.path, exc)
            log.debug("damaged disk cache", exc_info=True)
            self._close_locked()
            self._remove_files()
            self._db = self._connect_checked()
        self._used_bytes = int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM bodies").fetchone()[0])
        self._clock = int(self._db.execute("SELECT COALESCE(MAX(used), 0) FROM bodies").fetchone()[0])
        self._set_meta("clean", "0")  # until close() says otherwise: a kill -9 leaves it so

    def _connect_checked(self) -> sqlite3.Connection:
        fresh = not os.path.exists(self.path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
        # isolation_level=None: transactions are begun explicitly (BEGIN IMMEDIATE), one per change.
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5.0)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            for suffix in ("-wal", "-shm"):
                if os.path.exists(self.path + suffix):
                    os.chmod(self.path + suffix, 0o600)
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if fresh or not tables:
                with _transaction(db):
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute("INSERT INTO meta VALUES ('schema', ?), ('clean', '1')", (str(SCHEMA_VERSION),))
                return db
            version = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if version is None or version[0] != str(SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"schema version {version[0] if version else None!r}, "
                                            f"not {SCHEMA_VERSION}")
            clean = db.execute("SELECT value FROM meta WHERE key='clean'").fetchone()
            if clean is None or clean[0] != "1":
                started = time.monotonic()
                result = db.execute("PRAGMA quick_check").fetchone()
                log.info("the last mount did not end cleanly; disk cache checked in %.2f s",
                         time.monotonic() - started)
                if result is None or result[0] != "ok":
                    raise sqlite3.DatabaseError(f"quick_check: {result[0] if result else 'no answer'}")
            return db
        except BaseException:
            db.close()
            raise

    def _remove_files(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path + suffix)

    def _close_locked(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def _set_meta(self, key: str, value: str) -> None:
        assert self._db is not None
        with _transaction(self._db):
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def _guarded(self, what: str, work: Callable[[sqlite3.Connection], T], default: T) -> T:
        """Run work on the database; a damaged database is rebuilt and
        `default` returned, any other SQLite or OS error logged and `default`
        returned: the disk cache failing must never fail a read. _lock not held."""
        with self._lock:
            if self._db is None:
                return default
            try:
                return work(self._db)
            except sqlite3.DatabaseError as exc:
                if getattr(exc, "sqlite_errorname", "") in {"SQLITE_CORRUPT", "SQLITE_NOTADB"} or \
                        type(exc) is sqlite3.DatabaseError:
                    log.warning("the disk cache %s is damaged (%s while %s); starting it afresh",
                                self.path, exc, what)
                    log.debug("damaged disk cache", exc_info=True)
                    self._close_locked()
                    self._remove_files()
                    try:
                        self._open_locked()
                    except (sqlite3.Error, OSError) as again:
                        log.warning("cannot rebuild the disk cache (%s); running without it", again)
                        self._close_locked()
                else:
                    log.warning("disk cache: %s while %s", exc, what)
                    log.debug("disk cache error", exc_info=True)
                return default
            except (OSError, ValueError) as exc:
                log.warning("disk cache: %s while %s", exc, what)
                log.debug("disk cache error", exc_info=True)
                return default

    def close(self) -> None:
        """Mark the database cleanly closed (the next open skips quick_check) and release the lock."""
        with self._lock:
            if self._db is not None:
                try:
                    self._write_reads(self._db)
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    self._set_meta("clean", "1")
                except sqlite3.Error as exc:
                    log.warning("disk cache: %s while closing", exc)
                self._close_locked()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1

    # --- the folder list ---------------------------------------------------
    def folders(self) -> list[Folder] | None:
        """The folder list as last seen from the server, or None if never stored."""
        def work(db: sqlite3.Connection) -> list[Folder] | None:
            if db.execute("SELECT 1 FROM meta WHERE key='folders_listed'").fetchone() is None:
                return None
            return [Folder(name=_name(name), delimiter=delimiter, flags=frozenset(flags.split()))
                    for name, delimiter, flags in db.execute(
                        "SELECT name, delimiter, flags FROM folder_list ORDER BY position")]
        return self._guarded("reading the folder list", work, None)

    def put_folders(self, folders: list[Folder]) -> None:
        """Store the folder list, and drop listings and bodies of folders no longer in it."""
        def work(db: sqlite3.Connection) -> None:
            names = {_key(folder.name) for folder in folders}
            with _transaction(db):
                db.execute("DELETE FROM folder_list")
                db.executemany("INSERT INTO folder_list VALUES (?, ?, ?, ?)",
                               [(i, _key(f.name), f.delimiter, " ".join(sorted(f.flags)))
                                for i, f in enumerate(folders)])
                db.execute("INSERT OR REPLACE INTO meta VALUES ('folders_listed', '1')")
                gone = [row[0] for row in db.execute("SELECT folder FROM listings") if bytes(row[0]) not in names]
                for folder in gone:
                    self._drop_folder(db, folder, None)
        self._guarded("storing the folder list", work, None)

    # --- listings ----------------------------------------------------------
    def listed_folders(self, limit: int) -> list[str]:
        """Folders with a listing stored, at most limit, those whose entries changed last first."""
        def work(db: sqlite3.Connection) -> list[str]:
            return [_name(row[0]) for row in db.execute(
                "SELECT folder FROM listings ORDER BY changed_ns DESC LIMIT ?", (limit,))]
        return self._guarded("reading which folders are stored", work, [])

    def listing(self, folder: str) -> Listing | None:
        """The folder's listing as last synchronised (stale: to be resynchronised before it is trusted)."""
        def work(db: sqlite3.Connection) -> Listing | None:
            row = db.execute("SELECT uidvalidity, uidnext, highestmodseq, changed_ns FROM listings "
                             "WHERE folder=?", (_key(folder),)).fetchone()
            if row is None:
                return None
            listing = Listing(folder=folder, uidvalidity=row[0], uidnext=row[1], highestmodseq=row[2],
                              changed_ns=row[3], stale=True)
            flag_tuples = self._flag_tuples
            for uid, size, verified, internaldate, flags, filename, message_id in db.execute(
                    "SELECT uid, size, size_verified, internaldate, flags, filename, message_id FROM messages "
                    "WHERE folder=? AND uidvalidity=? ORDER BY uid", (_key(folder), row[0])):
                shared = flag_tuples.get(flags)
                if shared is None:
                    shared = tuple(sys.intern(f) for f in flags.split())
                    if len(flag_tuples) < 4096:
                        flag_tuples[flags] = shared
                listing.messages.add_row(uid, size, internaldate, shared, filename, message_id, bool(verified))
            return listing
        return self._guarded(f"reading the listing of {folder!r}", work, None)

    def save_listing(self, listing: Listing, removed: Iterable[int] | None = None,
                     changed: Iterable[MessageMeta] | None = None) -> None:
        """Write a listing back in one transaction: whole (removed None: it
        replaces whatever was stored for the folder, any UIDVALIDITY), or
        only what changed since the stored one (UIDs removed; messages new or
        with new flags or sizes)."""
        folder = _key(listing.folder)

        def work(db: sqlite3.Connection) -> None:
            with _transaction(db):
                row = db.execute("SELECT uidvalidity FROM listings WHERE folder=?", (folder,)).fetchone()
                whole = removed is None or row is None or row[0] != listing.uidvalidity
                if whole:
                    self._drop_folder(db, folder, listing.uidvalidity)
                    metas: Iterable[MessageMeta] = listing.messages.values()
                else:
                    gone = [(folder, listing.uidvalidity, uid) for uid in removed]
                    db.executemany("DELETE FROM messages WHERE folder=? AND uidvalidity=? AND uid=?", gone)
                    db.executemany("DELETE FROM bodies WHERE folder=? AND uidvalidity=? AND uid=?", gone)
                    metas = changed or ()
                db.execute("INSERT OR REPLACE INTO listings VALUES (?, ?, ?, ?, ?)",
                           (folder, listing.uidvalidity, listing.uidnext, listing.highestmodseq,
                            listing.changed_ns))
                db.executemany("INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               [(folder, listing.uidvalidity, m.uid, m.size, int(m.size_verified),
                                 m.internaldate, " ".join(m.flags), m.filename, m.message_id) for m in metas])
            self._used_bytes = int(db.execute("SELECT COALESCE(SUM(size), 0) FROM bodies").fetchone()[0]) \
                if whole or removed else self._used_bytes
        self._guarded(f"storing the listing of {listing.folder!r}", work, None)

    def note_size(self, folder: str, uidvalidity: int, meta: MessageMeta) -> None:
        """A message's real length became known: store it with the listing."""
        def work(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.execute("UPDATE messages SET size=?, size_verified=1 WHERE folder=? AND uidvalidity=? AND uid=?",
                           (meta.size, _key(folder), uidvalidity, meta.uid))
        self._guarded("storing a message size", work, None)

    def drop_folder(self, folder: str) -> None:
        def work(db: sqlite3.Connection) -> None:
            with _transaction(db):
                self._drop_folder(db, _key(folder), None)
            self._used_bytes = int(db.execute("SELECT COALESCE(SUM(size), 0) FROM bodies").fetchone()[0])
        self._guarded(f"dropping {folder!r}", work, None)

    @staticmethod
    def _drop_folder(db: sqlite3.Connection, folder: bytes, keep_bodies_of: int | None) -> None:
        """Delete a folder's listing, and its bodies except those of UIDVALIDITY keep_bodies_of. In a transaction."""
        db.execute("DELETE FROM listings WHERE folder=?", (folder,))
        db.execute("DELETE FROM messages WHERE folder=?", (folder,))
        db.execute("DELETE FROM bodies WHERE folder=? AND uidvalidity IS NOT ?", (folder, keep_bodies_of))

    # --- bodies ------------------------------------------------------------
    @staticmethod
    def _body_key(key: Hashable) -> tuple[bytes, int, int, int]:
        parts = tuple(key)  # type: ignore[arg-type]
        return (_key(parts[0]), parts[1], parts[2], parts[3] if len(parts) > 3 else WHOLE_BODY)

    def get_body(self, key: Hashable) -> bytes | None:
        """A body or chunk under its (folder, UIDVALIDITY, UID[, chunk]) key, checked against its digest."""
        row_key = self._body_key(key)

        def work(db: sqlite3.Connection) -> bytes | None:
            row = db.execute("SELECT data, digest FROM bodies WHERE folder=? AND uidvalidity=? AND uid=? "
                             "AND part=?", row_key).fetchone()
            if row is None:
                return None
            data = bytes(row[0])
            if _digest(data) != row[1]:
                log.warning("disk cache: a body of UID %d in %r does not match its digest; dropped",
                            row_key[2], _name(row_key[0]))
                with _transaction(db):
                    db.execute("DELETE FROM bodies WHERE folder=? AND uidvalidity=? AND uid=? AND part=?", row_key)
                return None
            # Recency is noted in memory and written in batches: a write
            # transaction per read would cost a scan over the cache more than
            # the reads themselves. A crash loses only some recency marks.
            self._clock += 1
            self._reads[row_key] = self._clock
            if len(self._reads) >= READS_PER_WRITE:
                self._write_reads(db)
            return data
        return self._guarded("reading a body", work, None)

    def has_body(self, key: Hashable) -> bool:
        row_key = self._body_key(key)
        return self._guarded("looking up a body", lambda db: db.execute(
            "SELECT 1 FROM bodies WHERE folder=? AND uidvalidity=? AND uid=? AND part=?", row_key).fetchone()
            is not None, False)

    def put_body(self, key: Hashable, data: bytes) -> None:
        """Store a body or chunk, evicting the least recently used ones beyond max_bytes."""
        if len(data) > self.max_bytes * (1 - EVICT_TO) or not data:
            return  # it would evict a tenth of the cache or more on its own
        row_key = self._body_key(key)

        def work(db: sqlite3.Connection) -> None:
            self._clock += 1
            with _transaction(db):
                old = db.execute("SELECT size FROM bodies WHERE folder=? AND uidvalidity=? AND uid=? AND part=?",
                                 row_key).fetchone()
                db.execute("INSERT OR REPLACE INTO bodies VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (*row_key, data, len(data), _digest(data), self._clock))
                self._used_bytes += len(data) - (old[0] if old else 0)
                if self._used_bytes > self.max_bytes:
                    self._evict(db)
        self._guarded("storing a body", work, None)

    def _write_reads(self, db: sqlite3.Connection) -> None:
        """The recency marks of the reads since the last write, in one transaction."""
        reads, self._reads = self._reads, {}
        if reads:
            with _transaction(db):
                db.executemany("UPDATE bodies SET used=? WHERE folder=? AND uidvalidity=? AND uid=? AND part=?",
                               [(used, *row_key) for row_key, used in reads.items()])

    def _evict(self, db: sqlite3.Connection) -> None:
        """Delete the least recently used bodies until EVICT_TO of max_bytes is left. In a transaction."""
        reads, self._reads = self._reads, {}
        db.executemany("UPDATE bodies SET used=? WHERE folder=? AND uidvalidity=? AND uid=? AND part=?",
                       [(used, *row_key) for row_key, used in reads.items()])  # what was read recently stays
        keep = int(self.max_bytes * EVICT_TO)
        # The newest bodies whose sizes add up to `keep` stay; the first one
        # past it, and everything used before it, goes.
        row = db.execute("SELECT used FROM (SELECT used, SUM(size) OVER (ORDER BY used DESC) AS total "
                         "FROM bodies) WHERE total > ? ORDER BY used DESC LIMIT 1", (keep,)).fetchone()
        if row is not None:
            db.execute("DELETE FROM bodies WHERE used <= ?", (row[0],))
        self._used_bytes = int(db.execute("SELECT COALESCE(SUM(size), 0) FROM bodies").fetchone()[0])

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return self._used_bytes


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error: all of a change or none of it."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
