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
from collections.abc import Callable, Hashable, Sequence
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
        index = position.position(uid)
        if index is None:
            return [uid]
        with self._lock:
            state = self._scans.get(listing.folder)
            if state is None or state.last_index != index - 1:
                self._scans[listing.folder] = ScanState(index)
                return [uid]
            state.last_index = index
            state.window = min(max(FIRST_WINDOW, state.window * 2), MAX_WINDOW)
            uids, last = self._window(listing, order, index, state.window)
            state.fetched_until = max(state.fetched_until, last)
            if uid not in uids:
                uids.insert(0, uid)
            # The reader itself claims and fetches uids; keep the next
            # windows coming in the background meanwhile.
            background = self._schedule_ahead(listing, order, state, index, exclude=set(uids))
        self._submit(listing, background)
        return uids

    def note_hit(self, listing: Listing, uid: int) -> None:
        """Called on a cache hit: keep the scan going, and keep the next
        windows being fetched in the background ahead of the reader."""
        if not self.enabled:
            return
        order, position = listing.order()
        index = position.position(uid)
        if index is None:
            return
        with self._lock:
            state = self._scans.get(listing.folder)
            if state is None or state.last_index != index - 1:
                return
            state.last_index = index
            background = self._schedule_ahead(listing, order, state, index, exclude=set())
        self._submit(listing, background)

    def _schedule_ahead(self, listing: Listing, order: Sequence[int], state: ScanState, index: int,
                        exclude: set[int]) -> list[list[Hashable]]:
        """Windows to fetch so that two windows beyond the reader are on their way
        (caller holds _lock). They are claimed here, before any worker starts,
        so a reader arriving first waits for that fetch instead of repeating it."""
        batches: list[list[Hashable]] = []
        while state.fetched_until < min(index + 2 * state.window, len(order) - 1):
            state.window = min(max(FIRST_WINDOW, state.window * 2), MAX_WINDOW)
            uids, last = self._window(listing, order, state.fetched_until + 1, state.window)
            state.fetched_until = last
            keys = [(listing.folder, listing.uidvalidity, u) for u in uids if u not in exclude]
            claimed = [key for key in keys if key not in self._inflight]
            for key in claimed:
                self._inflight[key] = threading.Event()
            if claimed:
                batches.append(claimed)
        return batches

    def _submit(self, listing: Listing, batches: list[list[Hashable]]) -> None:
        for keys in batches:
            self._executor.submit(self._background, listing.folder, listing.uidvalidity, keys)

    def _window(self, listing: Listing, order: Sequence[int], start: int, count: int) -> tuple[list[int], int]:
        """Up to count small, uncached, not-in-flight UIDs from index start, and
        the last index looked at (caller holds _lock)."""
        uids: list[int] = []
        total = 0
        last = start - 1
        for offset, uid in enumerate(order[start:start + count]):
            last = start + offset
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
        return uids, last

    def _background(self, folder: str, uidvalidity: int, keys: list[Hashable]) -> None:
        try:
            self._fetch_many(folder, uidvalidity, keys)
        except Exception as exc:  # a failed read-ahead only costs the reader a fetch of its own
            log.debug("read-ahead in %r failed: %s", folder, exc)
        finally:
            self.release(keys)
