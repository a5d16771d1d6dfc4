"""The watcher: keeps the mount true to the server while it is mounted.

Two threads, started from FUSE's init (after daemonising):

- IDLE (RFC 2177) on a dedicated connection, on the folder most recently
  listed or read, so its changes show within a second or two. IDLE is
  renewed every ``IDLE_RENEW_SECONDS`` (servers may drop it after 30 min),
  and moved when another folder comes into use.
- A poll every ``poll_interval`` seconds: the status (with HIGHESTMODSEQ
  under CONDSTORE) of every folder listed so far, and LIST for folders
  created, deleted or renamed elsewhere; one LIST-STATUS where offered, else
  a LIST and every STATUS sent at once: a constant number of round trips
  however many folders are watched. A folder whose counters moved is
  reported; the resync itself then fetches only what changed.

It only notices; what a change means is decided by the callbacks it is
given (the store's caches and the kernel's, wired in cli.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from imapfs.config import Account, Options
from imapfs.credentials import Credentials
from imapfs.errors import ImapFSError, NotFound
from imapfs.model import Folder, FolderStatus, Listing
from imapfs.pool import ConnectionPool, Session, connect

log = logging.getLogger(__name__)

IDLE_RENEW_SECONDS = 25 * 60
IDLE_CHECK_SECONDS = 1.0
CHANGE_RESPONSES = {b"EXISTS", b"EXPUNGE", b"FETCH", b"VANISHED"}


class Watcher:
    """Notices changes made by other clients and reports them."""

    def __init__(self, account: Account, credentials: Credentials | str, options: Options, pool: ConnectionPool,
                 *, listings: Callable[[], list[Listing]], folders: Callable[[], list[Folder] | None],
                 folder_changed: Callable[[str], None], folders_changed: Callable[[], None],
                 connector: Callable[[Account, Credentials | str, Options], Session] = connect) -> None:
        self._account = account
        self._credentials = credentials
        self._options = options
        self._pool = pool
        self._listings = listings
        self._folders = folders
        self._folder_changed = folder_changed
        self._folders_changed = folders_changed
        self._connector = connector
        self._stop = threading.Event()
        self._wanted_lock = threading.Lock()  # guards _wanted
        self._wanted: str | None = None
        self._wanted_changed = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- control ---------------------------------------------------------
    def start(self) -> None:
        if self._options.idle:
            self._threads.append(threading.Thread(target=self._idle_loop, name="imapfs-idle", daemon=True))
        self._threads.append(threading.Thread(target=self._poll_loop, name="imapfs-poll", daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wanted_changed.set()
        for thread in self._threads:
            thread.join(timeout=IDLE_CHECK_SECONDS * 3)

    def folder_used(self, folder: str) -> None:
        """The store lists or reads `folder`: IDLE there from now on."""
        with self._wanted_lock:
            if self._wanted == folder:
                return
            self._wanted = folder
        self._wanted_changed.set()

    def _current_wanted(self) -> str | None:
        with self._wanted_lock:
            return self._wanted

    # --- IDLE ------------------------------------------------------------
    def _idle_loop(self) -> None:
        """IDLE on whichever folder is wanted, on one connection kept across
        folder changes (a grep -r through many folders moves it often);
        a new connection only after a failure."""
        delay = 1.0
        session: Session | None = None
        try:
            while not self._stop.is_set():
                folder = self._current_wanted()
                if folder is None:
                    self._wanted_changed.wait(timeout=1.0)
                    self._wanted_changed.clear()
                    continue
                try:
                    if session is None:
                        session = self._connector(self._account, self._credentials, self._options)
                        if not session.has("IDLE"):
                            log.info("server has no IDLE; relying on polling every %.0f s",
                                     self._options.poll_interval)
                            return
                    self._idle_on(session, folder)
                    delay = 1.0
                except NotFound:
                    # Deleted elsewhere (the poll's LIST reports that). The
                    # connection is fine: keep it, and look again with backoff
                    # in case the folder is being recreated, unless another
                    # folder comes into use meanwhile.
                    log.debug("IDLE: %r does not exist (now); looking again in %.0f s", folder, delay)
                    self._wanted_changed.clear()
                    if self._current_wanted() == folder:
                        self._wanted_changed.wait(timeout=delay)
                    delay = min(delay * 2, 30.0)
                except ImapFSError as exc:
                    log.info("IDLE on %r stopped (%s); trying again in %.0f s", folder, exc, delay)
                    if session is not None:
                        session.logout()
                        session = None
                    self._stop.wait(delay)
                    delay = min(delay * 2, 30.0)
        finally:
            if session is not None:
                session.logout()

    def _idle_on(self, session: Session, folder: str) -> None:
        """IDLE in folder until another folder is wanted or the watcher stops,
        renewing the IDLE before servers time it out."""
        self.select_and_compare(session, folder)
        self._wanted_changed.clear()
        while not self._stop.is_set() and self._current_wanted() == folder:
            session.idle_start()
            started = time.monotonic()
            trouble = False
            try:
                while (not self._stop.is_set() and self._current_wanted() == folder
                       and time.monotonic() - started < IDLE_RENEW_SECONDS and not trouble):
                    responses = session.idle_wait(IDLE_CHECK_SECONDS)
                    if any(_is_change(r) for r in responses):
                        log.debug("IDLE: %r changed on the server", folder)
                        self._report(folder)
                    trouble = any(_is_trouble(r) for r in responses)
            finally:
                if not session.broken:
                    session.idle_done()
            if trouble:
                # An untagged NO or BYE mid-IDLE: Dovecot's answer when the
                # folder is deleted under us. IDLE would say nothing more, so
                # select again (and compare) on this connection or a new one.
                log.debug("IDLE: the server complained about %r; selecting it again", folder)
                self._stop.wait(IDLE_CHECK_SECONDS)  # a server that complains at every IDLE is not hammered
                return

    def select_and_compare(self, session: Session, folder: str) -> None:
        """Select folder for IDLE, reporting it changed if it moved since it
        was listed: IDLE tells only of changes from now on, and this runs
        after every reconnect (a dropped connection, a server restart, the
        folder deleted and recreated under us) and every move of the IDLE.
        On a read-only mount the kernel serves cached files without asking
        imapfs, so a change nobody reports stays unseen for attr_timeout."""
        status = session.select(folder, readonly=True)
        listing = next((cached for cached in self._listings() if cached.folder == folder), None)
        if listing is None:
            return
        if _status_differs(status, listing):
            log.debug("%r changed while it was not watched", folder)
            self._report(folder)

    def _report(self, folder: str) -> None:
        try:
            self._folder_changed(folder)
        except ImapFSError as exc:
            # The server moved on again meanwhile (the folder went away, the
            # connection dropped): the next notice or poll tries again.
            log.info("could not apply a change in %r: %s", folder, exc)
        except Exception:
            log.exception("could not apply a change in %r", folder)

    # --- polling ---------------------------------------------------------
    def _poll_loop(self) -> None:
        while not self._stop.wait(self._options.poll_interval):
            try:
                self.poll_once()
            except ImapFSError as exc:
                log.info("poll failed (%s); next in %.0f s", exc, self._options.poll_interval)
            except Exception:
                log.exception("poll failed")

    def poll_once(self) -> None:
        """The status of every folder listed so far, and LIST for folder changes.

        Where the server offers LIST-STATUS (RFC 5819) both come from one
        LIST: the cost of a poll does not grow with the folders watched.
        Otherwise every folder's STATUS is sent at once (one round trip too)."""
        listings = self._listings()
        known = self._folders()

        def work(session: Session) -> tuple[list[str], list[Folder]]:
            folders, statuses = session.list_folders_with_status()
            missing = [listing.folder for listing in listings if listing.folder not in statuses]
            if missing:
                statuses.update(session.statuses_of(missing))
            changed = []
            for listing in listings:
                status = statuses.get(listing.folder)
                if status is None or _status_differs(status, listing):
                    changed.append(listing.folder)  # gone, probably, if no status: the resync finds out
            return changed, folders

        changed, folders = self._pool.run(work)
        for folder in changed:
            self._report(folder)
        if known is not None and _folder_set(folders) != _folder_set(known):
            log.debug("folder list changed on the server")
            try:
                self._folders_changed()
            except Exception:
                log.exception("could not apply a folder list change")


def _is_change(response: tuple) -> bool:
    return any(isinstance(part, bytes) and part.upper() in CHANGE_RESPONSES for part in response[:2])


def _is_trouble(response: tuple) -> bool:
    return bool(response) and isinstance(response[0], bytes) and response[0].upper() in {b"NO", b"BAD", b"BYE"}


def _status_differs(status: FolderStatus, listing: Listing) -> bool:
    if status.uidvalidity != listing.uidvalidity or status.exists != len(listing.messages):
        return True
    if listing.uidnext is not None and status.uidnext is not None and status.uidnext != listing.uidnext:
        return True
    return status.highestmodseq is not None and listing.highestmodseq is not None \
        and status.highestmodseq != listing.highestmodseq


def _folder_set(folders: list[Folder]) -> set[tuple[str, bool]]:
    # Names and selectability only: other attributes (\\HasChildren, \\Marked)
    # flicker with ordinary mail traffic and would cause needless reloads.
    return {(f.name, f.selectable) for f in folders}
