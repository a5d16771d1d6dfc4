"""The desktop trash: ``.Trash-UID/`` at the mount root, over the IMAP \\Trash folder.

A file manager's "Move to Trash" on a mount other than the home's follows
the freedesktop.org Trash spec. GIO's g_local_file_trash (glib
gio/glocalfile.c) does, on this mount:

    lstat .Trash          (absent, or no sticky directory: skipped)
    lstat .Trash-UID      must be a directory owned by UID (else mkdir it, 0700)
    mkdir .Trash-UID/info, .Trash-UID/files        EEXIST is fine
    open  info/NAME.trashinfo O_CREAT|O_EXCL       EEXIST: it tries NAME.2, NAME.3 ...
    g_file_set_contents: write info/NAME.trashinfo.XXXXXX, rename it over NAME.trashinfo
    rename(2) the file to files/NAME               (on failure it unlinks the trashinfo)

and gvfsd-trash (trash:///, behind `gio trash --list/--restore/--empty` and
Nautilus' trash) lists files/, reads info/NAME.trashinfo, restores with a
rename of files/NAME to its Path followed by an unlink of the trashinfo, and
deletes by renaming files/NAME into expunged/ and removing what is there.

Here files/ is the Trash folder's messages. The rename into files/ is a MOVE
to \\Trash (it arrives through ``receive``), a rename out of it back into a
folder a MOVE there, and unlinking in files/ (or renaming into expunged/)
expunges, as rm in Trash does. A message trashed through this view shows
under the name it was trashed as; every other message in Trash (trashed by
a mail client, by rm, before this mount) under its usual name, and with no
trashinfo: imapfs does not know where it came from, and a made-up Path would
"restore" it to the wrong folder.

The trashinfo files are kept by imapfs in memory, never stored as mail (they
would be junk messages in some folder). So they last as long as the mount:
after a remount, the messages are still in Trash, under their usual names,
without a trashinfo, and restoring means moving them by hand.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable
from dataclasses import dataclass

from imapfs import names
from imapfs.errors import AlreadyExists, NotFound, NotSupported
from imapfs.model import Folder, Listing
from imapfs.spool import Spool
from imapfs.store import MailStore
from imapfs.views.base import DirNode, MessageRef, NewFile, Node, Parts, View

log = logging.getLogger(__name__)

FILES = "files"
INFO = "info"
EXPUNGED = "expunged"  # gvfsd-trash deletes by renaming into it: here that expunges at once
INFO_SUFFIX = ".trashinfo"


def trash_dir_name(uid: int) -> str:
    """The directory name the spec gives a user's trash on a mount: what GIO looks up."""
    return f".Trash-{uid}"


@dataclass
class _Trashed:
    """A message trashed through this view, shown in files/ under ``name``.

    Until its UID in Trash is known it carries ``identity`` (Message-ID and
    INTERNALDATE, which MOVE keeps): MOVE does not report the new UID through
    the store, so the Trash listing is searched for it after the MOVE."""

    name: str
    uidvalidity: int | None = None
    uid: int | None = None
    identity: tuple[str, int] | None = None


