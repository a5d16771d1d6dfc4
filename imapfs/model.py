"""Plain data objects shared by the layers. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Folder:
    """One IMAP mailbox as LIST reported it.

    ``name`` is the server's name, already decoded from modified UTF-7;
    ``parts`` is that name split on the delimiter (the directory path).
    """

    name: str
    delimiter: str | None
    flags: frozenset[str] = frozenset()

    @property
    def parts(self) -> tuple[str, ...]:
        if not self.delimiter:
            return (self.name,)
        return tuple(self.name.split(self.delimiter))

    @property
    def selectable(self) -> bool:
        return not ({"\\noselect", "\\nonexistent"} & {f.lower() for f in self.flags})

    @property
    def special_use(self) -> str | None:
        for flag in self.flags:
            if flag.lower() in {"\\trash", "\\sent", "\\drafts", "\\junk", "\\archive", "\\all", "\\flagged"}:
                return flag
        return None


@dataclass(slots=True)
class MessageMeta:
    """What a listing knows about one message, kept small: a folder of
    10,000 messages holds 10,000 of these in the header cache.

    ``size`` starts as the server's RFC822.SIZE and is replaced by the real
    length once the body has been fetched (``size_verified``).
    """

    uid: int
    size: int
    internaldate: float  # seconds since the epoch, UTC
    flags: tuple[str, ...]
    filename: str
    message_id: str = ""
    size_verified: bool = False


@dataclass
class FolderStatus:
    """The per-SELECT state that decides whether cached data is still valid."""

    uidvalidity: int
    exists: int
    uidnext: int | None = None
    highestmodseq: int | None = None


@dataclass
class Listing:
    """A folder's messages as last synchronised, valid for one UIDVALIDITY."""

    folder: str
    uidvalidity: int
    messages: dict[int, MessageMeta] = field(default_factory=dict)
    highestmodseq: int | None = None
    uidnext: int | None = None
    synced_at: float = 0.0
    stale: bool = False  # set after a write or a change notice: resync before trusting it
    changed_ns: int = 0  # wall-clock time its entries (UIDs or flags) last changed: its directory's mtime
    flags_moved: bool = False  # a resync changed some message's flags

    _order: tuple[list[int], dict[int, int]] | None = field(default=None, repr=False, compare=False)

    def order(self) -> tuple[list[int], dict[int, int]]:
        """UIDs in listing (and readdir) order, and each UID's index; built once per listing."""
        if self._order is None or len(self._order[0]) != len(self.messages):
            uids = list(self.messages)
            self._order = (uids, {uid: i for i, uid in enumerate(uids)})
        return self._order

    def add(self, meta: MessageMeta) -> None:
        self.messages[meta.uid] = meta

    def remove(self, uid: int) -> None:
        self.messages.pop(uid, None)

    def filenames(self) -> set[str]:
        return {meta.filename for meta in self.messages.values()}
