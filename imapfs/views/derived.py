"""What the hidden views .text and .parts share: the folder tree they mirror,
and MessageContent, which makes a message's derived files (its text, its
header block, its attachments) as cheaply as the message allows.

Why two ways to the text: a small message (up to the store's WHOLE_LIMIT)
is rendered from its whole body, fetched through the store's read-ahead so
that grep -r over .text costs what grep -r over the .eml files costs; a
large one from its BODYSTRUCTURE and its text parts only, so a 30 MB
attachment is never downloaded to grep a three-line note. Attachments are
always fetched part by part (BODY.PEEK[section]).
"""

from __future__ import annotations

import email
import email.policy
import threading
from collections.abc import Callable, Hashable

from cachetools import LRUCache

from imapfs import mime, names, render
from imapfs.errors import NotFound
from imapfs.model import Folder
from imapfs.store import WHOLE_LIMIT, MailStore
from imapfs.views.base import DerivedFile, DirNode, MessageRef, Parts, View
from imapfs.views.folders import FolderTree

# Rendered texts and decoded attachments kept, by total bytes.
DERIVED_CACHE_BYTES = 64 * 1024 * 1024
# Until a text is rendered its size is unknown; this bound holds for any
# message: decoding to UTF-8 at most triples a byte (one undecodable byte
# becomes U+FFFD), and the lines imapfs adds are covered by the slack.
TEXT_GROWTH = 4
TEXT_SLACK = 64 * 1024


class MessageContent:
    """A message's derived bytes, made on demand and cached by their key."""

    def __init__(self, store: MailStore, cache_bytes: int = DERIVED_CACHE_BYTES) -> None:
        self.store = store
        self._lock = threading.Lock()  # guards _bytes, _attachments
        self._max_bytes = cache_bytes
        self._bytes: LRUCache[Hashable, bytes] = LRUCache(maxsize=max(1, cache_bytes), getsizeof=len)
        self._attachments: LRUCache[Hashable, list[render.Attachment]] = LRUCache(maxsize=1024)

    # --- caching -----------------------------------------------------------
    def _cached(self, key: Hashable) -> bytes | None:
        with self._lock:
            return self._bytes.get(key)

    def _made(self, key: Hashable, make: Callable[[], bytes]) -> bytes:
        data = self._cached(key)
        if data is None:
            data = make()
            if len(data) <= self._max_bytes:
                with self._lock:
                    self._bytes[key] = data
        return data

    @staticmethod
    def _key(ref: MessageRef, what: str) -> tuple[str, int, int, str]:
        return (ref.folder.name, ref.uidvalidity, ref.meta.uid, what)

    @staticmethod
    def _mtime_ns(ref: MessageRef) -> int:
        return int(ref.meta.internaldate * 1e9)

    def _file(self, ref: MessageRef, what: str, make: Callable[[], bytes], bound: int) -> DerivedFile:
        key = self._key(ref, what)
        data = self._cached(key)

        def read(offset: int, size: int) -> bytes:
            return self._made(key, make)[offset:offset + size]

        return DerivedFile(key=key, size=len(data) if data is not None else bound, size_known=data is not None,
                           mtime_ns=self._mtime_ns(ref), read=read, prepare=lambda: len(self._made(key, make)))

    # --- the message as entities -------------------------------------------
    def _structure_entity(self, ref: MessageRef) -> render.Entity:
        folder, uidvalidity, uid = ref.folder.name, ref.uidvalidity, ref.meta.uid
        tree, headers = self.store.structure(folder, uidvalidity, uid)

        def content(part: mime.StructPart) -> bytes:
            return mime.decode_transfer(part.encoding, self.store.part(folder, uidvalidity, uid, part.section))

        return render.entity_from_structure(tree, headers, content)

    def _text_entity(self, ref: MessageRef) -> render.Entity:
        if ref.meta.size <= WHOLE_LIMIT:
            raw = self.store.body(ref.folder.name, ref.uidvalidity, ref.meta)
            return render.entity_from_message(email.message_from_bytes(raw, policy=email.policy.default))
        return self._structure_entity(ref)

    # --- the files ---------------------------------------------------------
    def text(self, ref: MessageRef) -> bytes:
        return self._made(self._key(ref, "text"), lambda: render.render(self._text_entity(ref)))

    def text_file(self, ref: MessageRef) -> DerivedFile:
        """The message as text. Rendered at once when its body is cached
        already (no I/O): read-ahead then gives the files after the one being
        read their real sizes before the kernel asks."""
        key = self._key(ref, "text")
        if self._cached(key) is None and ref.meta.size <= WHOLE_LIMIT \
                and (ref.folder.name, ref.uidvalidity, ref.meta.uid) in self.store.bodies:
            self.text(ref)
        return self._file(ref, "text", lambda: render.render(self._text_entity(ref)),
                          TEXT_GROWTH * ref.meta.size + TEXT_SLACK)

    def headers_file(self, ref: MessageRef) -> DerivedFile:
        def make() -> bytes:
            return self.store.header(ref.folder.name, ref.uidvalidity, ref.meta.uid)
        return self._file(ref, "headers", make, ref.meta.size)

    def attachments(self, ref: MessageRef) -> list[render.Attachment]:
        key = self._key(ref, "attachments")
        with self._lock:
            found = self._attachments.get(key)
        if found is None:
            found = render.attachments(self._structure_entity(ref))
            with self._lock:
                self._attachments[key] = found
        return found

    def attachment_file(self, ref: MessageRef, attachment: render.Attachment) -> DerivedFile:
        entity = attachment.entity
        return self._file(ref, f"part {entity.section}", entity.content, entity.size)


class MirrorView(View):
    """A hidden view that mirrors the folder tree; subclasses say what a
    folder directory holds for each message."""

    def __init__(self, store: MailStore, content: MessageContent) -> None:
        self.store = store
        self.content = content
        self._tree = FolderTree(store)

    def _root(self) -> DirNode:
        return self._tree.root()

    def _walk(self, parts: Parts) -> tuple[DirNode, int]:
        """The deepest folder-tree directory on the path, and how many parts it took."""
        node = self._root()
        for depth, part in enumerate(parts):
            child = node.children.get(part)
            if child is None:
                return node, depth
            node = child
        return node, len(parts)

    def _message(self, folder: Folder | None, eml_name: str, path: Parts) -> MessageRef:
        if folder is None or not folder.selectable:
            raise NotFound("/".join(path))
        uidvalidity, meta = self.store.message(folder.name, eml_name)
        return MessageRef(folder, uidvalidity, meta)

    def _messages(self, node: DirNode) -> list[MessageRef]:
        if node.folder is None or not node.folder.selectable:
            return []
        listing = self.store.listing(node.folder.name)
        return [MessageRef(node.folder, listing.uidvalidity, meta) for meta in listing.messages.values()]

    def folder_paths(self, folder: Folder) -> list[Parts]:
        return [tuple(names.folder_to_parts(folder.name, folder.delimiter))]


def stem(eml_name: str) -> str:
    """A listing's file name without its .eml suffix."""
    return eml_name[:-len(names.EML_SUFFIX)] if eml_name.endswith(names.EML_SUFFIX) else eml_name
