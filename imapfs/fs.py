"""ImapFS: the FUSE operations, kept thin.

Turns paths into folders and messages (via names.py and the store), builds
stat dicts and file handles, and holds the ONE map from imapfs errors to
errno (``errno_for``). Anything unexpected is logged with its traceback and
becomes EIO: mfusepy would otherwise report EINVAL, which misleads users.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import mfusepy as fuse

from imapfs import names
from imapfs.errors import (
    AlreadyExists,
    ConnectError,
    ImapFSError,
    InvalidMessage,
    NotEmpty,
    NotFound,
    NotSupported,
    QuotaError,
    ReadOnly,
    StaleMessage,
)
from imapfs.model import Folder, Listing, MessageMeta
from imapfs.store import MailStore

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

XATTR_FLAGS = "user.imap.flags"
XATTR_UID = "user.imap.uid"
XATTR_MESSAGE_ID = "user.imap.message_id"
XATTR_FOLDER = "user.imap.folder"
XATTR_UIDVALIDITY = "user.imap.uidvalidity"
ENOATTR = getattr(errno, "ENOATTR", errno.ENODATA)


def errno_for(exc: BaseException) -> int:
    """The single place where imapfs errors become errno values."""
    table: list[tuple[type[BaseException], int]] = [
        (StaleMessage, errno.ESTALE),
        (NotFound, errno.ENOENT),
        (ReadOnly, errno.EROFS),
        (AlreadyExists, errno.EEXIST),
        (NotEmpty, errno.ENOTEMPTY),
        (InvalidMessage, errno.EINVAL),
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
            if number in (errno.ENOENT, ENOATTR):
                log.debug("%s%r: %s", method.__name__, args[:1], exc)
            else:
                log.warning("%s %s: %s", method.__name__, args[0] if args else "", exc)
            raise fuse.FuseOSError(number) from exc
        except Exception:
            log.exception("unexpected error in %s %s", method.__name__, args[0] if args else "")
            raise fuse.FuseOSError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


@dataclass
class DirNode:
    """A directory: an IMAP folder, or a parent that exists only as a path level."""

    folder: Folder | None
    children: dict[str, DirNode] = field(default_factory=dict)


@dataclass
class OpenMessage:
    folder: str
    uidvalidity: int
    meta: MessageMeta


class ImapFS(fuse.Operations):
    """Folders as directories, messages as read-only .eml files."""

    use_ns = True

    def __init__(self, store: MailStore, *, read_only: bool = True,
                 on_init: Callable[[], None] | None = None, on_destroy: Callable[[], None] | None = None) -> None:
        self.store = store
        self.read_only = read_only
        self._on_init = on_init
        self._on_destroy = on_destroy
        self._uid = os.getuid()
        self._gid = os.getgid()
        self._mounted_at_ns = time.time_ns()
        self._handles: dict[int, OpenMessage] = {}
        self._handle_ids = itertools.count(1)
        self._handles_lock = threading.Lock()  # guards _handles
        self._tree_lock = threading.Lock()  # guards _tree_source, _tree
        self._tree_source: list[Folder] | None = None
        self._tree = DirNode(folder=None)

    # --- lifecycle -------------------------------------------------------
    def init(self, path: str) -> None:
        # Threads and sockets start here, after the process has daemonised.
        if self._on_init:
            self._on_init()

    def destroy(self, path: str) -> None:
        if self._on_destroy:
            self._on_destroy()
        self.store.pool.close()

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

    def _resolve(self, path: str) -> DirNode | tuple[Folder, Listing, MessageMeta]:
        parts = [p for p in path.split("/") if p]
        node = self._dir(parts)
        if node is not None:
            return node
        if not parts or not parts[-1].endswith(names.EML_SUFFIX):
            raise NotFound(path)
        parent = self._dir(parts[:-1])
        if parent is None or parent.folder is None or not parent.folder.selectable:
            raise NotFound(path)
        listing, meta = self.store.message(parent.folder.name, parts[-1])
        return parent.folder, listing, meta

    # --- attributes ------------------------------------------------------
    @fuse_operation
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        target = self._resolve(path)
        if isinstance(target, DirNode):
            return self._dir_stat(target)
        return self._file_stat(target[2])

    def _dir_stat(self, node: DirNode) -> dict[str, Any]:
        mode = 0o555 if self.read_only else 0o755
        return {"st_mode": stat.S_IFDIR | mode, "st_nlink": 2 + len(node.children), "st_uid": self._uid,
                "st_gid": self._gid, "st_size": 0, "st_mtime": self._mounted_at_ns,
                "st_ctime": self._mounted_at_ns, "st_atime": self._mounted_at_ns}

    def _file_stat(self, meta: MessageMeta) -> dict[str, Any]:
        when = int(meta.internaldate * 1e9)
        return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_uid": self._uid, "st_gid": self._gid,
                "st_size": meta.size, "st_blocks": (meta.size + 511) // 512, "st_blksize": 65536,
                "st_mtime": when, "st_ctime": when, "st_atime": when}

    @fuse_operation
    def readdir(self, path: str, fh: int) -> list[str]:
        node = self._resolve(path)
        if not isinstance(node, DirNode):
            raise fuse.FuseOSError(errno.ENOTDIR)
        entries = [".", ".."] + list(node.children)
        if node.folder is not None and node.folder.selectable:
            listing = self.store.listing(node.folder.name)
            entries.extend(name for name in listing.by_name if name not in node.children)
        return entries

    @fuse_operation
    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 0, "f_bfree": 0, "f_bavail": 0,
                "f_files": 0, "f_ffree": 0, "f_favail": 0, "f_namemax": 255}

    @fuse_operation
    def access(self, path: str, amode: int) -> int:
        target = self._resolve(path)
        if amode & os.W_OK and (self.read_only or not isinstance(target, DirNode)):
            raise ReadOnly(path)
        return 0

    # --- reading ---------------------------------------------------------
    @fuse_operation
    def open(self, path: str, fi: Any) -> int:
        if fi.flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise ReadOnly(path)
        target = self._resolve(path)
        if isinstance(target, DirNode):
            raise fuse.FuseOSError(errno.EISDIR)
        folder, listing, meta = target
        with self._handles_lock:
            handle = next(self._handle_ids)
            self._handles[handle] = OpenMessage(folder.name, listing.uidvalidity, meta)
        fi.fh = handle
        # A message is immutable, so the kernel may keep its pages across
        # opens. Until its real length is known (RFC822.SIZE can be wrong),
        # read it direct: the kernel then neither truncates nor pads at the
        # st_size it cached.
        fi.keep_cache = 1 if meta.size_verified else 0
        fi.direct_io = 0 if meta.size_verified else 1
        return 0

    @fuse_operation
    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        with self._handles_lock:
            handle = self._handles.get(fi.fh)
        if handle is None:
            raise fuse.FuseOSError(errno.EBADF)
        return self.store.read(handle.folder, handle.uidvalidity, handle.meta, offset, size)

    @fuse_operation
    def release(self, path: str, fi: Any) -> int:
        with self._handles_lock:
            self._handles.pop(fi.fh, None)
        return 0

    # --- extended attributes ---------------------------------------------
    @fuse_operation
    def listxattr(self, path: str) -> list[str]:
        target = self._resolve(path)
        if isinstance(target, DirNode):
            return [XATTR_FOLDER] if target.folder is not None else []
        return [XATTR_FLAGS, XATTR_UID, XATTR_MESSAGE_ID, XATTR_UIDVALIDITY]

    @fuse_operation
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        target = self._resolve(path)
        if isinstance(target, DirNode):
            if name == XATTR_FOLDER and target.folder is not None:
                return target.folder.name.encode("utf-8")
            raise fuse.FuseOSError(ENOATTR)
        _folder, listing, meta = target
        values = {
            XATTR_FLAGS: " ".join(meta.flags),
            XATTR_UID: str(meta.uid),
            XATTR_MESSAGE_ID: meta.message_id,
            XATTR_UIDVALIDITY: str(listing.uidvalidity),
        }
        if name not in values:
            raise fuse.FuseOSError(ENOATTR)
        return values[name].encode("utf-8")

    # --- writing (the read-only mount refuses everything) ----------------
    def _refuse(self, path: str, *args: Any) -> int:
        raise fuse.FuseOSError(errno.EROFS)

    create = mknod = mkdir = unlink = rmdir = symlink = link = _refuse  # type: ignore[assignment]
    rename = chmod = chown = truncate = utimens = write = _refuse  # type: ignore[assignment]
    setxattr = removexattr = _refuse  # type: ignore[assignment]


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
