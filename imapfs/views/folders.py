"""The folder layout: one directory per IMAP folder, one .eml file per message.

Folders nest by the server's delimiter; messages show under the names the
listing gives them (``names.message_filename``). Writing is mail
management: a file created in a folder is APPENDed when its writer is done;
rename moves messages and folders; unlink moves to Trash. The name a tool
wrote under keeps resolving after the APPEND (an Alias), because tools
stat, rename and set times on the name they wrote, while the message itself
lists under its canonical name.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence

from cachetools import LRUCache

from imapfs import filing, names, rfc5322
from imapfs.errors import AlreadyExists, InvalidName, NotEmpty, NotFound, NotMail, NotSupported
from imapfs.model import Folder, MessageTable
from imapfs.spool import Spool
from imapfs.store import MailStore
from imapfs.views.base import Alias, DirNode, ListingEntries, MessageRef, NewFile, Node, Parts, View

log = logging.getLogger(__name__)

# Names files were written under, kept for the mount's life (at most this many).
MAX_ALIASES = 100_000


class FoldersView(View):
    """Folders as directories, messages as .eml files."""

    def __init__(self, store: MailStore, spool_dir: str | None = None) -> None:
        self.store = store
        self._spool_dir = spool_dir
        self._lock = threading.Lock()  # guards _new_files, _aliases, _entries_cache
        self._new_files: dict[tuple[str, str], NewFile] = {}
        # The name a file was written under resolves, with the size it reads
        # with and the time a tool set on it, for as long as the mount lives:
        # rsync -rt compares both on its next run.
        self._aliases: LRUCache[tuple[str, str], Alias] = LRUCache(maxsize=MAX_ALIASES)
        self._tree = FolderTree(store)
        # (parts, node, listing, size epoch, new files) of the last directory listed, and its entries.
        self._entries_cache: tuple[tuple[object, ...], Sequence[tuple[str, Node]]] | None = None

    # --- the tree --------------------------------------------------------
    def _root(self) -> DirNode:
        return self._tree.root()

    def _dir(self, parts: Parts) -> DirNode | None:
        return walk(self._root(), parts)

    def _parent_folder(self, parts: Parts) -> tuple[Folder, str]:
        """The selectable folder a file path lives in, and the file name."""
        parent = self._dir(parts[:-1]) if parts else None
        if parent is None or parent.folder is None or not parent.folder.selectable or not parts:
            raise NotFound("/".join(parts))
        return parent.folder, parts[-1]

    def resolve(self, parts: Parts) -> Node:
        return resolve_relisting(self.store, self._resolve, parts,
                                 message_name=names.uid_from_filename(parts[-1]) is not None if parts else False)

    def _resolve(self, parts: Parts) -> Node:
        # The hot path of every lookup, open and stat: one walk, and the
        # write-side tables consulted only when they hold anything.
        if not parts:
            return self._root()
        parent = self._dir(parts[:-1])
        if parent is None:
            raise NotFound("/".join(parts))
        name = parts[-1]
        child = parent.children.get(name)
        if child is not None:
            return child
        folder = parent.folder
        if folder is None or not folder.selectable:
            raise NotFound("/".join(parts))
        key = (folder.name, name)
        if self._new_files or self._aliases:
            with self._lock:
                new = self._new_files.get(key)
                alias = self._aliases.get(key)
            if new is not None:
                return new
            if alias is not None:
                return alias
        uidvalidity, meta = self.store.message(folder.name, name)
        return MessageRef(folder, uidvalidity, meta)

    def message(self, node: Node) -> MessageRef | None:
        return message_behind(self.store, node)

    def dir_mtime_ns(self, node: DirNode) -> int | None:
        return dir_mtime_ns(self.store, node)

    def entries_from(self, node: DirNode) -> object | None:
        if node.folder is None:
            return None
        return self.store.cached_listing(node.folder.name) or self.store.provisional_listing(node.folder.name)

    def entries(self, parts: Parts, node: DirNode) -> Sequence[tuple[str, Node]]:
        listing = None
        if node.folder is not None and node.folder.selectable:
            listing = self.store.shown_listing(node.folder.name)
        # A big folder listed again unchanged gets the same entries back:
        # the same node and listing objects mean nothing changed (both are
        # replaced, never mutated, when the server's state moves on).
        with self._lock:
            writing = [new for (folder, _), new in self._new_files.items()
                       if node.folder is not None and folder == node.folder.name]
            key = (parts, node, listing, self.store.size_epoch, tuple(writing))
            cached = self._entries_cache
            if cached is not None and len(cached[0]) == len(key) and all(
                    a is b or a == b for a, b in zip(cached[0], key, strict=True)):
                return cached[1]
        items: Sequence[tuple[str, Node]] = list(node.children.items())
        if listing is not None and node.folder is not None:
            being_written = [(new.name, new) for new in writing]
            if any(_message_named(listing.messages, name) for name in node.children):
                # A sub-folder named as a message of its parent: the folder
                # wins the name (rare: such entries are made one by one).
                items = [*items, *((meta.filename, MessageRef(node.folder, listing.uidvalidity, meta))
                                   for meta in listing.messages.values() if meta.filename not in node.children),
                         *being_written]
            else:
                items = ListingEntries(list(items), node.folder, listing.uidvalidity, listing.messages, being_written)
        with self._lock:
            self._entries_cache = (key, items)
        return items

    # --- messages in -----------------------------------------------------
    def create(self, parts: Parts, creator: int) -> NewFile:
        refuse_tool_name(parts, directory=False)
        folder, name = self._parent_folder(parts)
        new = NewFile(folder=folder, name=name, spool=Spool(directory=self._spool_dir), owner=self,
                      creator=creator, handles=1)
        with self._lock:
            if (folder.name, name) in self._new_files:
                new.spool.close()
                raise AlreadyExists("/".join(parts))
            self._new_files[(folder.name, name)] = new
            self._aliases.pop((folder.name, name), None)
        return new

    def commit(self, new: NewFile) -> None:
        """APPEND what the file holds: one message, or each message of an
        mbox (filing.messages_in), none that the folder holds already."""
        messages = filing.messages_in(new.spool, new.name, self._spool_dir)  # InvalidMessage: nothing appended
        appended = None
        for message in messages:
            appended = self.store.append(new.folder.name, message.literal, message.flags, message.when)
        if len(messages) > 1:
            appended = None  # the written name stands for no single message
        literal, when = messages[-1].literal, messages[-1].when
        uidvalidity, uid = appended if appended else (None, None)
        mtime_ns = int(when.timestamp() * 1e9) if when else time.time_ns()
        with new.lock:
            new.outcome = "appended"
        with self._lock:
            # The size the server stores (line endings CRLF), which the message will read with.
            self._aliases[(new.folder.name, new.name)] = Alias(new.folder, uid, uidvalidity, literal.size, mtime_ns)

    def set_times(self, node: Node, mtime_ns: int | None) -> None:
        super().set_times(node, mtime_ns)
        if isinstance(node, Alias) and mtime_ns is not None:
            node.mtime_ns = mtime_ns

    def forget(self, new: NewFile) -> None:
        with self._lock:
            if self._new_files.get((new.folder.name, new.name)) is new:
                del self._new_files[(new.folder.name, new.name)]

    # --- messages out and between folders ---------------------------------
    def unlink(self, parts: Parts, node: Node, actor: Hashable) -> None:
        if isinstance(node, NewFile):
            with node.lock:
                if node.outcome is None:
                    node.outcome = "discarded"
            self.forget(node)
            return
        ref = self.message(node)
        if ref is None:
            raise NotFound("/".join(parts))
        self.store.delete(ref.folder.name, ref.uidvalidity, ref.meta.uid, actor)
        self._forget_aliases_of(ref)

    def _forget_aliases_of(self, ref: MessageRef) -> None:
        with self._lock:
            for key, alias in list(self._aliases.items()):
                if alias.folder.name == ref.folder.name and alias.uid == ref.meta.uid:
                    self._aliases.pop(key, None)

    def rename(self, old: Parts, node: Node, new: Parts) -> None:
        if isinstance(node, DirNode):
            self._rename_folder(old, new, node)
            return
        new_folder, new_name = self._parent_folder(new)
        old_folder, old_name = self._parent_folder(old)
        if isinstance(node, (NewFile, Alias)) and new_folder.name == old_folder.name:
            self._rename_written(node, old_name, new_name)
            return
        ref = self.message(node)
        if ref is None:
            raise NotFound("/".join(old))
        if new_folder.name == old_folder.name:
            raise NotSupported("a message's name is derived from it; it cannot be chosen")
        self.store.move(old_folder.name, ref.uidvalidity, ref.meta.uid, new_folder.name)
        self._forget_aliases_of(ref)

    def receive(self, source: View, node: Node, new: Parts) -> None:
        """A message renamed here from another view (restored from the
        desktop trash): MOVE it into the target's folder. Its name there is
        derived from it, as for any message, whatever name the tool chose."""
        ref = source.message(node)
        if ref is None:
            raise NotSupported("only messages can be moved into a folder from there")
        folder, _ = self._parent_folder(new)
        self.store.move(ref.folder.name, ref.uidvalidity, ref.meta.uid, folder.name)

    def released(self, parts: Parts, node: Node) -> None:
        ref = self.message(node)
        if ref is not None:
            self._forget_aliases_of(ref)
        elif isinstance(node, Alias):
            with self._lock:
                if self._aliases.get((node.folder.name, parts[-1])) is node:
                    self._aliases.pop((node.folder.name, parts[-1]), None)

    def _rename_written(self, source: NewFile | Alias, old_name: str, new_name: str) -> None:
        """rsync and mail tools write a temp name, then rename it: follow the
        name, and apply flags the new Maildir-style name carries."""
        folder = source.folder.name
        with self._lock:
            if isinstance(source, NewFile):
                self._new_files.pop((folder, old_name), None)
                source.name = new_name
                self._new_files[(folder, new_name)] = source
                return
            self._aliases.pop((folder, old_name), None)
            self._aliases[(folder, new_name)] = source
        wanted = set(rfc5322.flags_from_filename(new_name)) - set(rfc5322.flags_from_filename(old_name))
        if wanted and source.uid is not None and source.uidvalidity is not None:
            listing = self.store.listing(folder)
            meta = listing.messages.get(source.uid)
            if meta is not None:
                self.store.set_flags(folder, source.uidvalidity, source.uid, tuple(sorted(set(meta.flags) | wanted)))

    def _rename_folder(self, old: Parts, new: Parts, node: DirNode) -> None:
        if node.folder is None:
            raise NotSupported("a level that is no IMAP folder has nothing to rename")
        if not new or self._dir(new) is not None:
            raise AlreadyExists("/".join(new))
        refuse_tool_name(new, directory=True)
        if self._dir(new[:-1]) is None:
            raise NotFound("/".join(new))
        self.store.rename_folder(node.folder.name, folder_name(new, node.folder.delimiter))

    # --- folders ---------------------------------------------------------
    def mkdir(self, parts: Parts) -> None:
        if self._dir(parts) is not None:
            raise AlreadyExists("/".join(parts))
        refuse_tool_name(parts, directory=True)
        if self._dir(parts[:-1]) is None:
            raise NotFound("/".join(parts))
        self.store.create_folder(folder_name(parts, delimiter_of(self.store)))

    def rmdir(self, parts: Parts, node: DirNode) -> None:
        if node.children:
            raise NotEmpty("/".join(parts))
        if node.folder is None:
            raise NotFound("/".join(parts))
        self.store.delete_folder(node.folder.name)

    # --- kernel notices ----------------------------------------------------
    def folder_paths(self, folder: Folder) -> list[Parts]:
        return [tuple(names.folder_to_parts(folder.name, folder.delimiter))]

    def message_paths(self, folder: Folder, filenames: list[str]) -> list[Parts]:
        directory = tuple(names.folder_to_parts(folder.name, folder.delimiter))
        return [(*directory, name) for name in filenames]


def walk(root: DirNode, parts: Parts) -> DirNode | None:
    node = root
    for part in parts:
        child = node.children.get(part)
        if child is None:
            return None
        node = child
    return node


def resolve_relisting(store: MailStore, resolve: Callable[[Parts], Node], parts: Parts, *,
                      message_name: bool) -> Node:
    """resolve(parts); where that names nothing and is no message's name,
    perhaps a folder made elsewhere since the folder list was fetched: once
    more after the store fetched the list again (relist_after_miss)."""
    try:
        return resolve(parts)
    except NotFound:
        if not parts or message_name or not store.relist_after_miss():
            raise
        return resolve(parts)


def message_behind(store: MailStore, node: Node) -> MessageRef | None:
    """The stored message a node stands for: itself, or the one an Alias names (if still there)."""
    if isinstance(node, MessageRef):
        return node
    if isinstance(node, Alias) and node.uid is not None and node.uidvalidity is not None:
        listing = store.listing(node.folder.name)
        meta = listing.messages.get(node.uid)
        if meta is not None and listing.uidvalidity == node.uidvalidity:
            return MessageRef(node.folder, listing.uidvalidity, meta)
    return None


def delimiter_of(store: MailStore) -> str | None:
    """The hierarchy delimiter new folders get: the first the server reports."""
    for folder in store.folders():
        if folder.delimiter:
            return folder.delimiter
    return None


def folder_name(parts: Parts, delimiter: str | None) -> str:
    """The IMAP folder a new directory path names, or InvalidName (EINVAL)
    where none can: mkdir 'a%2Fb' on a server whose delimiter is '/' would
    otherwise create a/b, two levels."""
    path = "/".join(parts)
    try:
        name = names.parts_to_folder(list(parts), delimiter)
    except ValueError as exc:
        raise InvalidName(f"no IMAP folder can be called {path!r} on this server: {exc}") from None
    shown = names.folder_to_parts(name, delimiter)
    if list(shown) != list(parts):
        # e.g. "50%25" names the folder "50%", which shows as "50%": the
        # tool that made the directory would not find it under its name.
        raise InvalidName(f"{path!r} would show as {'/'.join(shown)!r}; use that name")
    return name


def dir_mtime_ns(store: MailStore, node: DirNode) -> int | None:
    """When a folder's directory last changed: never a listing for a folder
    not listed yet (a stat must not cost one), but a resync for one this
    mount changed or was told changed (a new-mail check must see it)."""
    if node.folder is None or not node.folder.selectable:
        return None
    listing = store.cached_listing(node.folder.name)
    if listing is not None and listing.stale:
        listing = store.listing(node.folder.name)
    return listing.changed_ns if listing is not None else None


def refuse_tool_name(parts: Parts, directory: bool) -> None:
    """Refuse (NotMail: EPERM, one log line at the FUSE edge) a name that is
    a tool's own state (names.tool_file_reason), before anything reaches the
    server: notmuch made the folders .notmuch and .notmuch/xapian, Finder
    would file .DS_Store as a message."""
    reason = names.tool_file_reason(parts[-1], directory) if parts else None
    if reason:
        raise NotMail(f"{reason}; nothing was stored on the server")


class FolderTree:
    """The directory tree of the folder list, built again only when the store
    hands out a new list (it replaces the list, never mutates it)."""

    def __init__(self, store: MailStore) -> None:
        self._store = store
        self._lock = threading.Lock()  # guards _source, _tree
        self._source: list[Folder] | None = None
        self._tree = DirNode(folder=None)

    def root(self) -> DirNode:
        folders = self._store.folders()
        with self._lock:
            if folders is not self._source:
                self._tree = build_tree(folders)
                self._source = folders
            return self._tree


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


def _message_named(table: MessageTable, name: str) -> bool:
    uid = names.uid_from_filename(name)
    row = table.position(uid) if uid is not None else None
    return row is not None and table.filename_at(row) == name
