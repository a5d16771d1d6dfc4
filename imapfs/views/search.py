"""``.search/QUERY/``: server-side search results as directories.

A hidden view (composite root): ``ls "M/.search/from:alice invoice"`` is a
directory of the folders holding matches, nested as in the folder view, each
holding the matching messages under their usual names. The messages are
MessageRefs from the folders' own listings, so cat, cp, getfattr and the
kernel's caches treat them exactly as in the folder view.

Cost: one EXAMINE and UID SEARCH per folder searched, the folders spread
over the pool's connections and each connection's commands sent at once,
and the metadata (never bodies) of the matches only, fetched with the search
(SEARCHRES: ``UID FETCH $``) unless the folder's listing is fresh: about one
round trip in all. Results are as fresh as listings are: within listing_ttl,
and renewed at once after a change through the mount or one the watcher saw.

Decisions:
- ``.search`` itself lists nothing: a query is looked up by its name. Listing
  recent queries would show results that are stale by design, and a tool
  walking .search would run every one of them again.
- ``rm`` of a result acts on the real message (to Trash, as in the folder
  view). ``mv`` into a folder directory of the mount is that view's
  ``receive`` (a MOVE of the real message, root.CompositeRoot.rename);
  ``mv`` between two folder directories of one result moves it there too;
  renaming in place, or into another query, is refused (EPERM): a result
  directory is not where a message can be filed by name.
- A query that does not parse fails its lookup with EINVAL, and fs.py logs the
  reason (imapfs.query says what is wrong).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable
from dataclasses import dataclass, field

from cachetools import TTLCache

from imapfs import names, query
from imapfs.errors import InvalidQuery, NotFound, NotSupported
from imapfs.model import Folder, Listing, MessageMeta
from imapfs.store import Found, MailStore
from imapfs.views.base import DirNode, MessageRef, Node, Parts, View
from imapfs.views.folders import build_tree

log = logging.getLogger(__name__)

# Results of this many recent queries are kept (each a few dicts per matching folder).
RECENT_QUERIES = 64


@dataclass
class Result:
    """One query's answer: the tree of folders with matches and their messages."""

    query: query.Query
    source: tuple[object, ...]  # what it was built from: same objects -> same result
    tree: DirNode
    messages: dict[str, tuple[int, dict[int, MessageMeta]]]  # folder name -> UIDVALIDITY, matches in UID order
    entries: dict[Parts, list[tuple[str, Node]]] = field(default_factory=dict)


