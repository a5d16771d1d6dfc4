"""The composite root: the main view at the mount root, hidden views beside it.

A hidden view (".search", ".Trash-1000") is looked up by its name and never
listed in the root, so `grep -r`, `find`, `rsync` and backups of the mount
never descend into it (as ZFS's .zfs works). Composing like ratarmount's
SubvolumesMountSource: neither the main view nor a hidden one knows of the
others; the root only routes paths.
"""

from __future__ import annotations

from imapfs.errors import NotSupported
from imapfs.model import Folder
from imapfs.views.base import Node, Parts, View


class CompositeRoot:
    def __init__(self, main: View, hidden: dict[str, View] | None = None) -> None:
        self.main = main
        self.hidden = dict(hidden or {})

    def route(self, parts: Parts) -> tuple[View, Parts]:
        """The view a path belongs to, and the path within it."""
        if parts and parts[0] in self.hidden:
            return self.hidden[parts[0]], parts[1:]
        return self.main, parts

    def rename(self, old: Parts, new: Parts) -> None:
        """rename(2): within one view, that view's rename; between views, the
        target receives the source's node (GIO's "Move to Trash" renames a
        folder's message into .Trash-UID/files/) and the source forgets it."""
        view, old_inside = self.route(old)
        target, new_inside = self.route(new)
        node = view.resolve(old_inside)
        if target is view:
            view.rename(old_inside, node, new_inside)
            return
        if not new_inside:
            raise NotSupported("a view's own root cannot be replaced")
        target.receive(view, node, new_inside)
        view.released(old_inside, node)

    def resolve(self, parts: Parts) -> tuple[View, Parts, Node]:
        view, inside = self.route(parts)
        return view, inside, view.resolve(inside)

    def folder_paths(self, folder: Folder) -> list[Parts]:
        return [*self.main.folder_paths(folder),
                *((name, *p) for name, view in self.hidden.items() for p in view.folder_paths(folder))]

    def message_paths(self, folder: Folder, filenames: list[str]) -> list[Parts]:
        return [*self.main.message_paths(folder, filenames),
                *((name, *p) for name, view in self.hidden.items() for p in view.message_paths(folder, filenames))]
