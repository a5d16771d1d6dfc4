"""ImapFS: the FUSE operations, kept thin.

Asks the views (``views.root.CompositeRoot``) what a path is and hands the
call to that view; builds stat dicts and file handles; decides which close
of a file being written means its writer is done; tells the kernel what
changed; and holds the ONE map from imapfs errors to errno (``errno_for``).
Anything unexpected is logged with its traceback and becomes EIO: mfusepy
would otherwise report EINVAL, which misleads users. It knows no layout.
"""

from __future__ import annotations

import errno
import functools
import heapq
import itertools
import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import mfusepy as fuse
from cachetools import LRUCache

from imapfs import callers, names, rfc5322
from imapfs.errors import (
    AlreadyExists,
    Busy,
    ConnectError,
    ImapFSError,
    InvalidMessage,
    InvalidName,
    InvalidQuery,
    NotEmpty,
    NotFound,
    NotPermitted,
    NotSupported,
    QuotaError,
    ReadOnly,
    Refused,
    StaleMessage,
)
from imapfs.fusebind import KernelCache
from imapfs.model import Folder, Listing, MessageTable
from imapfs.store import WHOLE_LIMIT, MailStore
from imapfs.views.base import Alias, DerivedFile, DirNode, ListingEntries, MessageRef, NewFile, Node, Parts, View
from imapfs.views.root import CompositeRoot

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

XATTR_FLAGS = "user.imap.flags"
XATTR_UID = "user.imap.uid"
XATTR_MESSAGE_ID = "user.imap.message_id"
XATTR_FOLDER = "user.imap.folder"
XATTR_UIDVALIDITY = "user.imap.uidvalidity"
ENOATTR = getattr(errno, "ENOATTR", errno.ENODATA)
# How long after a READ found a message shorter than its RFC822.SIZE the kernel is told (see size_corrected).
SHRINK_NOTICE_SECONDS = 1.0
# At most this long a READ that found its message longer than told waits
# for the kernel to take the notice before it answers (see _await_notice).
GROWTH_NOTICE_WAIT_SECONDS = 0.2


class _Notice:
    """A message's new size, for the forgetter to tell the kernel path by
    path, and for a READ of one of those paths to wait on (_await_notice):
    `current` is the path being handed to the kernel, `passed` those it
    has taken; `entered` is set when the forgetter starts on it."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.entered = threading.Event()
        self.current: str | None = None
        self.passed: set[str] = set()
        self.done = False


def _thread_state(tid: int) -> str:
    """One thread's scheduler state of this process ("R", "S", "D", ...), "" if unknown."""
    try:
        with open(f"/proc/self/task/{tid}/stat", "rb") as stat_file:
            line = stat_file.read()
    except OSError:
        return ""
    after_name = line.rfind(b")")  # the thread's name may hold spaces and parentheses
    return line[after_name + 2:after_name + 3].decode("ascii", "replace") if after_name != -1 else ""


def errno_for(exc: BaseException) -> int:
    """The single place where imapfs errors become errno values."""
    table: list[tuple[type[BaseException], int]] = [
        (StaleMessage, errno.ESTALE),
        (NotFound, errno.ENOENT),
        (ReadOnly, errno.EROFS),
        (Busy, errno.EBUSY),
        (Refused, errno.EPERM),
        (AlreadyExists, errno.EEXIST),
        (NotEmpty, errno.ENOTEMPTY),
        (InvalidMessage, errno.EINVAL),
        (InvalidName, errno.EINVAL),
        (InvalidQuery, errno.EINVAL),
        (NotSupported, errno.EPERM),
        (NotPermitted, errno.EACCES),
        (QuotaError, errno.EDQUOT),
        (ConnectError, errno.EIO),
        (ImapFSError, errno.EIO),
    ]
    for kind, number in table:
        if isinstance(exc, kind):
            return number
    return errno.EIO


def fuse_operation(method: F) -> F:
    """Map exceptions from one FUSE operation to errno, logging what is unexpected."""

    @functools.wraps(method)
    def wrapper(self: ImapFS, *args: Any) -> Any:
        try:
            return method(self, *args)
        except fuse.FuseOSError:
            raise
        except ImapFSError as exc:
            number = errno_for(exc)
            if number == errno.ENOENT:
                log.debug("%s %s: %s", method.__name__, args[0] if args else "", exc)
            else:
                log.warning("%s %s: %s", method.__name__, args[0] if args else "", exc)
            raise fuse.FuseOSError(number) from exc
        except Exception:
            log.exception("unexpected error in %s %s", method.__name__, args[0] if args else "")
            raise fuse.FuseOSError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


def refuse(number: int) -> fuse.FuseOSError:
    return fuse.FuseOSError(number)


def callers_context() -> tuple[int, int, int] | None:
    """(uid, gid, pid) of the process behind the current FUSE request, or
    None outside one (the kernel's own requests have pid 0)."""
    try:
        return fuse.fuse_get_context()
    except (ValueError, AttributeError):  # no FUSE context on this thread
        return None


@dataclass
class ReadHandle:
    ref: MessageRef


@dataclass
class WriteHandle:
    """The one handle that may write a NewFile (its creator's)."""

    new: NewFile


@dataclass
class SpoolReadHandle:
    """A read-only open of a file still being written: it sees what was
    written so far and never causes an APPEND."""

    new: NewFile


@dataclass
class DerivedReadHandle:
    """An open file a view derives from stored mail (base.DerivedFile)."""

    node: DerivedFile


Handle = ReadHandle | WriteHandle | SpoolReadHandle | DerivedReadHandle


