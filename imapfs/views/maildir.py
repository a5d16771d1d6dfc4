"""The Maildir layout (-o maildir): every folder a Maildir, for mail tools.

Each selectable folder's directory holds ``cur/``, ``new/`` and ``tmp/``
beside its subfolders' directories, so mutt and neomutt (`-f M/INBOX`),
mblaze, notmuch, mu and aerc use the mount as their mail store.

- A message is ``UNIQUE:2,FLAGS``. UNIQUE is ``INTERNALDATE.VuidvalidityUuid.imapfs``:
  stable for the message's life, unique in the account's history of the
  folder. FLAGS in ASCII order: D \\Draft, F \\Flagged, P $Forwarded,
  R \\Answered, S \\Seen, T \\Deleted.
- ``new/`` holds the messages without \\Seen that no tool has moved to
  ``cur/`` during this mount; ``cur/`` the rest. A tool moving a message
  from new/ to cur/ (mutt does, for mail it has shown) is followed, and the
  message stays in cur/ for the mount's life, \\Seen or not.
- A rename that changes the flags is a UID STORE (keywords that Maildir
  names cannot carry are kept); into another folder's cur/ or new/, the
  flags are stored first and then the message MOVEd; unlink is the mount's
  delete policy (Trash, by default).
- Delivery: a file written in ``tmp/`` is kept there when closed, and filed
  (APPEND, with the flags of its new name, never \\Deleted) when renamed into
  a folder's ``new/`` or ``cur/``; the name it was given resolves at once.
  A file written straight into cur/ or new/ is filed when closed.
- ``mkdir`` makes a folder; one made here shows cur/, new/ and tmp/ only as
  they are made in turn (maildirmake and Python's mailbox.Maildir make them
  and fail if they already exist), or after a minute.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Hashable

from cachetools import LRUCache

from imapfs import filing, names
from imapfs.errors import AlreadyExists, Busy, ImapFSError, InvalidMessage, NotEmpty, NotFound, NotSupported
from imapfs.model import Folder, MessageMeta
from imapfs.spool import Spool
from imapfs.store import MailStore
from imapfs.views.base import Alias, DirNode, MessageRef, NewFile, Node, Parts, View
from imapfs.views.folders import (
    build_tree,
    delimiter_of,
    dir_mtime_ns,
    folder_name,
    message_behind,
    refuse_tool_name,
    resolve_relisting,
    walk,
)

log = logging.getLogger(__name__)

ROLES = ("cur", "new", "tmp")
LETTERS = {"\\draft": "D", "\\flagged": "F", "$forwarded": "P", "\\answered": "R", "\\seen": "S", "\\deleted": "T"}
FLAGS = {"D": "\\Draft", "F": "\\Flagged", "P": "$Forwarded", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}
_NAME_RE = re.compile(r"(\d+)\.V(\d+)U(\d+)\.imapfs(?::2,([A-Za-z]*))?")
_INFO_RE = re.compile(r":2,([A-Za-z]*)$")
# How long a folder made here waits for its cur/, new/ and tmp/ to be made.
FRESH_SECONDS = 60.0


def letters_of(flags: tuple[str, ...]) -> str:
    return "".join(sorted({LETTERS[f.lower()] for f in flags if f.lower() in LETTERS}))


def flags_from_info(name: str) -> set[str] | None:
    """IMAP flags a Maildir name's info carries, or None when it has no info."""
    match = _INFO_RE.search(name)
    if match is None:
        return None
    return {FLAGS[c] for c in match.group(1) if c in FLAGS}  # lowercase letters are tools' keywords


def message_name(uidvalidity: int, meta: MessageMeta) -> str:
    return f"{int(meta.internaldate)}.V{uidvalidity}U{meta.uid}.imapfs:2,{letters_of(meta.flags)}"