class TrashView(View):
    """files/ and info/ of the freedesktop trash over the \\Trash folder."""

    def __init__(self, store: MailStore, name: str) -> None:
        self.store = store
        self.name = name  # ".Trash-UID", for log lines and the info files' placeholder folder
        self._lock = threading.Lock()  # guards _trashed and _info
        self._trashed: dict[str, _Trashed] = {}  # files/ name -> record
        # info/ name -> its file: being written by GIO, or kept ("kept", one handle held by this view)
        self._info: dict[str, NewFile] = {}
        self._info_folder = Folder(name=f"{name}/{INFO}", delimiter=None, flags=frozenset({"\\Noselect"}))
        self._expunged = DirNode(folder=None, role=EXPUNGED)
        self._info_dir = DirNode(folder=None, role=INFO)

    # --- what is there ---------------------------------------------------
    def _trash(self) -> tuple[Folder, Listing] | None:
        """The Trash folder and its listing, with the records brought up to
        date; None while the account has no Trash (it is created only when
        something is trashed, never by looking)."""
        name = self.store.find_trash_folder()
        if name is None:
            return None
        folder = self.store.folder(name)
        listing = self.store.listing(name)
        self._reconcile(listing)
        return folder, listing

    def _reconcile(self, listing: Listing) -> None:
        """Find the UIDs of messages just moved in, and forget (with their
        trashinfo) those that left Trash: restored, expunged, or moved
        elsewhere by another client."""
        gone: list[NewFile] = []
        with self._lock:
            claimed = {r.uid for r in self._trashed.values() if r.uid is not None}
            for record in list(self._trashed.values()):
                if record.identity is not None:
                    found = [meta.uid for meta in listing.messages.values() if meta.uid not in claimed
                             and (meta.message_id, int(meta.internaldate)) == record.identity]
                    if found:
                        record.uid, record.uidvalidity, record.identity = max(found), listing.uidvalidity, None
                        claimed.add(record.uid)
                elif record.uidvalidity != listing.uidvalidity or record.uid not in listing.messages:
                    del self._trashed[record.name]
                    info = self._info.pop(record.name + INFO_SUFFIX, None)
                    if info is not None:
                        gone.append(info)
        for info in gone:
            self._let_go(info)

    def _top(self) -> DirNode:
        return DirNode(folder=None, role="", children={FILES: DirNode(folder=None, role=FILES),
                                                       INFO: self._info_dir, EXPUNGED: self._expunged})

    def _files_dir(self) -> DirNode:
        found = self._trash()
        return DirNode(folder=found[0] if found else None, role=FILES)

    def resolve(self, parts: Parts) -> Node:
        if not parts:
            return self._top()
        where = parts[0]
        if len(parts) == 1:
            if where == FILES:
                return self._files_dir()
            if where == INFO:
                return self._info_dir
            if where == EXPUNGED:
                return self._expunged
        elif len(parts) == 2:
            if where == FILES:
                return self._message_named(parts[1])
            if where == INFO:
                with self._lock:
                    info = self._info.get(parts[1])
                if info is not None:
                    return info
        raise NotFound("/".join((self.name, *parts)))

    def _message_named(self, name: str) -> MessageRef:
        found = self._trash()
        if found is not None:
            folder, listing = found
            with self._lock:
                record = self._trashed.get(name)
                claimed = {r.uid for r in self._trashed.values() if r.uid is not None}
            if record is not None:
                meta = listing.messages.get(record.uid) if record.uid is not None else None
            else:
                uid = names.uid_from_filename(name)
                meta = listing.messages.get(uid) if uid is not None and uid not in claimed else None
                if meta is not None and meta.filename != name:
                    meta = None
            if meta is not None:
                return MessageRef(folder, listing.uidvalidity, meta)
        raise NotFound(f"{self.name}/{FILES}/{name}")

    def entries(self, parts: Parts, node: DirNode) -> list[tuple[str, Node]]:
        if node.role == FILES:
            found = self._trash()
            if found is None:
                return []
            folder, listing = found
            with self._lock:
                by_uid = {r.uid: r.name for r in self._trashed.values() if r.uid is not None}
                taken = set(self._trashed)
            items: list[tuple[str, Node]] = []
            for meta in listing.messages.values():
                name = by_uid.get(meta.uid)
                if name is None:
                    if meta.filename in taken:
                        continue  # a trashed message took this name: one file per name
                    name = meta.filename
                items.append((name, MessageRef(folder, listing.uidvalidity, meta)))
            return items
        if node.role == INFO:
            with self._lock:
                return list(self._info.items())
        if node.role == EXPUNGED:
            return []
        return list(node.children.items())

    def dir_permissions(self, node: DirNode) -> int:
        return 0o700  # the spec's, and KIO checks it: a trash others can read is someone else's

    # --- trashing, restoring, emptying -------------------------------------
    def receive(self, source: View, node: Node, new: Parts) -> None:
        """rename(2) of a message into files/: MOVE it to \\Trash."""
        ref = source.message(node)
        if ref is None:
            raise NotSupported("only messages can be put in the trash (remove a folder with rm -r)")
        if len(new) != 2 or new[0] != FILES:
            raise NotSupported(f"things are trashed into {self.name}/{FILES}/")
        name = new[1]
        trash = self.store.trash_folder()
        with self._lock:
            if name in self._trashed:
                raise AlreadyExists(f"{self.name}/{FILES}/{name}")
        self.store.move(ref.folder.name, ref.uidvalidity, ref.meta.uid, trash)
        with self._lock:
            self._trashed[name] = _Trashed(name, identity=(ref.meta.message_id, int(ref.meta.internaldate)))
        self._reconcile(self.store.listing(trash))
        with self._lock:
            bound = self._trashed.get(name)
        if bound is not None and bound.uid is None:
            log.warning("%s/%s: moved to %r, but not found there yet; it shows once it is", self.name,
                        name, trash)
        log.info("trashed UID %d of %r as %s/%s/%s", ref.meta.uid, ref.folder.name, self.name, FILES, name)

    def released(self, parts: Parts, node: Node) -> None:
        """A message was renamed out of files/ (restored): its record and
        trashinfo go, as gvfsd-trash would remove the trashinfo itself."""
        if len(parts) == 2 and parts[0] == FILES:
            self._forget_trashed(parts[1])

    def _forget_trashed(self, name: str) -> None:
        with self._lock:
            self._trashed.pop(name, None)
            info = self._info.pop(name + INFO_SUFFIX, None)
        if info is not None:
            self._let_go(info)

    def unlink(self, parts: Parts, node: Node, actor: Hashable) -> None:
        if len(parts) == 2 and parts[0] == INFO and isinstance(node, NewFile):
            with self._lock:
                if self._info.get(parts[1]) is node:
                    del self._info[parts[1]]
            self._let_go(node)
            return
        if len(parts) == 2 and parts[0] == FILES and isinstance(node, MessageRef):
            self._expunge(parts[1], node, actor)
            return
        raise NotFound("/".join((self.name, *parts)))

    def _expunge(self, name: str, ref: MessageRef, actor: Hashable) -> None:
        # In Trash, delete expunges that UID only (and keeps rm -r's rule:
        # what the same command moved to Trash is not expunged by it).
        self.store.delete(ref.folder.name, ref.uidvalidity, ref.meta.uid, actor)
        self._forget_trashed(name)

    def rename(self, old: Parts, node: Node, new: Parts) -> None:
        if len(old) == 2 and len(new) == 2 and old[0] == INFO and new[0] == INFO and isinstance(node, NewFile):
            self._rename_info(old[1], node, new[1])
            return
        if len(old) == 2 and len(new) == 2 and old[0] == FILES and new[0] == EXPUNGED \
                and isinstance(node, MessageRef):
            # gvfsd-trash's delete: into expunged/, then removed from there.
            self._expunge(old[1], node, None)
            return
        raise NotSupported("in the trash only trashinfo files are renamed (restore by moving out of files/)")

    def _rename_info(self, old_name: str, info: NewFile, new_name: str) -> None:
        """g_file_set_contents writes NAME.trashinfo.XXXXXX and renames it over NAME.trashinfo."""
        with self._lock:
            if self._info.get(old_name) is info:
                del self._info[old_name]
            replaced = self._info.get(new_name)
            info.name = new_name
            self._info[new_name] = info
        if replaced is not None and replaced is not info:
            self._let_go(replaced)

    def mkdir(self, parts: Parts) -> None:
        if len(parts) <= 1 and (not parts or parts[0] in (FILES, INFO, EXPUNGED)):
            raise AlreadyExists("/".join((self.name, *parts)))  # GIO's mkdir of them expects exactly this
        raise NotSupported("the trash has no directories but files/ and info/; folders are trashed with rm -r")

    def rmdir(self, parts: Parts, node: DirNode) -> None:
        raise NotSupported(f"{self.name} and its directories are the trash itself; they stay")

    # --- the trashinfo files ----------------------------------------------
    def create(self, parts: Parts, creator: int) -> NewFile:
        if len(parts) != 2 or parts[0] != INFO:
            raise NotSupported(f"only trashinfo files are written in {self.name}/{INFO}/; "
                               f"messages come to {FILES}/ by rename")
        name = parts[1]
        if name.endswith(INFO_SUFFIX) and self._files_name_taken(name[: -len(INFO_SUFFIX)]):
            raise AlreadyExists(f"{self.name}/{INFO}/{name}")  # GIO then tries NAME.2
        new = NewFile(folder=self._info_folder, name=name, spool=Spool(), owner=self, creator=creator,
                      role=INFO, header_seen=True, handles=1)  # header_seen: not a message, never checked as one
        with self._lock:
            if name in self._info:
                new.spool.close()
                raise AlreadyExists(f"{self.name}/{INFO}/{name}")
            self._info[name] = new
        return new

    def _files_name_taken(self, name: str) -> bool:
        with self._lock:
            if name in self._trashed:
                return True
        try:
            self._message_named(name)
        except NotFound:
            return False
        return True

    def commit(self, new: NewFile) -> None:
        """Its writer closed it: keep it (in memory) for readers, holding a
        handle of the view's own so that the spool outlives their closes."""
        with new.lock:
            if new.outcome in (None, "committing"):
                new.outcome = "kept"
                new.handles += 1

    def forget(self, new: NewFile) -> None:
        if new.outcome == "kept":
            return  # still shown: it is the trashinfo now
        with self._lock:
            if self._info.get(new.name) is new:
                del self._info[new.name]

    def _let_go(self, info: NewFile) -> None:
        """An info file is gone from info/: drop the view's handle on it (a
        reader's open handle keeps its spool until the reader closes)."""
        with info.lock:
            kept = info.outcome == "kept"
            if info.outcome is None:
                info.outcome = "discarded"  # still being written: its writer's close files nothing
            if kept:
                info.handles -= 1
            last = kept and info.handles <= 0
        if last:
            info.spool.close()

    # --- kernel notices ----------------------------------------------------
    def folder_paths(self, folder: Folder) -> list[Parts]:
        if folder.name != self.store.find_trash_folder():
            return []
        return [(FILES,)]

    def message_paths(self, folder: Folder, filenames: list[str]) -> list[Parts]:
        if folder.name != self.store.find_trash_folder():
            return []
        with self._lock:
            by_uid = {r.uid: r.name for r in self._trashed.values() if r.uid is not None}
        return [(FILES, by_uid.get(names.uid_from_filename(name), name)) for name in filenames]