class DirEntries(Sequence):
    """An open directory's entries as mfusepy and fusebind take them: ".",
    "..", then (name, stat dict, 0), or the bare name of a file whose
    attributes the kernel must ask for. Each stat dict is made when its
    entry is taken, from the view's (name, node) list, which is all that is
    kept. row_stat, where given, makes the stat dict of a message entry of
    ListingEntries straight from its row (no MessageMeta, no MessageRef):
    the common case of `ls -l`, 10,000 of them at a time."""

    __slots__ = ("_items", "_attrs", "_row_stat", "_table", "_rows")

    def __init__(self, items: Sequence[tuple[str, Node]],
                 attrs: Callable[[str, Node], dict[str, Any] | None],
                 row_stat: Callable[[MessageTable, int], dict[str, Any]] | None = None) -> None:
        self._items = items
        self._attrs = attrs
        self._row_stat = row_stat
        self._table = items.table if isinstance(items, ListingEntries) else None
        self._rows = items.rows if isinstance(items, ListingEntries) else range(0)

    def __len__(self) -> int:
        return len(self._items) + 2

    def __getitem__(self, index: int) -> Any:  # type: ignore[override]
        if index < 0:
            index += len(self)
        if index < 2:
            if index < 0:
                raise IndexError(index)
            return ".." if index else "."
        if self._table is not None and self._row_stat is not None and index - 2 in self._rows:
            row = index - 2 - self._rows.start
            return self._table.filename_at(row), self._row_stat(self._table, row), 0
        name, child = self._items[index - 2]
        attrs = self._attrs(name, child)
        return name if attrs is None else (name, attrs, 0)