class MaildirView(View):
    """Folders as Maildirs."""

    def __init__(self, store: MailStore, spool_dir: str | None = None) -> None:
        self.store = store
        self._spool_dir = spool_dir
        self._lock = threading.Lock()  # guards every table below
        self._tree_source: list[Folder] | None = None
        self._tree = DirNode(folder=None)
        # (folder, uidvalidity, uid) moved from new/ to cur/ by a tool: stays in cur/.
        self._acknowledged: LRUCache[tuple[str, int, int], bool] = LRUCache(maxsize=200_000)
        self._tmp: dict[tuple[str, str], NewFile] = {}  # (folder, name) in tmp/: being written or kept
        self._writing: dict[tuple[str, str, str], NewFile] = {}  # (folder, role, name) written into cur/new
        self._aliases: LRUCache[tuple[str, str, str], Alias] = LRUCache(maxsize=100_000)  # delivered names
        self._fresh: dict[str, tuple[float, set[str]]] = {}  # folder made here -> (when, roles made so far)
        # A message delivered here lists under the unique part the tool gave it
        # (a Maildir tool expects its file to stay where it put it):
        # (folder, uidvalidity, uid) -> unique, and (folder, unique) -> (uidvalidity, uid).
        self._delivered: LRUCache[tuple[str, int, int], str] = LRUCache(maxsize=100_000)
        self._delivered_as: dict[tuple[str, str], tuple[int, int]] = {}
        self._entries_cache: dict[tuple[str, str], tuple[tuple[object, ...], list[tuple[str, Node]]]] = {}

    # --- the tree --------------------------------------------------------
    def _root(self) -> DirNode:
        folders = self.store.folders()
        with self._lock:
            now = time.monotonic()
            for name, (when, made) in list(self._fresh.items()):
                if now - when > FRESH_SECONDS or len(made) == len(ROLES):
                    del self._fresh[name]
                    self._tree_source = None  # its cur/, new/ and tmp/ now show
            if folders is not self._tree_source or self._fresh:
                self._tree = self._build(folders)
                self._tree_source = folders
            return self._tree

    def _build(self, folders: list[Folder]) -> DirNode:
        """The folder tree with cur/, new/ and tmp/ in every selectable folder's directory. Call with _lock held."""
        root = build_tree(folders)
        stack = [root]
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            if node.folder is not None and node.folder.selectable:
                fresh = self._fresh.get(node.folder.name)
                for role in ROLES:
                    if role in node.children:
                        log.warning("folder %r has a subfolder named %r; a Maildir's %s/ hides it",
                                    node.folder.name, role, role)
                    if fresh is None or role in fresh[1]:
                        node.children[role] = DirNode(folder=node.folder, role=role)
        return root

    def _dir(self, parts: Parts) -> DirNode | None:
        return walk(self._root(), parts)

    def _role_dir(self, parts: Parts) -> DirNode:
        """The cur/, new/ or tmp/ directory a file path lives in."""
        parent = self._dir(parts[:-1]) if parts else None
        if parent is None or not parent.role or parent.folder is None:
            raise NotFound("/".join(parts))
        return parent

    def _name(self, folder: str, uidvalidity: int, meta: MessageMeta) -> str:
        unique = self._delivered.get((folder, uidvalidity, meta.uid))
        if unique is None:
            return message_name(uidvalidity, meta)
        return f"{unique}:2,{letters_of(meta.flags)}"

    def _in_new(self, folder: str, uidvalidity: int, meta: MessageMeta) -> bool:
        return "\\Seen" not in meta.flags and (folder, uidvalidity, meta.uid) not in self._acknowledged

    def resolve(self, parts: Parts) -> Node:
        # Messages' names live in cur/, new/ and tmp/.
        return resolve_relisting(self.store, self._resolve, parts,
                                 message_name=parts[-2:-1] in (("cur",), ("new",), ("tmp",)))

    def _resolve(self, parts: Parts) -> Node:
        if not parts:
            return self._root()
        parent = self._dir(parts[:-1])
        if parent is None:
            raise NotFound("/".join(parts))
        name = parts[-1]
        child = parent.children.get(name)
        if child is not None:
            return child
        if not parent.role or parent.folder is None:
            raise NotFound("/".join(parts))
        folder = parent.folder.name
        with self._lock:
            if parent.role == "tmp":
                new = self._tmp.get((folder, name))
                if new is None:
                    raise NotFound("/".join(parts))
                return new
            new = self._writing.get((folder, parent.role, name))
            alias = self._aliases.get((folder, parent.role, name))
        if new is not None:
            return new
        if alias is not None:
            return alias
        match = _NAME_RE.fullmatch(name)
        with self._lock:
            delivered = self._delivered_as.get((folder, name.split(":2,", 1)[0]))
        if match is not None:
            uidvalidity, uid = int(match.group(2)), int(match.group(3))
        elif delivered is not None:
            uidvalidity, uid = delivered
        else:
            raise NotFound("/".join(parts))
        listing = self.store.shown_listing(folder)
        meta = listing.messages.get(uid)
        if (meta is None or uidvalidity != listing.uidvalidity
                or name not in (message_name(uidvalidity, meta), self._name(folder, uidvalidity, meta))
                or self._in_new(folder, listing.uidvalidity, meta) != (parent.role == "new")):
            raise NotFound("/".join(parts))
        return MessageRef(parent.folder, listing.uidvalidity, meta)

    def message(self, node: Node) -> MessageRef | None:
        return message_behind(self.store, node)

    def entries(self, parts: Parts, node: DirNode) -> list[tuple[str, Node]]:
        if not node.role or node.folder is None:
            return list(node.children.items())
        folder = node.folder.name
        if node.role == "tmp":
            with self._lock:
                return [(name, new) for (owner, name), new in self._tmp.items() if owner == folder]
        listing = self.store.shown_listing(folder)
        with self._lock:
            writing = tuple(new for (owner, role, _), new in self._writing.items()
                            if owner == folder and role == node.role)
            key = (listing, len(self._acknowledged), writing, self.store.size_epoch)
            cached = self._entries_cache.get((folder, node.role))
            if cached is not None and all(a is b or a == b for a, b in zip(cached[0], key, strict=True)):
                return cached[1]
            want_new = node.role == "new"
            items: list[tuple[str, Node]] = [
                (self._name(folder, listing.uidvalidity, meta), MessageRef(node.folder, listing.uidvalidity, meta))
                for meta in listing.messages.values()
                if self._in_new(folder, listing.uidvalidity, meta) == want_new]
            items.extend((new.name, new) for new in writing)
            self._entries_cache[(folder, node.role)] = (key, items)
        return items

    def dir_mtime_ns(self, node: DirNode) -> int | None:
        return None if node.role == "tmp" else dir_mtime_ns(self.store, node)

    def entries_from(self, node: DirNode) -> object | None:
        if node.folder is None or node.role not in ("cur", "new"):
            return None
        return self.store.cached_listing(node.folder.name) or self.store.provisional_listing(node.folder.name)

    # --- files in ----------------------------------------------------------
    def create(self, parts: Parts, creator: int) -> NewFile:
        parent = self._dir(parts[:-1]) if parts else None
        if parent is not None and not parent.role:
            raise NotSupported("in a Maildir, files go in tmp/, new/ or cur/")
        parent = self._role_dir(parts)
        assert parent.folder is not None
        refuse_tool_name(parts, directory=False)
        folder, name = parent.folder, parts[-1]
        new = NewFile(folder=folder, name=name, spool=Spool(directory=self._spool_dir), owner=self,
                      creator=creator, role=parent.role, handles=1)
        with self._lock:
            table = self._tmp if parent.role == "tmp" else self._writing
            key = (folder.name, name) if parent.role == "tmp" else (folder.name, parent.role, name)
            if key in table:  # type: ignore[operator]
                new.spool.close()
                raise AlreadyExists("/".join(parts))
            table[key] = new  # type: ignore[index]
        return new

    def commit(self, new: NewFile) -> None:
        if new.role == "tmp":
            # Maildir delivery: the file waits in tmp/ for its rename into new/ or cur/.
            filing.messages_in(new.spool, new.name, self._spool_dir)  # refused now, not at the rename
            with new.lock:
                new.outcome = "kept"
            return
        self._file(new, new.folder, new.role, new.name)

    def _file(self, new: NewFile, folder: Folder, role: str, name: str) -> None:
        """APPEND what new holds to folder, as delivered under role/name."""
        flags = set(flags_from_info(name) or ()) - {"\\Deleted"}  # never hand a new message to EXPUNGE
        if role == "new":
            flags.discard("\\Seen")
        appended = None
        messages = filing.messages_in(new.spool, name, self._spool_dir)
        for message in messages:
            appended = self.store.append(folder.name, message.literal, tuple(sorted(flags)), message.when)
        uidvalidity, uid = appended if appended and len(messages) == 1 else (None, None)
        when = messages[-1].when
        with new.lock:
            new.outcome = "appended"
        with self._lock:
            self._aliases[(folder.name, role, name)] = Alias(
                folder, uid, uidvalidity, messages[-1].literal.size,
                int(when.timestamp() * 1e9) if when else time.time_ns())
            if uid is not None and uidvalidity is not None:
                if role == "cur":
                    self._acknowledged[(folder.name, uidvalidity, uid)] = True
                unique = name.split(":2,", 1)[0]
                self._delivered[(folder.name, uidvalidity, uid)] = unique
                self._delivered_as[(folder.name, unique)] = (uidvalidity, uid)

    def forget(self, new: NewFile) -> None:
        if new.outcome == "kept":
            return  # still waiting in tmp/ for its rename
        with self._lock:
            if self._tmp.get((new.folder.name, new.name)) is new:
                del self._tmp[(new.folder.name, new.name)]
            if self._writing.get((new.folder.name, new.role, new.name)) is new:
                del self._writing[(new.folder.name, new.role, new.name)]

    def _drop_kept(self, new: NewFile, force: bool = False) -> None:
        with new.lock:
            if new.outcome == "delivering" and not force:
                raise Busy(f"{new.name} is being delivered")
            new.outcome = "discarded" if new.outcome in ("kept", "delivering") else new.outcome
            last = new.handles <= 0
        self.forget(new)
        if last:
            new.spool.close()

    # --- changes -----------------------------------------------------------
    def unlink(self, parts: Parts, node: Node, actor: Hashable) -> None:
        if isinstance(node, NewFile):
            with node.lock:
                if node.outcome == "delivering":
                    raise Busy(f"{node.name} is being delivered")
                kept = node.outcome == "kept"
                if node.outcome is None:
                    node.outcome = "discarded"
            if kept:
                self._drop_kept(node)
            else:
                self.forget(node)
            return
        ref = self.message(node)
        if ref is None:
            raise NotFound("/".join(parts))
        self.store.delete(ref.folder.name, ref.uidvalidity, ref.meta.uid, actor)

    def rename(self, old: Parts, node: Node, new: Parts) -> None:
        if isinstance(node, DirNode):
            if node.role or node.folder is None:
                raise NotSupported("a Maildir's cur/, new/ and tmp/ cannot be renamed")
            refuse_tool_name(new, directory=True)
            if not new or self._dir(new) is not None:
                raise AlreadyExists("/".join(new))
            if self._dir(new[:-1]) is None:
                raise NotFound("/".join(new))
            self.store.rename_folder(node.folder.name, folder_name(new, node.folder.delimiter))
            return
        target = self._role_dir(new)
        assert target.folder is not None
        if isinstance(node, NewFile):
            self._rename_new_file(node, target, new[-1])
            return
        ref = self.message(node)
        if ref is None:
            raise NotFound("/".join(old))
        if target.role == "tmp":
            raise NotSupported("a filed message cannot go back to tmp/")
        wanted = flags_from_info(new[-1])
        if wanted is not None:
            keep = {f for f in ref.meta.flags if f.lower() not in LETTERS}  # keywords a name cannot show
            flags = tuple(sorted(keep | wanted))
            if {f.lower() for f in flags} != {f.lower() for f in ref.meta.flags}:
                self.store.set_flags(ref.folder.name, ref.uidvalidity, ref.meta.uid, flags)
        if target.folder.name != ref.folder.name:
            self.store.move(ref.folder.name, ref.uidvalidity, ref.meta.uid, target.folder.name)
            return
        if target.role == "cur":
            with self._lock:
                self._acknowledged[(ref.folder.name, ref.uidvalidity, ref.meta.uid)] = True

    def receive(self, source: View, node: Node, new: Parts) -> None:
        """A message renamed here from another view (restored from the desktop
        trash): MOVE it into the folder whose cur/ or new/ it lands in."""
        ref = source.message(node)
        if ref is None:
            raise NotSupported("only messages can be moved into a Maildir from there")
        target = self._role_dir(new)
        assert target.folder is not None
        if target.role == "tmp":
            raise NotSupported("a filed message cannot go to tmp/")
        self.store.move(ref.folder.name, ref.uidvalidity, ref.meta.uid, target.folder.name)

    def _rename_new_file(self, new: NewFile, target: DirNode, name: str) -> None:
        assert target.folder is not None
        with new.lock:
            outcome = new.outcome
        if outcome == "kept" and target.role != "tmp":
            with new.lock:
                if new.outcome != "kept":
                    raise Busy(f"{new.name} is being delivered by another rename")
                new.outcome = "delivering"  # an unlink or a second rename meanwhile is refused
            try:
                self._file(new, target.folder, target.role, name)
            except InvalidMessage:
                self._drop_kept(new, force=True)
                raise
            except ImapFSError:
                with new.lock:
                    new.outcome = "kept"  # still in tmp/: the rename can be tried again
                raise
            self._drop_kept(new, force=True)
            return
        if outcome is not None:
            raise NotFound(new.name)
        if target.folder.name != new.folder.name or target.role != new.role:
            raise NotSupported("a file being written cannot change directory")
        with self._lock:
            table = self._tmp if new.role == "tmp" else self._writing
            old_key = (new.folder.name, new.name) if new.role == "tmp" else (new.folder.name, new.role, new.name)
            table.pop(old_key, None)  # type: ignore[arg-type]
            new.name = name
            table[(new.folder.name, name) if new.role == "tmp" else (new.folder.name, new.role, name)] = new  # type: ignore[index]

    # --- folders -------------------------------------------------------------
    def mkdir(self, parts: Parts) -> None:
        parent = self._dir(parts[:-1])
        if parent is None:
            raise NotFound("/".join(parts))
        if self._dir(parts) is not None:
            raise AlreadyExists("/".join(parts))
        if parts[-1] in ROLES and parent.folder is not None and parent.folder.name in self._fresh:
            with self._lock:
                self._fresh[parent.folder.name][1].add(parts[-1])
            return
        if parent.role:
            raise NotSupported("folders cannot be made inside cur/, new/ or tmp/")
        refuse_tool_name(parts, directory=True)  # .notmuch and the like: no IMAP folder of them
        name = folder_name(parts, delimiter_of(self.store))
        self.store.create_folder(name)
        with self._lock:
            self._fresh[name] = (time.monotonic(), set())

    def rmdir(self, parts: Parts, node: DirNode) -> None:
        if node.role:
            # rm -r empties cur/ and new/ and removes them; they go with the folder.
            if self.entries(parts, node):
                raise NotEmpty("/".join(parts))
            return
        if any(not child.role for child in node.children.values()):
            raise NotEmpty("/".join(parts))
        if node.folder is None:
            raise NotFound("/".join(parts))
        self.store.delete_folder(node.folder.name)

    # --- kernel notices ------------------------------------------------------
    def folder_paths(self, folder: Folder) -> list[Parts]:
        directory = tuple(names.folder_to_parts(folder.name, folder.delimiter))
        return [directory, (*directory, "cur"), (*directory, "new")]

    def message_paths(self, folder: Folder, filenames: list[str]) -> list[Parts]:
        # Names here carry flags, so the directories are forgotten whole;
        # and each message's file under the name it has now (its inode
        # holds the size a correction changes).
        if not filenames:
            return []
        directories = self.folder_paths(folder)
        listing = self.store.cached_listing(folder.name) or self.store.provisional_listing(folder.name)
        files: list[Parts] = []
        if listing is not None:
            for filename in filenames:
                uid = names.uid_from_filename(filename)
                meta = listing.messages.get(uid) if uid is not None else None
                if meta is not None:
                    role = "new" if self._in_new(folder.name, listing.uidvalidity, meta) else "cur"
                    files.append((*directories[0], role, self._name(folder.name, listing.uidvalidity, meta)))
        return [*files, *directories[1:]]
