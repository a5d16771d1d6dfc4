"""Read-ahead for scans: grep -r, cp -r and tar read a folder's files one
after another, and one FETCH round trip per message would make them as slow
as the network's latency times the message count.

When reads of small messages walk a folder in listing order, the bodies of
the next messages are fetched in one UID FETCH per window, the window
doubling while the scan goes on (8, 16, ... 128 messages, at most
``MAX_WINDOW_BYTES``), and the window after the one being read is fetched in
the background on another pooled connection. Random access never triggers
it: only a read of the message right after the previously read one does.
Everything fetched goes into the byte-bounded body cache, and a body being
fetched is never fetched twice: readers wait for the fetch in flight.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor

from imapfs.model import Listing

log = logging.getLogger(__name__)

FIRST_WINDOW = 8
MAX_WINDOW = 128
MAX_WINDOW_BYTES = 8 * 1024 * 1024
INFLIGHT_WAIT_SECONDS = 60.0


class ScanState:
    __slots__ = ("last_index", "window", "fetched_until")

    def __init__(self, last_index: int) -> None:
        self.last_index = last_index
        self.window = 0
        self.fetched_until = -1  # highest listing index fetched ahead


class ReadAhead:
    """Decides what to fetch ahead of a sequential reader, and tracks fetches in flight."""

    def __init__(self, fetch_many: Callable[[str, int, list[int]], None], small: Callable[[int], bool],
                 cached: Callable[[Hashable], bool], budget_bytes: int, workers: int) -> None:
        self._fetch_many = fetch_many  # (folder, uidvalidity, claimed keys): fetch bodies into the cache
        self._small = small  # size -> whether the message is fetched whole
        self._cached = cached
        self._budget = max(0, min(MAX_WINDOW_BYTES, budget_bytes // 4))
        self._lock = threading.Lock()  # guards _scans, _inflight
        self._scans: dict[str, ScanState] = {}
        self._inflight: dict[Hashable, threading.Event] = {}
        self._executor = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="imapfs-readahead")
        self.enabled = self._budget > 0

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- in-flight bookkeeping --------------------------------------------
    def claim(self, keys: list[Hashable]) -> list[Hashable]:
        """Mark keys as being fetched; returns those nobody else is fetching."""
        claimed = []
        with self._lock:
            for key in keys:
                if key not in self._inflight:
                    self._inflight[key] = threading.Event()
                    claimed.append(key)
        return claimed

    def release(self, keys: list[Hashable]) -> None:
        with self._lock:
            events = [self._inflight.pop(key, None) for key in keys]
        for event in events:
            if event is not None:
                event.set()

    def wait_for(self, key: Hashable) -> None:
        """If key is being fetched (ahead), wait for that fetch instead of repeating it."""
        with self._lock:
            event = self._inflight.get(key)
        if event is not None:
            event.wait(INFLIGHT_WAIT_SECONDS)

    # --- planning ----------------------------------------------------------
    def plan(self, listing: Listing, uid: int) -> list[int]:
        """Called on a cache miss for uid: the UIDs to fetch now (uid first)."""
        if not self.enabled:
            return [uid]
        order, position = listing.order()
        index = position.get(uid)
        if index is None:
            return [uid]
        with self._lock:
            state = self._scans.get(listing.folder)
            sequential = state is not None and state.last_index == index - 1
            if not sequential:
                self._scans[listing.folder] = ScanState(index)
                return [uid]
            state.last_index = index
            state.window = min(max(FIRST_WINDOW, state.window * 2), MAX_WINDOW)
            window = state.window
        uids = self._window(listing, order, index, window)
        with self._lock:
            state.fetched_until = max(state.fetched_until, index + len(uids) - 1)
        return uids or [uid]

    def note_hit(self, listing: Listing, uid: int) -> None:
        """Called on a cache hit: keep the scan going, and fetch the next
        window in the background once the reader is halfway through this one."""
        if not self.enabled:
            return
        order, position = listing.order()
        index = position.get(uid)
        if index is None:
            return
        with self._lock:
            state = self._scans.get(listing.folder)
            if state is None or state.last_index != index - 1:
                return
            state.last_index = index
            if state.fetched_until - index > max(state.window // 2, 1) or state.fetched_until >= len(order) - 1:
                return
            start = state.fetched_until + 1
            state.window = min(max(FIRST_WINDOW, state.window * 2), MAX_WINDOW)
            uids = self._window(listing, order, start, state.window)
            state.fetched_until = start + state.window - 1
        # Claimed here, before the worker starts, so that a reader arriving
        # first waits for this fetch instead of issuing its own.
        keys = self.claim([(listing.folder, listing.uidvalidity, uid) for uid in uids])
        if keys:
            self._executor.submit(self._background, listing.folder, listing.uidvalidity, keys)

    def _window(self, listing: Listing, order: list[int], start: int, count: int) -> list[int]:
        """Up to count small, uncached, not-in-flight UIDs from index start (caller holds _lock)."""
        uids: list[int] = []
        total = 0
        for uid in order[start:start + count]:
            meta = listing.messages.get(uid)
            if meta is None or not self._small(meta.size):
                continue
            key = (listing.folder, listing.uidvalidity, uid)
            if self._cached(key) or key in self._inflight:
                continue
            uids.append(uid)
            total += meta.size
            if total >= self._budget:
                break
        return uids

    def _background(self, folder: str, uidvalidity: int, keys: list[Hashable]) -> None:
        try:
            self._fetch_many(folder, uidvalidity, keys)
        except Exception as exc:  # a failed read-ahead only costs the reader a fetch of its own
            log.debug("read-ahead in %r failed: %s", folder, exc)
        finally:
            self.release(keys)
