"""The .parts view: .parts/FOLDER/NAME/ holds one message taken apart:
``headers`` (its header block), ``text`` (as in .text) and each attachment
under its decoded file name, made safe and unique within the message.

Fetched part by part: listing a message directory costs its BODYSTRUCTURE
and the header fields of its parts; reading ``headers`` costs
BODY.PEEK[HEADER]; reading an attachment costs BODY.PEEK[section] of that
part alone, so a 20 KB attachment beside a 30 MB one transfers kilobytes.
Attachment bytes are what the email package decodes from the whole message
(mime.decode_transfer runs its code). Hidden and read-only, like .text.
"""

from __future__ import annotations

from imapfs import names
from imapfs.errors import NotFound
from imapfs.model import Folder
from imapfs.views.base import DirNode, MessageRef, Node, Parts
from imapfs.views.derived import MirrorView, stem

MESSAGE_ROLE = "message"  # a DirNode role: the directory of one message


class PartsView(MirrorView):
    """Folders as directories, each message a directory of its parts."""

    def _message_dir(self, parts: Parts) -> tuple[MessageRef, int] | None:
        """The message whose directory the path enters, and the index of that directory's part."""
        node, depth = self._walk(parts)
        if depth == len(parts):
            return None
        ref = self._message(node.folder, parts[depth] + names.EML_SUFFIX, parts)
        return ref, depth

    def resolve(self, parts: Parts) -> Node:
        found = self._message_dir(parts)
        if found is None:
            return self._walk(parts)[0]
        ref, depth = found
        rest = parts[depth + 1:]
        if not rest:
            return DirNode(folder=ref.folder, role=MESSAGE_ROLE)
        if len(rest) == 1:
            for name, node in self._files(ref, listing=False):
                if name == rest[0]:
                    return node
            if rest[0] not in ("headers", "text"):
                for attachment in self.content.attachments(ref):
                    if attachment.name == rest[0]:
                        return self.content.attachment_file(ref, attachment)
        raise NotFound("/".join(parts))

    def _files(self, ref: MessageRef, listing: bool) -> list[tuple[str, Node]]:
        files: list[tuple[str, Node]] = [("headers", self.content.headers_file(ref)),
                                         ("text", self.content.text_file(ref))]
        if listing:
            files.extend((a.name, self.content.attachment_file(ref, a)) for a in self.content.attachments(ref))
        return files

    def entries(self, parts: Parts, node: DirNode) -> list[tuple[str, Node]]:
        if node.role == MESSAGE_ROLE:
            found = self._message_dir(parts)
            if found is None:
                raise NotFound("/".join(parts))
            return self._files(found[0], listing=True)
        items: list[tuple[str, Node]] = list(node.children.items())
        items.extend((stem(ref.meta.filename), DirNode(folder=ref.folder, role=MESSAGE_ROLE))
                     for ref in self._messages(node))
        return items

    def message_paths(self, folder: Folder, filenames: list[str]) -> list[Parts]:
        directory = tuple(names.folder_to_parts(folder.name, folder.delimiter))
        return [(*directory, stem(name)) for name in filenames]