class SearchView(View):
    """``.search/QUERY/FOLDER.../NAME.eml``."""

    def __init__(self, store: MailStore) -> None:
        self.store = store
        self._root = DirNode(folder=None, role="search")
        self._lock = threading.Lock()  # guards _results
        self._results: TTLCache[str, Result] = TTLCache(maxsize=RECENT_QUERIES,
                                                         ttl=max(store.options.listing_ttl, 1.0) * 6)

    # --- answering a query -------------------------------------------------
    def _result(self, text: str) -> Result:
        parsed = query.parse(text)  # InvalidQuery: EINVAL, logged by fs.py with the reason
        for capability in sorted(parsed.needs):
            if not self.store.has_capability(capability):
                raise InvalidQuery(f"{text!r} needs a server offering {capability} (Gmail); this one does not")
        folders = [f for f in self.store.folders()
                   if f.selectable and parsed.wants_folder(f.name, f.delimiter)]
        found = self.store.search_folders([f.name for f in folders], parsed.keys, parsed.charset)
        matched = [f for f in folders if found[f.name].uids]
        listings = {f.name: self.store.fresh_listing(f.name) for f in matched}
        behind = [f.name for f in matched if found[f.name].metas is None
                  and not _shows(listings[f.name], found[f.name])]
        if behind:
            # The search saw mail (or a recreated folder) that the listing it
            # trusted does not show yet: renew both, so what is found is also
            # what is listed.
            for name in behind:
                self.store.changed_elsewhere(name)
            found.update(self.store.search_folders(behind, parsed.keys, parsed.charset))
            listings.update(self.store.listings_of(behind))
        source = (tuple(folders), *((f.name, listings[f.name], found[f.name]) for f in matched))
        with self._lock:
            cached = self._results.get(text)
        if cached is not None and _same(cached.source, source):
            return cached
        result = self._build(parsed, source, matched, listings, found)
        with self._lock:
            self._results[text] = result
        return result

    @staticmethod
    def _build(parsed: query.Query, source: tuple[object, ...], matched: list[Folder],
               listings: dict[str, Listing | None], found: dict[str, Found]) -> Result:
        """The matches as the folder view shows them: from the folder's
        listing where it is fresh and shows them, else from the metadata
        fetched with the search (what a listing would hold for those UIDs)."""
        messages: dict[str, tuple[int, dict[int, MessageMeta]]] = {}
        shown: list[Folder] = []
        for folder in matched:
            listing, hits = listings[folder.name], found[folder.name]
            if _shows(listing, hits):
                known = listing.messages
            elif hits.metas is not None:
                known = hits.metas
            else:
                continue  # recreated between the search and the listing: nothing found is known to be there
            metas = {uid: meta for uid in hits.uids if (meta := known.get(uid)) is not None}
            if metas:
                messages[folder.name] = (hits.uidvalidity, metas)
                shown.append(folder)
        return Result(parsed, source, build_tree(shown), messages)

    def _walk(self, parts: Parts) -> tuple[Result | None, DirNode | None]:
        """The result and the directory at parts (the query directory itself for one part)."""
        if not parts:
            return None, self._root
        result = self._result(parts[0])
        node: DirNode | None = result.tree
        for part in parts[1:]:
            node = node.children.get(part) if node is not None else None
        return result, node

    # --- the View interface ------------------------------------------------
    def resolve(self, parts: Parts) -> Node:
        result, node = self._walk(parts)
        if node is not None:
            return node
        assert result is not None
        parent = self._walk(parts[:-1])[1] if len(parts) > 1 else None
        ref = _message_in(result, parent, parts[-1])
        if ref is None:
            raise NotFound("/".join(parts))
        return self._current(ref)

    def _current(self, ref: MessageRef) -> MessageRef:
        """ref as its folder's listing holds it now, if the listing holds it
        with another size: a size corrected since the search (a first read
        found the server's wrong) is what the folder shows, here too."""
        listing = self.store.cached_listing(ref.folder.name)
        if listing is None or listing.uidvalidity != ref.uidvalidity:
            return ref
        row = listing.messages.get(ref.meta.uid)
        if row is None or row.filename != ref.meta.filename or row.size == ref.meta.size:
            return ref
        return MessageRef(ref.folder, ref.uidvalidity, row)

    def entries(self, parts: Parts, node: DirNode) -> list[tuple[str, Node]]:
        if not parts:
            return []
        result, current = self._walk(parts)
        if current is None:
            raise NotFound("/".join(parts))
        assert result is not None
        with self._lock:
            cached = result.entries.get(parts)
        if cached is not None:
            return cached
        items: list[tuple[str, Node]] = list(current.children.items())
        if current.folder is not None and current.folder.name in result.messages:
            uidvalidity, metas = result.messages[current.folder.name]
            items.extend((meta.filename, MessageRef(current.folder, uidvalidity, meta))
                         for meta in metas.values() if meta.filename not in current.children)
        with self._lock:
            result.entries[parts] = items
        return items

    # --- changes: on the real messages --------------------------------------
    def unlink(self, parts: Parts, node: Node, actor: Hashable) -> None:
        if not isinstance(node, MessageRef):
            raise NotSupported("only messages can be removed in .search")
        self.store.delete(node.folder.name, node.uidvalidity, node.meta.uid, actor)

    def rename(self, old: Parts, node: Node, new: Parts) -> None:
        if not isinstance(node, MessageRef) or len(new) < 2 or new[0] != old[0]:
            raise NotSupported("in .search, a message moves only to another folder of the same result; "
                               "move it from its folder directory instead")
        _, target = self._walk(new[:-1])
        if target is None or target.folder is None:
            raise NotSupported(f"{'/'.join(new[1:-1])!r} is no folder of this result; "
                               "move the message from its folder directory instead")
        if target.folder.name == node.folder.name:
            raise NotSupported("a message's name is derived from it; it cannot be chosen")
        self.store.move(node.folder.name, node.uidvalidity, node.meta.uid, target.folder.name)

    # --- kernel notices ----------------------------------------------------
    def folder_paths(self, folder: Folder) -> list[Parts]:
        directory = tuple(names.folder_to_parts(folder.name, folder.delimiter))
        with self._lock:
            texts = list(self._results.keys())
        # The query's own directory too: the folder may have gained or lost its last match.
        return [path for text in texts for path in ((text,), (text, *directory))]

    def message_paths(self, folder: Folder, filenames: list[str]) -> list[Parts]:
        directory = tuple(names.folder_to_parts(folder.name, folder.delimiter))
        with self._lock:
            results = list(self._results.items())
        return [(text, *directory, name) for text, result in results if folder.name in result.messages
                for name in filenames]


def _shows(listing: Listing | None, found: Found) -> bool:
    """Whether the listing holds every UID the search found (in the same UIDVALIDITY)."""
    return listing is not None and listing.uidvalidity == found.uidvalidity \
        and all(uid in listing.messages for uid in found.uids)


def _same(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    """Built from the same folder list, listings and search answers (objects
    are replaced, never mutated, when the server's state moves on)."""
    return len(a) == len(b) and all(x is y or x == y for x, y in zip(a, b, strict=True))


def _message_in(result: Result, parent: DirNode | None, name: str) -> MessageRef | None:
    if parent is None or parent.folder is None or parent.folder.name not in result.messages:
        return None
    uid = names.uid_from_filename(name)
    uidvalidity, metas = result.messages[parent.folder.name]
    meta = metas.get(uid) if uid is not None else None
    if meta is None or meta.filename != name:
        return None
    return MessageRef(parent.folder, uidvalidity, meta)
