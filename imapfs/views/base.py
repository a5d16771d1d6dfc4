"""What a view hands the FUSE edge: four kinds of node, and the View interface.

fs.py knows these nodes and nothing of any layout: a directory (DirNode), a
stored message (MessageRef), a file being written (NewFile), the name a
file was written under after it was stored (Alias), and a read-only file
whose bytes a view derives from stored mail (DerivedFile). A view maps path parts
(the path split on "/", without the view's own prefix) to nodes, lists
directories, and carries out the changes its layout allows; what it does
not allow it refuses with an imapfs error (NotSupported by default).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

from imapfs.errors import ImapFSError, NotSupported
from imapfs.model import Folder, MessageMeta, MessageTable
from imapfs.spool import Spool

Parts = tuple[str, ...]


@dataclass
class DirNode:
    """A directory: an IMAP folder, a parent that exists only as a path
    level, or a directory of the view's own (a Maildir's cur/, say)."""

    folder: Folder | None
    children: dict[str, DirNode] = field(default_factory=dict)
    # What the directory shows of its folder ("" for the folder's own
    # directory; "cur", "new", "tmp" in a Maildir). Views tell them apart by it.
    role: str = ""


@dataclass(slots=True)
class MessageRef:
    """A message file: where it lives and what the listing knows of it.
    One per message of every directory listed (slots: no dict each)."""

    folder: Folder
    uidvalidity: int
    meta: MessageMeta


@dataclass
class NewFile:
    """A file being written into a folder. The FUSE edge decides which close
    means its writer is done (see ImapFS._commit); ``owner.commit(new)``
    then decides what that means in the owner's layout."""

    folder: Folder
    name: str
    spool: Spool
    owner: View
    creator: int  # pid of the process that created it
    role: str = ""  # the directory role it was created in
    created_ns: int = field(default_factory=time.time_ns)
    # Lock owners (one per file descriptor table: a process, or a forked
    # child apart from its parent) that wrote to it. Only their closes commit it.
    writers: set[int] = field(default_factory=set)
    contiguous: int = 0  # bytes written without a gap from offset 0
    header_seen: bool = False  # the header block is complete and was checked as it was written
    handles: int = 0  # open handles, writers' and readers'
    write_handles: int = 1  # open handles that may write: the creator's, and more of the creating process's
    creator_process: Hashable = None  # the creating process (callers.Process): its close commits
    tainted: str | None = None  # why a writer's death makes the file incomplete, if one died so
    # None while being written; then "committing" (its APPEND is under way),
    # "appended", "kept" (a Maildir tmp/ file waiting for its rename, which
    # makes it "delivering" and then "appended", or "kept" again if that
    # fails), "discarded" (unlinked or abandoned), or the error that refused
    # or failed it. Guarded by lock.
    outcome: str | ImapFSError | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)  # guards the fields above but spool
    # Held while the file is being APPENDed: a second close waits for the first's outcome.
    commit_lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Alias:
    """The name a tool wrote a message under, after its APPEND."""

    folder: Folder
    uid: int | None
    uidvalidity: int | None
    size: int
    mtime_ns: int


@dataclass
class DerivedFile:
    """A read-only file a view makes from stored mail: a message's text as a
    person reads it, its header block, one attachment decoded.

    Its length is often unknown until its bytes are made (rendering needs
    the body), so ``size`` is exact only when ``size_known``; until then it
    is an upper bound, and the FUSE edge reads such a file direct (no page
    cache clamping reads at a size that is not yet the real one). ``key``
    names the bytes for good (they derive from an immutable message), so
    the kernel may cache them while the key behind a path stays the same.
    """

    key: Hashable
    size: int
    size_known: bool
    mtime_ns: int
    read: Callable[[int, int], bytes]  # (offset, size) -> bytes, fewer only at the end
    # Makes the bytes now (fetching what they need) and returns their exact
    # length: called at open, so a reader's stat after open can be right.
    prepare: Callable[[], int] | None = None


Node = DirNode | MessageRef | NewFile | Alias | DerivedFile