class ImapFS(fuse.Operations):
    """The FUSE edge over the views."""

    use_ns = True

    def __init__(self, store: MailStore, root: CompositeRoot, *, read_only: bool = False,
                 kernel_opens: bool = False, on_init: Callable[[], None] | None = None,
                 on_destroy: Callable[[], None] | None = None) -> None:
        self.store = store
        self.root = root
        self.read_only = read_only
        # Read-only mounts only: answer the first open (and flush) ENOSYS, so
        # the kernel opens, reads from its page cache and closes files without
        # any request to us. Every file then reads as if opened keep_cache.
        # A read-write mount cannot: close(2) reports a failed APPEND only
        # through FLUSH, and the kernel's no-flush switch is mount-wide.
        self.kernel_opens = kernel_opens and read_only
        self._on_init = on_init
        self._on_destroy = on_destroy
        self._uid = os.getuid()
        self._gid = os.getgid()
        self._mounted_at_ns = store.started_ns
        self._handles: dict[int, Handle] = {}
        self._dir_snapshots: dict[int, Sequence[Any] | None] = {}  # open directories' entries
        # (path, plus, the view's entries list, the entries built from it) of the last directory listed.
        self._entries_cache: tuple[str, bool, Sequence[Any], DirEntries] | None = None
        self._handle_ids = itertools.count(1)
        self._state_lock = threading.Lock()  # guards _handles, _dir_snapshots, _entries_cache, _told, _opened_as
        self.initialized = False  # set once the kernel has accepted the mount
        self._kernel_cache: KernelCache | None = None  # libfuse 3 only
        # (uidvalidity, uid) last opened at each path: the kernel may keep a
        # file's pages only while the same message is behind that path.
        self._opened_as: LRUCache[str, tuple[int, int]] = LRUCache(maxsize=100_000)
        # (uidvalidity, uid, size) last told to the kernel for each message
        # path: reads may go through the page cache only while it is right.
        self._told: LRUCache[str, tuple[int, int, int]] = LRUCache(maxsize=200_000)
        # Folder directories of the main view listed to the kernel with
        # attributes: path -> (the listing they were made from, the store's
        # size epoch then). A message of that listing, unchanged since, has
        # the attributes the kernel holds, without an entry per message.
        self._told_dirs: LRUCache[str, tuple[Any, int]] = LRUCache(maxsize=1024)
        # The same for derived files: (key, size) last told at each path, and the key last opened there.
        self._told_derived: LRUCache[str, tuple[Any, int]] = LRUCache(maxsize=100_000)
        self._opened_derived: LRUCache[str, Any] = LRUCache(maxsize=100_000)
        # (when, paths or a notice) for the kernel to forget, from time.monotonic() on; None ends the forgetter.
        self._forget_queue: queue.SimpleQueue[tuple[float, list[str] | _Notice] | None] = queue.SimpleQueue()
        # path -> the notice of its message's growth not yet taken by the kernel (see size_corrected).
        self._growth_notices: dict[str, _Notice] = {}
        self._forgetter: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------
    def init(self, path: str) -> None:
        # Threads and sockets start here, after the process has daemonised.
        self.initialized = True
        context = fuse._libfuse.fuse_get_context()
        if context and KernelCache.available():
            self._kernel_cache = KernelCache(context.contents.fuse)
            self._forgetter = threading.Thread(target=self._forget_loop, name="imapfs-invalidate", daemon=True)
            self._forgetter.start()
        self.store.on_names_changed = self.names_changed
        self.store.on_folders_replaced = self.folders_replaced
        self.store.on_size_corrected = self.size_corrected
        if self._on_init:
            self._on_init()

    # --- changes made elsewhere -------------------------------------------
    def _forget_loop(self) -> None:
        waiting: list[tuple[float, int, list[str] | _Notice]] = []  # heap of notices due later
        order = itertools.count()
        while True:
            timeout = max(0.0, waiting[0][0] - time.monotonic()) if waiting else None
            try:
                item = self._forget_queue.get(timeout=timeout)
            except queue.Empty:
                item = (0.0, [])
            if item is None:
                return
            due, paths = item
            if paths:
                heapq.heappush(waiting, (due, next(order), paths))
            while waiting and waiting[0][0] <= time.monotonic():
                due_now = heapq.heappop(waiting)[2]
                try:
                    if isinstance(due_now, _Notice):
                        self._tell_growth(due_now)
                    else:
                        self._kernel_forget(due_now)
                except Exception:
                    log.exception("kernel invalidation failed")

    def names_changed(self, folder: str, filenames: list[str]) -> None:
        """The store learnt that the kernel may hold wrong attributes for these
        names. Called from FUSE threads, so the kernel is told from another."""
        self._forget_later(folder, filenames, 0.0)

    def _forget_later(self, folder: str, filenames: list[str], due: float) -> None:
        """Queue names of folder for the forgetter thread, to be told at time.monotonic() == due."""
        if self._forgetter is not None:
            paths = self._paths_of(folder, filenames, directories=False)
            if paths:
                self._forget_queue.put((due, paths))

    def _paths_of(self, folder: str, filenames: list[str], directories: bool = True) -> list[str]:
        """Mount paths of a folder's directories (in every view) and of these of its messages."""
        try:
            record = self.store.folder(folder)
        except ImapFSError:
            return []
        found = [*(self.root.folder_paths(record) if directories else []),
                 *self.root.message_paths(record, filenames)]
        return ["/" + "/".join(parts) for parts in found]

    def size_corrected(self, folder: str, filename: str, grew: bool) -> None:
        """A message's real length is not its RFC822.SIZE (the store just
        found out). The kernel must hear of it, but on a kernel_opens mount
        a shrink is told late: the kernel shrinks the file itself from the
        short reply to the READ that found out, and a notice racing that
        reply stops it doing so (the attribute version moved) and leaves the
        page's zero fill visible as NUL bytes. Told a moment later, the notice
        still corrects the size of a file the kernel has not read yet."""
        if grew and self.kernel_opens and self._forgetter is not None:
            # The kernel reads such a file with no open reaching us: a READ
            # of it waits for this notice (see _await_notice), whether it
            # found the size itself or read-ahead did.
            paths = self._paths_of(folder, [filename], directories=False)
            if paths:
                notice = _Notice(paths)
                with self._state_lock:
                    for path in paths:
                        self._growth_notices[path] = notice
                self._forget_queue.put((0.0, notice))
            return
        later = 0.0 if grew or not self.kernel_opens else time.monotonic() + SHRINK_NOTICE_SECONDS
        self._forget_later(folder, [filename], later)

    def _tell_growth(self, notice: _Notice) -> None:
        """The forgetter's part of a growth notice: path by path, so that a
        READ waiting on it knows when its own inode's turn has come."""
        notice.entered.set()
        try:
            for path in notice.paths:
                notice.current = path
                self._kernel_forget([path])
                notice.passed.add(path)
        finally:
            notice.done = True
            with self._state_lock:
                for path in notice.paths:
                    if self._growth_notices.get(path) is notice:
                        del self._growth_notices[path]

    def _await_notice(self, notice: _Notice, path: str) -> None:
        """A READ the kernel sent of its own is of a message found longer
        than the size the kernel holds (by this READ or by read-ahead); the
        kernel copies out no byte past that size, so this read ends short. The next read(2) past that size asks
        for the size again only if the kernel's attributes are invalid by
        then: so before answering, wait until the forgetter's notice has
        invalidated them. The notice invalidates the attributes first and
        then waits for the pages this READ holds locked (uninterruptible
        sleep, state D): seeing the forgetter so on this path, or past it,
        is enough. A short bounded wait: at worst the read ends short, as it
        would have."""
        deadline = time.monotonic() + GROWTH_NOTICE_WAIT_SECONDS
        forgetter = self._forgetter
        tid = forgetter.native_id if forgetter is not None else None
        if not notice.entered.wait(GROWTH_NOTICE_WAIT_SECONDS):
            return
        while path not in notice.passed and not notice.done and time.monotonic() < deadline:
            if notice.current == path and tid is not None and _thread_state(tid) == "D":
                return
            time.sleep(0.0005)

    def _kernel_forget(self, paths: list[str]) -> None:
        """Make the kernel drop cached names, attributes and pages for paths.

        Only from threads that serve no FUSE request (the watcher): the
        kernel may wait on a request in that directory before it applies
        the notice. Without libfuse 3 this is skipped and the kernel's
        caches expire by attr_timeout/entry_timeout instead.
        """
        if self._kernel_cache is not None:
            self._kernel_cache.forget(paths)

    def folder_changed(self, folder: str) -> None:
        """Another client changed `folder`: resync it now and make the kernel
        forget what it cached of messages that went away, or of every
        message when the folder was recreated (UIDVALIDITY changed)."""
        old = self.store.cached_listing(folder)
        self.store.changed_elsewhere(folder)
        try:
            new = self.store.listing(folder)
        except NotFound:
            new = None
        gone: list[str] = []
        if old is not None:
            if new is None or new.uidvalidity != old.uidvalidity:
                gone = sorted(old.filenames())
            else:
                gone = sorted(old.filenames() - new.filenames())
        paths = self._paths_of(folder, gone)
        if paths:
            self._kernel_forget(paths)

    def folders_changed(self) -> None:
        """Folders were created, deleted or renamed elsewhere."""
        old = self.store.cached_folders() or []
        self.store.folders_changed_elsewhere()
        try:
            new = self.store.folders()
        except ImapFSError:
            return
        self._forget_folders(old, new)

    def folders_replaced(self, shown: list[Folder], listed: list[Folder]) -> None:
        """The previous mount's folder list, shown while this mount's first
        LIST was in flight, differs from what the server listed. Called
        from a thread that serves no FUSE request."""
        self._forget_folders(shown, listed)

    def _forget_folders(self, old: list[Folder], new: list[Folder]) -> None:
        new_names = {folder.name for folder in new}
        paths = ["/"]
        for folder in old:
            if folder.name not in new_names:
                self.store.invalidate(folder.name)
                for parts in self.root.folder_paths(folder):
                    paths.append("/" + "/".join(parts))
                    if len(parts) > 1:
                        paths.append("/" + "/".join(parts[:-1]))
        self._kernel_forget(paths)

    def destroy(self, path: str) -> None:
        # libfuse frees its session after this returns: no invalidation may
        # start from now on (one still running is waited for).
        if self._kernel_cache is not None:
            self._kernel_cache.close()
        self._forget_queue.put(None)
        if self._on_destroy:
            self._on_destroy()
        self.store.close()

    # --- path resolution -------------------------------------------------
    @staticmethod
    def _split(path: str) -> Parts:
        return tuple(p for p in path.split("/") if p)

    def _locate(self, path: str) -> tuple[View, Parts, Node]:
        return self.root.resolve(self._split(path))

    def _resolve(self, path: str) -> Node:
        return self.root.resolve(self._split(path))[2]

    def _message(self, path: str) -> MessageRef:
        """The stored message at path (also under a name it was just written as)."""
        view, _, node = self._locate(path)
        return self._message_at(path, view, node)

    @staticmethod
    def _message_at(path: str, view: View, node: Node) -> MessageRef:
        """The stored message behind node, located at path in view."""
        if isinstance(node, DirNode):
            raise refuse(errno.EISDIR)
        ref = view.message(node)
        if ref is None:
            raise NotFound(path)
        return ref

    def _check_writable(self) -> None:
        """Writes are the mount owner's alone: with allow_other, other users
        read (files show r--r--r--) but never add, flag, move or remove mail."""
        if self.read_only:
            raise ReadOnly("mounted read-only")
        caller = callers_context()
        if caller is not None and caller[0] != self._uid:
            log.warning("user %d may not change this mount (only user %d may)", caller[0], self._uid)
            raise refuse(errno.EACCES)

    # --- attributes ------------------------------------------------------
    @fuse_operation
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        view, _, target = self._locate(path)
        return self._node_stat(path, view, target)

    def _node_stat(self, path: str, view: View, target: Node) -> dict[str, Any]:
        if isinstance(target, DirNode):
            return self._dir_stat(view, target)
        if isinstance(target, NewFile):
            return self._stat(0o644, target.spool.size, target.created_ns)
        if isinstance(target, Alias):
            return self._stat(0o444, target.size, target.mtime_ns)
        if isinstance(target, DerivedFile):
            if not self.kernel_opens:
                with self._state_lock:
                    self._told_derived[path] = (target.key, target.size if target.size_known else -1)
            return self._stat(0o444, target.size, target.mtime_ns)
        meta = target.meta
        if not self.kernel_opens:  # only open() reads _told, and it never runs then
            with self._state_lock:
                self._told[path] = (target.uidvalidity, meta.uid, meta.size)
        return self._stat(0o444, meta.size, int(meta.internaldate * 1e9))

    def _dir_stat(self, view: View, node: DirNode) -> dict[str, Any]:
        mode = (0o555 if self.read_only else 0o755) & view.dir_permissions(node)
        when = view.dir_mtime_ns(node) or self._mounted_at_ns
        return {"st_mode": stat.S_IFDIR | mode, "st_nlink": 2 + len(node.children), "st_uid": self._uid,
                "st_gid": self._gid, "st_size": 0, "st_mtime": when, "st_ctime": when,
                "st_atime": self._mounted_at_ns}

    def _stat(self, mode: int, size: int, when_ns: int) -> dict[str, Any]:
        return {"st_mode": stat.S_IFREG | mode, "st_nlink": 1, "st_uid": self._uid, "st_gid": self._gid,
                "st_size": size, "st_blocks": (size + 511) // 512, "st_blksize": 65536,
                "st_mtime": when_ns, "st_ctime": when_ns, "st_atime": when_ns}

    @fuse_operation
    def opendir(self, path: str) -> int:
        if not isinstance(self._resolve(path), DirNode):
            raise refuse(errno.ENOTDIR)
        with self._state_lock:
            number = next(self._handle_ids)
            self._dir_snapshots[number] = None
        return number

    @fuse_operation
    def releasedir(self, path: str, fh: int) -> int:
        with self._state_lock:
            self._dir_snapshots.pop(fh, None)
        return 0

    def dir_snapshot(self, path: str, fh: int, offset: int, plus: bool) -> Sequence[Any]:
        """The entries of an open directory, computed when it is read from
        the start and kept for the kernel's follow-up calls at an offset."""
        with self._state_lock:
            entries = self._dir_snapshots.get(fh)
        if entries is None or offset == 0:
            entries = self.readdir_entries(path, fh, plus)
            with self._state_lock:
                if fh in self._dir_snapshots:
                    self._dir_snapshots[fh] = entries
        return entries

    def readdir(self, path: str, fh: int) -> list[Any]:
        return list(self.readdir_entries(path, fh, plus=False))

    @fuse_operation
    def readdir_entries(self, path: str, fh: int, plus: bool) -> Sequence[Any]:
        """Entries with attributes; plus: the kernel takes them as lookups (READDIRPLUS).

        Attributes go with the names: with READDIRPLUS (fusebind.ImapFUSE)
        the kernel then needs no LOOKUP per file for `ls -l`. They are made
        as each entry is handed over (DirEntries), never kept: a folder of
        100,000 messages would otherwise hold 100,000 stat dicts and
        buffers for as long as it is open or cached."""
        view, parts, node = self._locate(path)
        if not isinstance(node, DirNode):
            raise refuse(errno.ENOTDIR)
        items = view.entries(parts, node)
        # A big folder listed again unchanged gets the same entries back.
        with self._state_lock:
            cached = self._entries_cache
            if cached is not None and cached[0] == path and cached[1] == plus and cached[2] is items:
                return cached[3]
        prefix = path.rstrip("/") + "/"
        told = plus and not self.kernel_opens  # only open() reads _told
        listing = view.entries_from(node) if told else None
        if isinstance(listing, Listing):
            with self._state_lock:
                self._told_dirs[path.rstrip("/")] = (listing, self.store.size_epoch)
        # Entries made from that very listing's rows need no check each.
        all_rows_of_listing = (isinstance(listing, Listing) and isinstance(items, ListingEntries)
                               and items.table is listing.messages)

        def attrs(name: str, child: Node) -> dict[str, Any] | None:
            if isinstance(child, MessageRef):
                meta = child.meta
                if told and not all_rows_of_listing and (
                        not isinstance(listing, Listing) or listing.messages.get(meta.uid) != meta):
                    with self._state_lock:
                        self._told[prefix + name] = (child.uidvalidity, meta.uid, meta.size)
                return self._stat(0o444, meta.size, int(meta.internaldate * 1e9))
            if isinstance(child, DirNode):
                return self._dir_stat(view, child)
            if isinstance(child, DerivedFile) and child.size_known:
                if told:
                    with self._state_lock:
                        self._told_derived[prefix + name] = (child.key, child.size)
                return self._stat(0o444, child.size, child.mtime_ns)
            return None  # being written: its attributes change; the kernel asks

        def row_stat(table: MessageTable, row: int) -> dict[str, Any]:
            return self._stat(0o444, table.size_at(row), int(table.date_at(row) * 1e9))

        # Rows need no record of what the kernel was told when none is kept,
        # or when the directory's own record covers them.
        entries = DirEntries(items, attrs, row_stat if not told or all_rows_of_listing else None)
        with self._state_lock:
            self._entries_cache = (path, plus, items, entries)
        return entries

    @fuse_operation
    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 0, "f_bfree": 0, "f_bavail": 0,
                "f_files": 0, "f_ffree": 0, "f_favail": 0, "f_namemax": 255}

    @fuse_operation
    def access(self, path: str, amode: int) -> int:
        target = self._resolve(path)
        if amode & os.W_OK:
            self._check_writable()
            if isinstance(target, (MessageRef, Alias, DerivedFile)):
                raise refuse(errno.EACCES)
        return 0

    # --- reading ---------------------------------------------------------
    def _new_handle(self, handle: Handle) -> int:
        with self._state_lock:
            number = next(self._handle_ids)
            self._handles[number] = handle
            return number

    def _handle(self, fi: Any) -> Handle:
        with self._state_lock:
            handle = self._handles.get(fi.fh)
        if handle is None:
            raise refuse(errno.EBADF)
        return handle

    @fuse_operation
    def open(self, path: str, fi: Any) -> int:
        if self.kernel_opens:
            # The kernel takes ENOSYS as "opens need no reply" and never sends
            # OPEN or RELEASE again. Safe without per-open checks because a
            # name holds the UID, so it never names other bytes unless the
            # folder's UIDVALIDITY changes, and then (as when a size turns out
            # wrong) the store has the kernel forget the name's pages.
            raise refuse(errno.ENOSYS)
        writing = fi.flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND)
        target = self._resolve(path)
        if isinstance(target, DirNode):
            raise refuse(errno.EISDIR)
        if isinstance(target, NewFile):
            if writing:
                # One writing program per file: another (a second cp to the
                # same name) would mix its bytes into the first's, or append
                # a second copy. The creating process may open it again
                # (Python's mailbox creates with O_EXCL, then reopens).
                caller = callers_context()
                if target.creator_process is None or callers.process(caller[2] if caller else 0) \
                        != target.creator_process:
                    raise Busy(f"{path} is being written by another program")
                with target.lock:
                    self._check_still_open(target)
                    target.handles += 1
                    target.write_handles += 1
                    if fi.flags & os.O_TRUNC:
                        self._truncate_locked(target, 0)
                fi.fh = self._new_handle(WriteHandle(target))
                fi.direct_io = 1
                return 0
            # A reader (grep -r, a desktop indexer) of a file still being
            # written sees what is there so far; its close appends nothing.
            with target.lock:
                if target.handles <= 0:
                    raise NotFound(path)  # its last handle was just released: the spool is gone
                target.handles += 1
            fi.fh = self._new_handle(SpoolReadHandle(target))
            fi.direct_io = 1
            return 0
        if writing:
            self._check_writable()
            if isinstance(target, Alias) and fi.flags & os.O_TRUNC:
                # A name written before, written again (cp twice, rsync's
                # second run): a new file, filed once more, which the store
                # does not append again when the folder holds it already.
                view, parts = self.root.route(self._split(path))
                caller = callers_context()
                new = view.create(parts, caller[2] if caller else 0)
                new.creator_process = callers.process(caller[2]) if caller else None
                fi.fh = self._new_handle(WriteHandle(new))
                fi.direct_io = 1
                return 0
            raise refuse(errno.EACCES)  # messages are immutable in IMAP
        if isinstance(target, DerivedFile):
            return self._open_derived(path, target, fi)
        ref = target if isinstance(target, MessageRef) else self._message(path)
        shown_size = ref.meta.size
        if not ref.meta.size_verified and ref.meta.size <= WHOLE_LIMIT:
            # It will be read: fetch it now (read-ahead included), so its real
            # length is known before the kernel reads through its page cache.
            self.store.body(ref.folder.name, ref.uidvalidity, ref.meta)
        fi.fh = self._new_handle(ReadHandle(ref))
        if hasattr(fi, "noflush"):
            fi.noflush = 1  # nothing to flush on a read handle: spare the round trip at close
        # A message is immutable, so the kernel may keep its pages across
        # opens, as long as the same message is behind the path: a folder
        # recreated elsewhere can reuse a name for other bytes.
        # Until its real length is known (RFC822.SIZE can be wrong), read
        # it direct: the kernel then neither truncates nor pads at the
        # st_size it cached.
        identity = (ref.uidvalidity, ref.meta.uid)
        with self._state_lock:
            same_message = self._opened_as.get(path) == identity
            self._opened_as[path] = identity
            kernel_knows = self._told.get(path) == (*identity, ref.meta.size) or self._told_by_dir(path, ref)
        # The kernel clamps page-cache reads at the size it holds: only when
        # that is this message's real size may reads go through the cache.
        # Otherwise (a folder recreated under the same names, a size the
        # server got wrong) read direct, and have the kernel told.
        size_known = ref.meta.size_verified and ref.meta.size == shown_size and kernel_knows
        fi.keep_cache = 1 if size_known and same_message else 0
        fi.direct_io = 0 if size_known else 1
        if not kernel_knows and ref.meta.size_verified:
            self.names_changed(ref.folder.name, [ref.meta.filename])
        return 0

    def _told_by_dir(self, path: str, ref: MessageRef) -> bool:
        """Whether the kernel holds ref's attributes from a READDIRPLUS of its
        directory (see _told_dirs): made from the folder's current listing,
        which holds this very message, and no size corrected since. Caller
        holds _state_lock."""
        told = self._told_dirs.get(path.rsplit("/", 1)[0])
        if told is None:
            return False
        listing, epoch = told
        return (epoch == self.store.size_epoch and listing is self.store.cached_listing(ref.folder.name)
                and listing.uidvalidity == ref.uidvalidity and listing.messages.get(ref.meta.uid) == ref.meta)

    def _open_derived(self, path: str, node: DerivedFile, fi: Any) -> int:
        """A derived file's bytes are made now (the view fetches what they
        need), so its real length is known before the first read. Reads go
        through the page cache only while the kernel holds that length for
        this very file; otherwise they go direct (no truncation at a size
        the kernel cached, no NUL padding past a smaller real end) and the
        kernel is told to forget the name, so the next stat is right."""
        size = node.size if node.size_known or node.prepare is None else node.prepare()
        with self._state_lock:
            kernel_knows = self._told_derived.get(path) == (node.key, size)
            same_bytes = self._opened_derived.get(path) == node.key
            self._opened_derived[path] = node.key
        fi.fh = self._new_handle(DerivedReadHandle(node))
        if hasattr(fi, "noflush"):
            fi.noflush = 1
        fi.keep_cache = 1 if kernel_knows and same_bytes else 0
        fi.direct_io = 0 if kernel_knows else 1
        if not kernel_knows and self._forgetter is not None:
            self._forget_queue.put((0.0, [path]))
        return 0

    @fuse_operation
    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        if not fi.fh:  # opened by the kernel alone (kernel_opens): no handle, the path says it all
            view, _, node = self._locate(path)  # once: every READ of a -o ro mount comes here
            if isinstance(node, DerivedFile):
                return node.read(offset, size)
            ref = self._message_at(path, view, node)
            try:
                return self.store.read(ref.folder.name, ref.uidvalidity, ref.meta, offset, size)
            finally:
                if self._growth_notices:
                    with self._state_lock:
                        notice = self._growth_notices.get(path)
                    if notice is not None:
                        self._await_notice(notice, path)
        handle = self._handle(fi)
        if isinstance(handle, DerivedReadHandle):
            return handle.node.read(offset, size)
        if isinstance(handle, (WriteHandle, SpoolReadHandle)):
            return handle.new.spool.read(offset, size)
        ref = handle.ref
        return self.store.read(ref.folder.name, ref.uidvalidity, ref.meta, offset, size)

    @fuse_operation
    def release(self, path: str, fi: Any) -> int:
        with self._state_lock:
            handle = self._handles.pop(fi.fh, None)
        if isinstance(handle, (WriteHandle, SpoolReadHandle)):
            new = handle.new
            try:
                if isinstance(handle, WriteHandle):
                    with new.lock:
                        new.write_handles -= 1
                        last_writer = new.write_handles <= 0
                if isinstance(handle, WriteHandle) and last_writer and new.outcome is None:
                    # Every close by a writer has committed the file already;
                    # this is for one whose writer passed it on (SCM_RIGHTS)
                    # and never closed it itself. Nobody is left to tell of a
                    # failure but the log.
                    self._commit(new, lock_owner=None, pid=0)
            except ImapFSError as exc:
                log.warning("message written as %r was not appended: %s", new.name, exc)
            finally:
                self._drop_new_file_handle(new)
        return 0

    # --- extended attributes ---------------------------------------------
    @fuse_operation
    def listxattr(self, path: str) -> list[str]:
        target = self._resolve(path)
        if isinstance(target, DirNode):
            return [XATTR_FOLDER] if target.folder is not None else []
        if isinstance(target, (NewFile, DerivedFile)):
            return []
        return [XATTR_FLAGS, XATTR_UID, XATTR_MESSAGE_ID, XATTR_UIDVALIDITY]

    @fuse_operation
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if not name.startswith("user."):
            # ls -l asks for security.selinux and system.posix_acl_access on
            # every file, and the kernel does not remember the answer. ENOTSUP
            # (not ENODATA) lets ls remember that this filesystem has none and
            # stop asking; the kernel itself only gives up on ENOSYS, so
            # user.imap.* keeps working.
            raise refuse(errno.ENOTSUP)
        if not name.startswith("user.imap."):
            raise refuse(ENOATTR)
        target = self._resolve(path)
        if isinstance(target, DirNode):
            if name == XATTR_FOLDER and target.folder is not None:
                return names.folder_display(target.folder.name).encode("utf-8")
            raise refuse(ENOATTR)
        if isinstance(target, (NewFile, DerivedFile)):
            raise refuse(ENOATTR)
        ref = self._message(path)
        values = {
            XATTR_FLAGS: " ".join(ref.meta.flags),
            XATTR_UID: str(ref.meta.uid),
            XATTR_MESSAGE_ID: ref.meta.message_id,
            XATTR_UIDVALIDITY: str(ref.uidvalidity),
        }
        if name not in values:
            raise refuse(ENOATTR)
        return values[name].encode("utf-8")

    @fuse_operation
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        self._check_writable()
        if name != XATTR_FLAGS:
            # ENOTSUP lets cp/mv/rsync skip xattrs they try to preserve.
            raise refuse(errno.ENOTSUP)
        ref = self._message(path)
        flags = rfc5322.parse_flag_list(value.decode("utf-8", "replace"))
        if flags is None:
            raise InvalidMessage(f"not a list of IMAP flags: {value!r}")
        self.store.set_flags(ref.folder.name, ref.uidvalidity, ref.meta.uid, flags)
        return 0

    @fuse_operation
    def removexattr(self, path: str, name: str) -> int:
        self._check_writable()
        raise refuse(errno.ENOTSUP)

    # --- messages in -----------------------------------------------------
    # A file created in a folder is spooled and APPENDed exactly once, when
    # the program that wrote it closes it: close(2) waits for FLUSH (not
    # for RELEASE), so an APPEND that fails there makes `cp` fail and `mv`
    # keep its source. FLUSH comes for every close of every descriptor, so
    # only the closes that mean "done" commit: those from a descriptor
    # table that wrote to the file (not a forked child's inherited copy,
    # not a reader's), from a process not dying of a signal or failure.
    # fsync commits nothing: the message is not complete yet.

    @fuse_operation
    def create(self, path: str, mode: int, fi: Any) -> int:
        self._check_writable()
        view, parts = self.root.route(self._split(path))
        caller = callers_context()
        new = view.create(parts, caller[2] if caller else 0)
        new.creator_process = callers.process(caller[2]) if caller else None
        fi.fh = self._new_handle(WriteHandle(new))
        fi.direct_io = 1  # every write comes to us, and with its writer's lock owner
        return 0

    @fuse_operation
    def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
        handle = self._handle(fi)
        if not isinstance(handle, WriteHandle):
            raise refuse(errno.EBADF)
        new = handle.new
        with new.lock:
            self._check_still_open(new)
            new.spool.write(offset, data)
            new.writers.add(getattr(fi, "lock_owner", 0))
            if offset <= new.contiguous:
                new.contiguous = max(new.contiguous, offset + len(data))
            if not new.header_seen and offset < rfc5322.MAX_HEADER_SCAN:
                self._check_header_so_far(new)
        return len(data)

    @staticmethod
    def _check_still_open(new: NewFile) -> None:
        """Refuse to write a file whose fate is decided. Call with new.lock held."""
        if isinstance(new.outcome, ImapFSError):
            raise new.outcome
        if new.outcome is not None:
            log.warning("%s: written to after it was %s; that write is refused", new.name, new.outcome)
            raise refuse(errno.EBADF)

    @staticmethod
    def _check_header_so_far(new: NewFile) -> None:
        """Refuse, at the first write that shows it, bytes that cannot begin
        a mail message (`echo hi > INBOX/x` must fail in the shell, which
        never checks close). Call with new.lock held."""
        prefix = new.spool.read(0, min(new.contiguous, rfc5322.MAX_HEADER_SCAN))
        problem = rfc5322.header_problem(prefix, more_to_come=True)
        if problem:
            new.outcome = InvalidMessage(f"{new.name} is not a mail message: {problem}; nothing was appended")
            raise new.outcome
        new.header_seen = rfc5322.header_end(prefix) is not None or new.contiguous >= rfc5322.MAX_HEADER_SCAN

    @fuse_operation
    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        self._check_writable()
        target = self._resolve(path)
        if not isinstance(target, NewFile):
            raise refuse(errno.EACCES)  # messages are immutable in IMAP
        with self._state_lock:
            handle = self._handles.get(fh.fh) if fh is not None else None
        if not (isinstance(handle, WriteHandle) and handle.new is target):
            # Not its writer's ftruncate: another program's O_TRUNC open or
            # truncate(1), which would cut the writer's message short.
            raise Busy(f"{path} is being written by another program")
        with target.lock:
            self._check_still_open(target)
            self._truncate_locked(target, length)
        return 0

    @staticmethod
    def _truncate_locked(new: NewFile, length: int) -> None:
        """Cut a file being written to length. Call with new.lock held."""
        new.spool.truncate(length)
        new.contiguous = min(new.contiguous, length)
        new.header_seen = False

    @fuse_operation
    def flush(self, path: str, fi: Any) -> int:
        if self.kernel_opens:
            raise refuse(errno.ENOSYS)  # nothing is written on this mount: the kernel stops sending FLUSH
        handle = self._handle(fi)
        if isinstance(handle, WriteHandle):
            caller = callers_context()
            self._commit(handle.new, lock_owner=getattr(fi, "lock_owner", 0), pid=caller[2] if caller else 0)
        return 0

    @fuse_operation
    def fsync(self, path: str, datasync: int, fi: Any) -> int:
        # A message reaches the server whole or not at all: there is nothing
        # partial to make durable. The APPEND comes with the writer's close.
        if fi is not None and fi.fh:
            self._handle(fi)
        return 0

    def _commit(self, new: NewFile, lock_owner: int | None, pid: int) -> None:
        """APPEND new once, if this close means its writer is done.

        The close that means it is the creating process's (the one that
        made the file: cp, or the shell of `{ cat a; cat b; } > F/x`): a
        forked child's close, even of a child that wrote part of the file,
        leaves it to its parent. Where the creator is unknown, a close by a
        descriptor table that wrote commits. A writer that died of a signal
        or a failure status taints the file: it is never appended.
        lock_owner None: the last writing handle is being released (no closer
        left to ask; nobody to tell of a failure but the log). Raises the outcome's error to every close that asks after
        a refusal or a failure.
        """
        closer = callers.process(pid) if lock_owner is not None else None
        with new.commit_lock:
            with new.lock:
                outcome = new.outcome
                if outcome is None and lock_owner is not None:
                    if not new.writers:
                        # Nothing written yet: a shell's redirection closes the
                        # descriptor it opened as soon as it has dup'ed it.
                        return
                    if new.write_handles > 1:
                        return  # another handle may still write: the last one's close commits
                    creator = new.creator_process
                    if creator is not None and closer is not None and closer != creator:
                        if lock_owner in new.writers and new.tainted is None:
                            new.tainted = callers.abnormal_exit(pid)
                        return  # a forked child's close: its parent goes on, and closes last
                    if (creator is None or closer is None) and lock_owner not in new.writers \
                            and 0 not in new.writers:
                        return  # not a writer's close
            if isinstance(outcome, ImapFSError):
                raise outcome
            if outcome is not None:
                return
            # (At the last release, a file nothing was written to is committed
            # too: the view says what an empty file is. A folder refuses it;
            # the desktop trash keeps GIO's empty trashinfo reservation.)
            dying = new.tainted or callers.abnormal_exit(pid)
            if dying:
                with new.lock:
                    new.outcome = "discarded"
                self._forget_new_file(new)
                log.warning("%s was not appended to %r: %s, so it may be incomplete",
                            new.name, new.folder.name, dying)
                return
            with new.lock:
                new.outcome = "committing"  # writes from now on are refused: the literal's size is counted
            try:
                new.owner.commit(new)
                if new.outcome == "appended":
                    # The kernel may still hold the spool's size (LF line endings count one byte less).
                    self._forget_later(new.folder.name, [new.name], 0.0)
            except ImapFSError as exc:
                with new.lock:
                    new.outcome = exc
                log.warning("%s (%d bytes) was not appended to %r: %s", new.name, new.spool.size,
                            new.folder.name, exc)
                raise
            finally:
                self._forget_new_file(new)

    def _forget_new_file(self, new: NewFile) -> None:
        """Its fate is decided: the name now resolves to what was filed, if anything."""
        new.owner.forget(new)

    def _drop_new_file_handle(self, new: NewFile) -> None:
        with new.lock:
            new.handles -= 1
            last = new.handles <= 0
            if last and new.outcome is None:
                new.outcome = "discarded"
            # Its view still holds it: a Maildir tmp/ file awaiting its rename, or being filed by it.
            kept = new.outcome in ("kept", "delivering")
        if last and not kept:
            self._forget_new_file(new)
            new.spool.close()

    # --- messages out and between folders ---------------------------------
    @fuse_operation
    def unlink(self, path: str) -> int:
        self._check_writable()
        view, parts, target = self._locate(path)
        if isinstance(target, DirNode):
            raise refuse(errno.EISDIR)
        caller = callers_context()
        actor = callers.process(caller[2]) if caller else None
        view.unlink(parts, target, actor)
        return 0

    @fuse_operation
    def rename(self, old: str, new: str, flags: int = 0) -> int:
        self._check_writable()
        self.root.rename(self._split(old), self._split(new))
        return 0

    # --- folders ---------------------------------------------------------
    @fuse_operation
    def mkdir(self, path: str, mode: int) -> int:
        self._check_writable()
        view, parts = self.root.route(self._split(path))
        view.mkdir(parts)
        return 0

    @fuse_operation
    def rmdir(self, path: str) -> int:
        self._check_writable()
        view, parts, node = self._locate(path)
        if not isinstance(node, DirNode):
            raise refuse(errno.ENOTDIR)
        view.rmdir(parts, node)
        return 0

    # --- attributes tools set on what they wrote --------------------------
    def _accept_metadata_change(self, path: str, mtime_ns: int | None = None) -> int:
        """cp -p, mv and rsync -t set times, modes and owners on what they wrote;
        for directories and just-written files that has no meaning in IMAP
        and is accepted (a view may remember the time). On a stored message
        it would be a lie: refused."""
        self._check_writable()
        view, _, target = self._locate(path)
        if isinstance(target, (MessageRef, DerivedFile)):
            raise refuse(errno.EPERM)
        view.set_times(target, mtime_ns)
        return 0

    @fuse_operation
    def utimens(self, path: str, times: Any = None) -> int:
        mtime_ns = times[1] if times else None
        return self._accept_metadata_change(path, mtime_ns if isinstance(mtime_ns, int) else None)

    @fuse_operation
    def chmod(self, path: str, mode: int) -> int:
        return self._accept_metadata_change(path)

    @fuse_operation
    def chown(self, path: str, uid: int, gid: int) -> int:
        return self._accept_metadata_change(path)

    @fuse_operation
    def mknod(self, path: str, mode: int, dev: int) -> int:
        self._check_writable()
        raise refuse(errno.EPERM)

    @fuse_operation
    def symlink(self, target: str, source: str) -> int:
        self._check_writable()
        raise refuse(errno.EPERM)

    @fuse_operation
    def link(self, target: str, source: str) -> int:
        self._check_writable()
        raise refuse(errno.EPERM)

