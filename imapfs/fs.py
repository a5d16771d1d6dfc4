"""ImapFS: the FUSE operations, kept thin.

Turns paths into folders and messages (via names.py and the store), builds
stat dicts and file handles, and holds the ONE map from imapfs errors to
errno (``errno_for``). Anything unexpected is logged with its traceback and
becomes EIO: mfusepy would otherwise report EINVAL, which misleads users.

Writing is mail management: a file created in a folder is buffered and
APPENDed when it is closed; rename moves messages and folders; unlink moves
to Trash. A name a tool wrote under stays resolvable for a while after the
APPEND (an "alias"), because tools stat, rename and set times on the name
they wrote, while the message itself lists under its canonical name.
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
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import mfusepy as fuse
from cachetools import LRUCache, TTLCache

from imapfs import names, rfc5322
from imapfs.errors import (
    AlreadyExists,
    ConnectError,
    ImapFSError,
    InvalidMessage,
    InvalidName,
    NotEmpty,
    NotFound,
    NotSupported,
    QuotaError,
    ReadOnly,
    StaleMessage,
)
from imapfs.fusebind import KernelCache
from imapfs.model import Folder, MessageMeta
from imapfs.store import WHOLE_LIMIT, MailStore

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

XATTR_FLAGS = "user.imap.flags"
XATTR_UID = "user.imap.uid"
XATTR_MESSAGE_ID = "user.imap.message_id"
XATTR_FOLDER = "user.imap.folder"
XATTR_UIDVALIDITY = "user.imap.uidvalidity"
ENOATTR = getattr(errno, "ENOATTR", errno.ENODATA)
# How long the name a file was written under keeps resolving after its APPEND.
ALIAS_SECONDS = 300
# How long after a READ found a message shorter than its RFC822.SIZE the kernel is told (see size_corrected).
SHRINK_NOTICE_SECONDS = 1.0
# Bytes of a message being written kept in memory before spilling to a temp file.
SPOOL_IN_MEMORY = 8 * 1024 * 1024


def errno_for(exc: BaseException) -> int:
    """The single place where imapfs errors become errno values."""
    table: list[tuple[type[BaseException], int]] = [
        (StaleMessage, errno.ESTALE),
        (NotFound, errno.ENOENT),
        (ReadOnly, errno.EROFS),
        (AlreadyExists, errno.EEXIST),
        (NotEmpty, errno.ENOTEMPTY),
        (InvalidMessage, errno.EINVAL),
        (InvalidName, errno.EINVAL),
        (NotSupported, errno.EPERM),
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


@dataclass
class DirNode:
    """A directory: an IMAP folder, or a parent that exists only as a path level."""

    folder: Folder | None
    children: dict[str, DirNode] = field(default_factory=dict)


@dataclass
class MessageRef:
    """A message file: where it lives and what the listing knows of it."""

    folder: Folder
    uidvalidity: int
    meta: MessageMeta


@dataclass
class NewFile:
    """A file being written into a folder; APPENDed when closed."""

    folder: Folder
    name: str
    spool: Any = field(default_factory=lambda: tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY))
    size: int = 0
    created_ns: int = field(default_factory=time.time_ns)
    # A new file must become a message, so even one closed without any
    # write (an empty file, `touch`) is checked, and refused, at close.
    dirty: bool = True
    discarded: bool = False  # unlinked before close: never append
    handles: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)  # guards spool, size, dirty


@dataclass
class Alias:
    """The name a tool wrote a message under, after its APPEND."""

    folder: Folder
    uid: int | None
    uidvalidity: int | None
    size: int
    mtime_ns: int


@dataclass
class ReadHandle:
    ref: MessageRef


@dataclass
class WriteHandle:
    new: NewFile


class ImapFS(fuse.Operations):
    """Folders as directories, messages as .eml files."""

    use_ns = True

    def __init__(self, store: MailStore, *, read_only: bool = False, kernel_opens: bool = False,
                 on_init: Callable[[], None] | None = None, on_destroy: Callable[[], None] | None = None) -> None:
        self.store = store
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
        self._mounted_at_ns = time.time_ns()
        self._handles: dict[int, ReadHandle | WriteHandle] = {}
        self._dir_snapshots: dict[int, list[Any] | None] = {}  # open directories' entries
        # ((path, size epoch, plus), node, listing, entries) of the last directory listed.
        self._entries_cache: tuple[tuple[str, int, bool], Any, Any, list[Any]] | None = None
        self._handle_ids = itertools.count(1)
        self._state_lock = threading.Lock()  # guards _handles, _new_files, _aliases
        self._new_files: dict[tuple[str, str], NewFile] = {}
        self._aliases: TTLCache[tuple[str, str], Alias] = TTLCache(maxsize=100_000, ttl=ALIAS_SECONDS)
        self._tree_lock = threading.Lock()  # guards _tree_source, _tree
        self._tree_source: list[Folder] | None = None
        self._tree = DirNode(folder=None)
        self.initialized = False  # set once the kernel has accepted the mount
        self._kernel_cache: KernelCache | None = None  # libfuse 3 only
        # (uidvalidity, uid) last opened at each path: the kernel may keep a
        # file's pages only while the same message is behind that path.
        self._opened_as: LRUCache[str, tuple[int, int]] = LRUCache(maxsize=100_000)
        # (uidvalidity, uid, size) last told to the kernel for each message
        # path: reads may go through the page cache only while it is right.
        self._told: LRUCache[str, tuple[int, int, int]] = LRUCache(maxsize=200_000)
        # (when, paths) for the kernel to forget, from time.monotonic() on; None ends the forgetter.
        self._forget_queue: queue.SimpleQueue[tuple[float, list[str]] | None] = queue.SimpleQueue()
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
        self.store.on_size_corrected = self.size_corrected
        if self._on_init:
            self._on_init()

    # --- changes made elsewhere -------------------------------------------
    def _forget_loop(self) -> None:
        waiting: list[tuple[float, int, list[str]]] = []  # heap of notices due later
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
                try:
                    self._kernel_forget(heapq.heappop(waiting)[2])
                except Exception:
                    log.exception("kernel invalidation failed")

    def names_changed(self, folder: str, filenames: list[str]) -> None:
        """The store learnt that the kernel may hold wrong attributes for these
        names. Called from FUSE threads, so the kernel is told from another."""
        self._forget_later(folder, filenames, 0.0)

    def _forget_later(self, folder: str, filenames: list[str], due: float) -> None:
        """Queue names of folder for the forgetter thread, to be told at time.monotonic() == due."""
        directory = self._folder_path(folder)
        if directory is not None and self._forgetter is not None:
            self._forget_queue.put((due, [f"{directory}/{name}" for name in filenames]))

    def size_corrected(self, folder: str, filename: str, grew: bool) -> None:
        """A message's real length is not its RFC822.SIZE (the store just
        found out). The kernel must hear of it, but on a kernel_opens mount
        a shrink is told late: the kernel shrinks the file itself from the
        short reply to the READ that found out, and a notice racing that
        reply stops it doing so (the attribute version moved) and leaves the
        page's zero fill visible as NUL bytes. Told a moment later, the notice
        still corrects the size of a file the kernel has not read yet."""
        later = 0.0 if grew or not self.kernel_opens else time.monotonic() + SHRINK_NOTICE_SECONDS
        self._forget_later(folder, [filename], later)

    def _kernel_forget(self, paths: list[str]) -> None:
        """Make the kernel drop cached names, attributes and pages for paths.

        Only from threads that serve no FUSE request (the watcher): the
        kernel may wait on a request in that directory before it applies
        the notice. Without libfuse 3 this is skipped and the kernel's
        caches expire by attr_timeout/entry_timeout instead.
        """
        if self._kernel_cache is not None:
            self._kernel_cache.forget(paths)

    def _folder_path(self, folder: str) -> str | None:
        try:
            delimiter = self.store.folder(folder).delimiter
        except ImapFSError:
            return None
        return "/" + "/".join(names.folder_to_parts(folder, delimiter))

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
        directory = self._folder_path(folder)
        if directory is None:
            return
        gone: list[str] = []
        if old is not None:
            if new is None or new.uidvalidity != old.uidvalidity:
                gone = sorted(old.filenames())
            else:
                gone = sorted(old.filenames() - new.filenames())
        self._kernel_forget([directory] + [f"{directory}/{name}" for name in gone])

    def folders_changed(self) -> None:
        """Folders were created, deleted or renamed elsewhere."""
        old_names = {f.name: f for f in self.store.cached_folders() or []}
        self.store.folders_changed_elsewhere()
        try:
            new_names = {f.name for f in self.store.folders()}
        except ImapFSError:
            return
        paths = ["/"]
        for name, folder in old_names.items():
            if name not in new_names:
                self.store.invalidate(name)
                parts = names.folder_to_parts(name, folder.delimiter)
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
    def _root(self) -> DirNode:
        folders = self.store.folders()
        with self._tree_lock:
            if folders is not self._tree_source:
                self._tree = build_tree(folders)
                self._tree_source = folders
            return self._tree

    def _dir(self, parts: list[str]) -> DirNode | None:
        node = self._root()
        for part in parts:
            child = node.children.get(part)
            if child is None:
                return None
            node = child
        return node

    @staticmethod
    def _split(path: str) -> list[str]:
        return [p for p in path.split("/") if p]

    def _parent_folder(self, path: str) -> tuple[Folder, str]:
        """The selectable folder a file path lives in, and the file name."""
        parts = self._split(path)
        parent = self._dir(parts[:-1]) if parts else None
        if parent is None or parent.folder is None or not parent.folder.selectable or not parts:
            raise NotFound(path)
        return parent.folder, parts[-1]

    def _resolve(self, path: str) -> DirNode | MessageRef | NewFile | Alias:
        # The hot path of every lookup, open and stat: one walk, and the
        # write-side tables consulted only when they hold anything.
        parts = self._split(path)
        if not parts:
            return self._root()
        parent = self._dir(parts[:-1])
        if parent is None:
            raise NotFound(path)
        name = parts[-1]
        child = parent.children.get(name)
        if child is not None:
            return child
        folder = parent.folder
        if folder is None or not folder.selectable:
            raise NotFound(path)
        key = (folder.name, name)
        if self._new_files or self._aliases:
            with self._state_lock:
                new = self._new_files.get(key)
                alias = self._aliases.get(key)
            if new is not None:
                return new
            if alias is not None:
                return alias
        listing, meta = self.store.message(folder.name, name)
        return MessageRef(folder, listing.uidvalidity, meta)

    def _message(self, path: str) -> MessageRef:
        """The message at path (also under a name it was just written as)."""
        target = self._resolve(path)
        if isinstance(target, MessageRef):
            return target
        if isinstance(target, Alias) and target.uid is not None and target.uidvalidity is not None:
            listing = self.store.listing(target.folder.name)
            meta = listing.messages.get(target.uid)
            if meta is not None and listing.uidvalidity == target.uidvalidity:
                return MessageRef(target.folder, listing.uidvalidity, meta)
        if isinstance(target, DirNode):
            raise refuse(errno.EISDIR)
        raise NotFound(path)

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnly("mounted read-only")

    # --- attributes ------------------------------------------------------
    @fuse_operation
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        target = self._resolve(path)
        if isinstance(target, DirNode):
            return self._dir_stat(target)
        if isinstance(target, NewFile):
            return self._stat(0o644, target.size, target.created_ns)
        if isinstance(target, Alias):
            return self._stat(0o444, target.size, target.mtime_ns)
        meta = target.meta
        if not self.kernel_opens:  # only open() reads _told, and it never runs then
            with self._state_lock:
                self._told[path] = (target.uidvalidity, meta.uid, meta.size)
        return self._stat(0o444, meta.size, int(meta.internaldate * 1e9))

    def _dir_stat(self, node: DirNode) -> dict[str, Any]:
        mode = 0o555 if self.read_only else 0o755
        return {"st_mode": stat.S_IFDIR | mode, "st_nlink": 2 + len(node.children), "st_uid": self._uid,
                "st_gid": self._gid, "st_size": 0, "st_mtime": self._mounted_at_ns,
                "st_ctime": self._mounted_at_ns, "st_atime": self._mounted_at_ns}

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

    def dir_snapshot(self, path: str, fh: int, offset: int, plus: bool) -> list[Any]:
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
        return self.readdir_entries(path, fh, plus=False)

    @fuse_operation
    def readdir_entries(self, path: str, fh: int, plus: bool) -> list[Any]:
        """Entries with attributes; plus: the kernel takes them as lookups (READDIRPLUS)."""
        node = self._resolve(path)
        if not isinstance(node, DirNode):
            raise refuse(errno.ENOTDIR)
        # Attributes go with the names: with READDIRPLUS (fusebind.ImapFUSE)
        # the kernel then needs no LOOKUP per file for `ls -l`.
        listing = None
        if node.folder is not None and node.folder.selectable:
            listing = self.store.listing(node.folder.name)
        # A big folder listed again unchanged gets the same entries back
        # (and ImapFUSE the stat buffers it made from them): `ls -l` twice
        # should not build 10,000 stat dicts twice.
        # The same node and listing objects mean nothing changed: both are
        # replaced, never mutated, when the server's state moves on.
        key = (path, self.store.size_epoch, plus)
        with self._state_lock:
            cached = self._entries_cache
            if (cached is not None and cached[0] == key and cached[1] is node and cached[2] is listing
                    and not self._new_files):
                return cached[3]
        entries: list[Any] = [".", ".."]
        entries.extend((name, self._dir_stat(child), 0) for name, child in node.children.items())
        if listing is not None:
            entries.extend((meta.filename, self._stat(0o444, meta.size, int(meta.internaldate * 1e9)), 0)
                           for meta in listing.messages.values() if meta.filename not in node.children)
            with self._state_lock:
                if plus and not self.kernel_opens:  # only open() reads _told
                    prefix = path.rstrip("/") + "/"
                    for meta in listing.messages.values():
                        self._told[prefix + meta.filename] = (listing.uidvalidity, meta.uid, meta.size)
                entries.extend(name for (folder, name) in self._new_files if folder == node.folder.name)
        with self._state_lock:
            self._entries_cache = (key, node, listing, entries)
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
            if isinstance(target, (MessageRef, Alias)):
                raise refuse(errno.EACCES)
        return 0

    # --- reading ---------------------------------------------------------
    def _new_handle(self, handle: ReadHandle | WriteHandle) -> int:
        with self._state_lock:
            number = next(self._handle_ids)
            self._handles[number] = handle
            return number

    def _handle(self, fi: Any) -> ReadHandle | WriteHandle:
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
            # A second open of a file still being written (some tools reopen it).
            with self._state_lock:
                target.handles += 1
            fi.fh = self._new_handle(WriteHandle(target))
            fi.direct_io = 1
            return 0
        if writing:
            self._check_writable()
            raise refuse(errno.EACCES)  # messages are immutable in IMAP
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
            kernel_knows = self._told.get(path) == (*identity, ref.meta.size)
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

    @fuse_operation
    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        if not fi.fh:  # opened by the kernel alone (kernel_opens): no handle, the path says it all
            ref = self._message(path)
            return self.store.read(ref.folder.name, ref.uidvalidity, ref.meta, offset, size)
        handle = self._handle(fi)
        if isinstance(handle, WriteHandle):
            with handle.new.lock:
                handle.new.spool.seek(offset)
                return handle.new.spool.read(size)
        ref = handle.ref
        return self.store.read(ref.folder.name, ref.uidvalidity, ref.meta, offset, size)

    @fuse_operation
    def release(self, path: str, fi: Any) -> int:
        with self._state_lock:
            handle = self._handles.pop(fi.fh, None)
        if isinstance(handle, WriteHandle):
            new = handle.new
            try:
                self._append_if_dirty(new)
            except ImapFSError as exc:
                # flush() already reported this to the writer; say it once more in the log.
                log.warning("message written as %r was not appended: %s", new.name, exc)
            finally:
                self._drop_new_file(new)
        return 0

    # --- extended attributes ---------------------------------------------
    @fuse_operation
    def listxattr(self, path: str) -> list[str]:
        target = self._resolve(path)
        if isinstance(target, DirNode):
            return [XATTR_FOLDER] if target.folder is not None else []
        if isinstance(target, NewFile):
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
        if isinstance(target, NewFile):
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
    @fuse_operation
    def create(self, path: str, mode: int, fi: Any) -> int:
        self._check_writable()
        folder, name = self._parent_folder(path)
        with self._state_lock:
            if (folder.name, name) in self._new_files:
                raise AlreadyExists(path)
        new = NewFile(folder=folder, name=name, handles=1)
        with self._state_lock:
            self._new_files[(folder.name, name)] = new
            self._aliases.pop((folder.name, name), None)
        fi.fh = self._new_handle(WriteHandle(new))
        fi.direct_io = 1
        return 0

    @fuse_operation
    def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
        handle = self._handle(fi)
        if not isinstance(handle, WriteHandle):
            raise refuse(errno.EBADF)
        new = handle.new
        with new.lock:
            new.spool.seek(offset)
            new.spool.write(data)
            new.size = max(new.size, offset + len(data))
            new.dirty = True
        return len(data)

    @fuse_operation
    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        self._check_writable()
        target = self._resolve(path)
        if not isinstance(target, NewFile):
            raise refuse(errno.EACCES)  # messages are immutable in IMAP
        with target.lock:
            target.spool.truncate(length)
            target.size = length
            target.dirty = True
        return 0

    @fuse_operation
    def flush(self, path: str, fi: Any) -> int:
        # close(2) waits for flush, not for release: an APPEND failure
        # reported here makes `cp` exit non-zero, as it must.
        if self.kernel_opens:
            raise refuse(errno.ENOSYS)  # nothing is written on this mount: the kernel stops sending FLUSH
        handle = self._handle(fi)
        if isinstance(handle, WriteHandle):
            self._append_if_dirty(handle.new)
        return 0

    @fuse_operation
    def fsync(self, path: str, datasync: int, fi: Any) -> int:
        return self.flush(path, fi)

    def _append_if_dirty(self, new: NewFile) -> None:
        with new.lock:
            if not new.dirty or new.discarded:
                return
            new.spool.seek(0)
            data = new.spool.read()
            new.dirty = False
        problem = rfc5322.looks_like_message(data)
        if problem:
            raise InvalidMessage(f"{new.name} is not a mail message: {problem}; nothing was appended")
        flags = rfc5322.flags_from_filename(new.name)
        when = rfc5322.internaldate_from_headers(data)
        try:
            appended = self.store.append(new.folder.name, data, flags, when)
        except ImapFSError as exc:
            log.warning("%s (%d bytes) was not appended to %r: %s", new.name, len(data), new.folder.name, exc)
            raise
        uidvalidity, uid = appended if appended else (None, None)
        mtime_ns = int(when.timestamp() * 1e9) if when else time.time_ns()
        with self._state_lock:
            self._aliases[(new.folder.name, new.name)] = Alias(new.folder, uid, uidvalidity, len(data), mtime_ns)

    def _drop_new_file(self, new: NewFile) -> None:
        with self._state_lock:
            new.handles -= 1
            if new.handles > 0:
                return
            if self._new_files.get((new.folder.name, new.name)) is new:
                del self._new_files[(new.folder.name, new.name)]
        new.spool.close()

    # --- messages out and between folders ---------------------------------
    @fuse_operation
    def unlink(self, path: str) -> int:
        self._check_writable()
        target = self._resolve(path)
        if isinstance(target, DirNode):
            raise refuse(errno.EISDIR)
        if isinstance(target, NewFile):
            with target.lock:
                target.discarded = True
            with self._state_lock:
                self._new_files.pop((target.folder.name, target.name), None)
            return 0
        ref = self._message(path)
        self.store.delete(ref.folder.name, ref.uidvalidity, ref.meta.uid)
        self._forget_aliases_of(ref)
        return 0

    def _forget_aliases_of(self, ref: MessageRef) -> None:
        with self._state_lock:
            for key, alias in list(self._aliases.items()):
                if alias.folder.name == ref.folder.name and alias.uid == ref.meta.uid:
                    self._aliases.pop(key, None)

    @fuse_operation
    def rename(self, old: str, new: str, flags: int = 0) -> int:
        self._check_writable()
        source = self._resolve(old)
        if isinstance(source, DirNode):
            return self._rename_folder(old, new, source)
        new_folder, new_name = self._parent_folder(new)
        old_folder, old_name = self._parent_folder(old)
        if isinstance(source, (NewFile, Alias)) and new_folder.name == old_folder.name:
            return self._rename_written(source, old_name, new_name)
        ref = self._message(old)
        if new_folder.name == old_folder.name:
            raise refuse(errno.EPERM)  # a message's name is derived from it; it cannot be chosen
        self.store.move(old_folder.name, ref.uidvalidity, ref.meta.uid, new_folder.name)
        self._forget_aliases_of(ref)
        return 0

    def _rename_written(self, source: NewFile | Alias, old_name: str, new_name: str) -> int:
        """rsync and mail tools write a temp name, then rename it: follow the
        name, and apply flags the new Maildir-style name carries."""
        folder = source.folder.name
        with self._state_lock:
            if isinstance(source, NewFile):
                self._new_files.pop((folder, old_name), None)
                source.name = new_name
                self._new_files[(folder, new_name)] = source
                return 0
            self._aliases.pop((folder, old_name), None)
            self._aliases[(folder, new_name)] = source
        wanted = set(rfc5322.flags_from_filename(new_name)) - set(rfc5322.flags_from_filename(old_name))
        if wanted and source.uid is not None and source.uidvalidity is not None:
            listing = self.store.listing(folder)
            meta = listing.messages.get(source.uid)
            if meta is not None:
                self.store.set_flags(folder, source.uidvalidity, source.uid, tuple(sorted(set(meta.flags) | wanted)))
        return 0

    def _rename_folder(self, old: str, new: str, node: DirNode) -> int:
        if node.folder is None:
            raise refuse(errno.EPERM)  # a level that is no IMAP folder has nothing to rename
        new_parts = self._split(new)
        if not new_parts or self._dir(new_parts) is not None:
            raise AlreadyExists(new)
        parent = self._dir(new_parts[:-1])
        if parent is None:
            raise NotFound(new)
        target = _folder_name(new, new_parts, node.folder.delimiter)
        self.store.rename_folder(node.folder.name, target)
        return 0

    # --- folders ---------------------------------------------------------
    @fuse_operation
    def mkdir(self, path: str, mode: int) -> int:
        self._check_writable()
        parts = self._split(path)
        if self._dir(parts) is not None:
            raise AlreadyExists(path)
        if self._dir(parts[:-1]) is None:
            raise NotFound(path)
        self.store.create_folder(_folder_name(path, parts, self._delimiter()))
        return 0

    def _delimiter(self) -> str | None:
        for folder in self.store.folders():
            if folder.delimiter:
                return folder.delimiter
        return None

    @fuse_operation
    def rmdir(self, path: str) -> int:
        self._check_writable()
        node = self._dir(self._split(path))
        if node is None:
            raise NotFound(path)
        if node.children:
            raise NotEmpty(path)
        if node.folder is None:
            raise NotFound(path)
        self.store.delete_folder(node.folder.name)
        return 0

    # --- attributes tools set on what they wrote --------------------------
    def _accept_metadata_change(self, path: str) -> int:
        """cp -p, mv and rsync -t set times, modes and owners on what they wrote;
        for directories and just-written files that has no meaning in IMAP
        and is accepted. On a stored message it would be a lie: refused."""
        self._check_writable()
        target = self._resolve(path)
        if isinstance(target, MessageRef):
            raise refuse(errno.EPERM)
        return 0

    @fuse_operation
    def utimens(self, path: str, times: Any = None) -> int:
        return self._accept_metadata_change(path)

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


def _folder_name(path: str, parts: list[str], delimiter: str | None) -> str:
    """The IMAP folder a new directory path names, or InvalidName (EINVAL)
    where none can: mkdir 'a%2Fb' on a server whose delimiter is '/' would
    otherwise create a/b, two levels."""
    try:
        name = names.parts_to_folder(parts, delimiter)
    except ValueError as exc:
        raise InvalidName(f"no IMAP folder can be called {path!r} on this server: {exc}") from None
    shown = names.folder_to_parts(name, delimiter)
    if list(shown) != list(parts):
        # e.g. "50%25" names the folder "50%", which shows as "50%": the
        # tool that made the directory would not find it under its name.
        raise InvalidName(f"{path!r} would show as {'/'.join(shown)!r}; use that name")
    return name


def build_tree(folders: list[Folder]) -> DirNode:
    """The directory tree for a folder list; parents the server did not
    list (no \\Noselect entry for them) still appear as directories."""
    root = DirNode(folder=None)
    for folder in sorted(folders, key=lambda f: f.name):
        node = root
        for part in names.folder_to_parts(folder.name, folder.delimiter):
            node = node.children.setdefault(part, DirNode(folder=None))
        node.folder = folder
    return root