class ListingEntries(Sequence[tuple[str, Node]]):
    """A folder directory's entries, (name, node), made as each is asked
    for: the directory's own entries before (sub-directories), the listing's
    messages in their rows' order, then files being written. A directory of
    100,000 messages costs no entry objects while it is open or cached; an
    entry is one (name, MessageRef) made from its row."""

    __slots__ = ("_before", "_folder", "_uidvalidity", "_table", "_after")

    def __init__(self, before: list[tuple[str, Node]], folder: Folder, uidvalidity: int, table: MessageTable,
                 after: list[tuple[str, Node]]) -> None:
        self._before, self._folder, self._uidvalidity, self._table, self._after = (
            before, folder, uidvalidity, table, after)

    @property
    def table(self) -> MessageTable:
        """The listing's rows the message entries are made from."""
        return self._table

    @property
    def rows(self) -> range:
        """The indexes of the message entries: row i of the table is entry rows.start + i."""
        return range(len(self._before), len(self._before) + len(self._table))

    def __len__(self) -> int:
        return len(self._before) + len(self._table) + len(self._after)

    def __getitem__(self, index: int) -> tuple[str, Node]:  # type: ignore[override]
        if index < 0:
            index += len(self)
        if index < 0:
            raise IndexError(index)
        if index < len(self._before):
            return self._before[index]
        row = index - len(self._before)
        if row < len(self._table):
            meta = self._table.at(row)
            return meta.filename, MessageRef(self._folder, self._uidvalidity, meta)
        return self._after[row - len(self._table)]


class View:
    """One way of showing the account as files. Every method takes path parts
    relative to the view's root; refusals are imapfs errors, never errno."""

    def resolve(self, parts: Parts) -> Node:
        raise NotImplementedError

    def entries(self, parts: Parts, node: DirNode) -> Sequence[tuple[str, Node]]:
        """The directory's children. The same sequence object while nothing
        changed, so the FUSE edge can reuse what it built from it."""
        raise NotImplementedError

    def message(self, node: Node) -> MessageRef | None:
        """The stored message behind a node (an Alias resolves to one), or None."""
        return node if isinstance(node, MessageRef) else None

    def dir_mtime_ns(self, node: DirNode) -> int | None:
        """When the directory's entries last changed, or None for "mount time"."""
        return None

    def entries_from(self, node: DirNode) -> object | None:
        """The listing a directory's message entries are all made from, as
        its object: while the store holds that very object, they stand as
        they were (fs.py then needs no per-message record of what the kernel
        was told). None where entries come from elsewhere."""
        return None

    def dir_permissions(self, node: DirNode) -> int:
        """Permission bits the directory may show at most (the mount narrows
        them further, e.g. read-only). The freedesktop trash directory must
        be 0700, or GIO and KIO take it for someone else's."""
        return 0o777

    # --- changes; refused unless the layout gives them a meaning ------------
    def create(self, parts: Parts, creator: int) -> NewFile:
        raise NotSupported("files cannot be created here")

    def commit(self, new: NewFile) -> None:
        """The writer of new is done with it: file it (or keep it, for a rename to file it)."""
        raise NotSupported("files cannot be created here")

    def forget(self, new: NewFile) -> None:
        """new's fate is decided: its name no longer resolves to it."""

    def unlink(self, parts: Parts, node: Node, actor: Hashable) -> None:
        raise NotSupported("nothing can be removed here")

    def rename(self, old: Parts, node: Node, new: Parts) -> None:
        raise NotSupported("nothing can be renamed here")

    # --- renames between views (the composite root calls these) -----------
    def receive(self, source: View, node: Node, new: Parts) -> None:
        """rename(2) of source's node to new in this view: what that means is
        the target's to say (into the desktop trash: a MOVE to \\Trash; back
        into a folder: a MOVE there). ``source.message(node)`` gives the
        stored message, whatever view it came from."""
        raise NotSupported("nothing can be moved here from that view")

    def released(self, parts: Parts, node: Node) -> None:
        """node was moved into another view: forget names that still point at it."""

    def mkdir(self, parts: Parts) -> None:
        raise NotSupported("no directory can be made here")

    def rmdir(self, parts: Parts, node: DirNode) -> None:
        raise NotSupported("no directory can be removed here")

    def set_times(self, node: Node, mtime_ns: int | None) -> None:
        """utimens on what a tool wrote (rsync -t, cp -p): remembered where the
        layout can, refused on a stored message (it would be a lie)."""
        if isinstance(node, MessageRef):
            raise NotSupported("a message's time is its INTERNALDATE")
        if isinstance(node, DerivedFile):
            raise NotSupported("a file derived from a message has the message's time")

    # --- what the kernel must forget when the server's state moves ----------
    def folder_paths(self, folder: Folder) -> list[Parts]:
        """The directories in which the folder's messages show."""
        return []

    def message_paths(self, folder: Folder, filenames: list[str]) -> list[Parts]:
        """Paths of these messages (by their listing filename), where the view shows them by that name."""
        return []

