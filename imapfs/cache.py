"""Caches: folder listings (header cache) and message bodies.

Bodies are immutable for a given (folder, UIDVALIDITY, UID) (RFC 3501
2.3.1.1), so they are keyed by exactly that and never need invalidating;
a folder whose UIDVALIDITY changed simply stops asking for the old keys and
the LRU ages them out. Listings change, so each folder has a generation
counter: a listing fetched while a write to that folder ran (the generation
moved on in between) is not stored, as sshfs does in cache.c.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable

from cachetools import LRUCache

from imapfs.model import Folder, Listing

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
