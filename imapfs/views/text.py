"""The .text view: .text/FOLDER/NAME.txt, each message as a person reads it
(render.py), for grep: `grep -ri zürich M/.text` finds an RFC 2047 subject
or a quoted-printable body that grep over the .eml files cannot.

Hidden (CompositeRoot): looked up by name, never listed at the mount root,
so grep -r, find and backups of the mount do not read every message twice.
Read-only: every change is refused (NotSupported, EPERM).
"""

from __future__ import annotations

from imapfs import names
from imapfs.errors import NotFound
from imapfs.model import Folder
from imapfs.views.base import DirNode, Node, Parts
from imapfs.views.derived import MirrorView, stem

TEXT_SUFFIX = ".txt"


class TextView(MirrorView):
    """Folders as directories, each message as NAME.txt (NAME as in the folder view, less .eml)."""

    def resolve(self, parts: Parts) -> Node:
        node, depth = self._walk(parts)
        if depth == len(parts):
            return node
        name = parts[depth]
        if depth != len(parts) - 1 or not name.endswith(TEXT_SUFFIX):
            raise NotFound("/".join(parts))
        ref = self._message(node.folder, name[:-len(TEXT_SUFFIX)] + names.EML_SUFFIX, parts)
        return self.content.text_file(ref)

    def entries(self, parts: Parts, node: DirNode) -> list[tuple[str, Node]]:
        items: list[tuple[str, Node]] = list(node.children.items())
        items.extend((stem(ref.meta.filename) + TEXT_SUFFIX, self.content.text_file(ref))
                     for ref in self._messages(node))
        return items

    def message_paths(self, folder: Folder, filenames: list[str]) -> list[Parts]:
        directory = tuple(names.folder_to_parts(folder.name, folder.delimiter))
        return [(*directory, stem(name) + TEXT_SUFFIX) for name in filenames]
