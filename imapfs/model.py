"""Plain data objects shared by the layers. No I/O here."""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


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
    """What a listing knows about one message. A listing holds its
    messages as columns (MessageTable); a MessageMeta is one row of them,
    made when asked for.

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


@dataclass(eq=False)
class Listing:
    """A folder's messages as last synchronised, valid for one UIDVALIDITY.
    Compared by identity: a listing is replaced, never changed, when the
    server's state moves on, so the same object means the same entries (and
    comparing 100,000 rows would cost what that identity saves)."""

    folder: str
    uidvalidity: int
    messages: MessageTable = field(default_factory=lambda: MessageTable())
    highestmodseq: int | None = None
    uidnext: int | None = None
    synced_at: float = 0.0
    stale: bool = False  # set after a write or a change notice: resync before trusting it
    changed_ns: int = 0  # wall-clock time its entries (UIDs or flags) last changed: its directory's mtime
    flags_moved: bool = False  # a resync changed some message's flags

    def __post_init__(self) -> None:
        if not isinstance(self.messages, MessageTable):
            self.messages = MessageTable(self.messages.values())

    def order(self) -> tuple[Sequence[int], MessageTable]:
        """UIDs in listing (and readdir) order, and what each UID's index is
        (``.position(uid)``): the table itself, nothing built."""
        return self.messages.uids, self.messages

    def add(self, meta: MessageMeta) -> None:
        self.messages.add(meta)

    def remove(self, uid: int) -> None:
        self.messages.remove_many([uid])

    def filenames(self) -> set[str]:
        return set(self.messages.filenames())


class MessageTable(Mapping[int, MessageMeta]):
    """A listing's messages, UID -> MessageMeta, held as columns.

    A folder of 100,000 messages held as 100,000 MessageMeta objects in a
    dict costs about 420 bytes a message (the object, its ints, float and
    two strings, the dict's slot); as columns (arrays of UIDs, sizes and
    dates, one byte string of all file names and one of all Message-IDs)
    about 140. A MessageMeta is made when one is asked for: a copy, so a
    change goes through set_flags or set_size, never through the copy.

    Rows are kept in UID order (a listing's readdir order), so a UID is found
    by bisection and the n-th entry of a directory is row n. Rows are added
    while a listing is built (in UID order: appended), and removed in
    batches by a resync (the table is rebuilt once); a table another thread
    can see only has its sizes and flags set, an item assignment each.
    """

    __slots__ = ("uids", "_sizes", "_dates", "_flag_ids", "_verified", "_names", "_name_ends", "_ids",
                 "_id_ends", "_flag_sets", "_flag_index")

    def __init__(self, metas: Iterable[MessageMeta] = ()) -> None:
        self.uids = array("I")  # ascending
        self._sizes = array("Q")
        self._dates = array("d")
        self._flag_ids = array("I")  # index into _flag_sets
        self._verified = bytearray()
        self._names = bytearray()  # UTF-8 file names, one after another
        self._name_ends = array("I")  # row i's name is _names[_name_ends[i-1]:_name_ends[i]]
        self._ids = bytearray()  # the same for Message-IDs
        self._id_ends = array("I")
        self._flag_sets: list[tuple[str, ...]] = []
        self._flag_index: dict[tuple[str, ...], int] = {}
        for meta in sorted(metas, key=lambda m: m.uid):
            self.add(meta)

    # --- reading -----------------------------------------------------------
    def __len__(self) -> int:
        return len(self.uids)

    def __iter__(self) -> Iterator[int]:
        return iter(self.uids)

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and self.position(uid) is not None

    def __getitem__(self, uid: int) -> MessageMeta:
        row = self.position(uid)
        if row is None:
            raise KeyError(uid)
        return self.at(row)

    def get(self, uid: int, default: Any = None) -> Any:  # type: ignore[override]
        row = self.position(uid)
        return default if row is None else self.at(row)

    def position(self, uid: int) -> int | None:
        """The row (readdir index) of uid, or None."""
        row = bisect_left(self.uids, uid)
        return row if row < len(self.uids) and self.uids[row] == uid else None

    def get_flags(self, uid: int) -> tuple[str, ...] | None:
        row = self.position(uid)
        return None if row is None else self._flag_sets[self._flag_ids[row]]

    def at(self, row: int) -> MessageMeta:
        return MessageMeta(uid=self.uids[row], size=self._sizes[row], internaldate=self._dates[row],
                           flags=self._flag_sets[self._flag_ids[row]], filename=self.filename_at(row),
                           message_id=_text(self._ids, self._id_ends, row), size_verified=bool(self._verified[row]))

    def size_at(self, row: int) -> int:
        return self._sizes[row]

    def date_at(self, row: int) -> float:
        return self._dates[row]

    def filename_at(self, row: int) -> str:
        return _text(self._names, self._name_ends, row)

    def values(self) -> Iterator[MessageMeta]:  # type: ignore[override]
        return (self.at(row) for row in range(len(self.uids)))

    def items(self) -> Iterator[tuple[int, MessageMeta]]:  # type: ignore[override]
        return ((self.uids[row], self.at(row)) for row in range(len(self.uids)))

    def filenames(self) -> Iterator[str]:
        return (self.filename_at(row) for row in range(len(self.uids)))

    def uids_not_in(self, other: MessageTable) -> list[int]:
        """This table's UIDs that other does not hold, in UID order."""
        theirs = set(other.uids)
        return [uid for uid in self.uids if uid not in theirs]

    def same_uids(self, other: MessageTable) -> bool:
        return self.uids == other.uids

    def copy(self) -> MessageTable:
        twin = MessageTable()
        # _verified before _sizes: set_size (a read in another thread) writes
        # the size, then the flag, so a copy between the two never holds a
        # reported size marked verified, only a real one not marked yet.
        for name in ("_verified", *(slot for slot in MessageTable.__slots__ if slot != "_verified")):
            value = getattr(self, name)
            setattr(twin, name, value.copy() if isinstance(value, dict) else value[:])
        return twin

    # --- changing ----------------------------------------------------------
    def add(self, meta: MessageMeta) -> None:
        """A new row, or the row of meta.uid replaced."""
        self.add_row(meta.uid, meta.size, meta.internaldate, meta.flags, meta.filename, meta.message_id,
                     meta.size_verified)

    def add_row(self, uid: int, size: int, internaldate: float, flags: tuple[str, ...], filename: str,
                message_id: str, size_verified: bool) -> None:
        """add(), from the fields (a listing read from disk makes no MessageMeta per row)."""
        if self.uids and uid <= self.uids[-1]:
            # Out of UID order, or again (never in a listing as built).
            self.add_many([MessageMeta(uid=uid, size=size, internaldate=internaldate, flags=flags,
                                       filename=filename, message_id=message_id, size_verified=size_verified)])
            return
        self.uids.append(uid)
        self._sizes.append(size)
        self._dates.append(internaldate)
        self._flag_ids.append(self._flag_id(flags))
        self._verified.append(1 if size_verified else 0)
        self._names += filename.encode("utf-8", "surrogatepass")
        self._name_ends.append(len(self._names))
        self._ids += message_id.encode("utf-8", "surrogatepass")
        self._id_ends.append(len(self._ids))

    def add_many(self, metas: list[MessageMeta]) -> None:
        """Rows for metas, in one rebuild when some are out of UID order
        (a reconciliation fetches UIDs a listing missed, below its last)."""
        if self.uids and any(meta.uid <= self.uids[-1] for meta in metas):
            fresh = {meta.uid: meta for meta in self.values()}
            fresh.update((meta.uid, meta) for meta in metas)
            rebuilt = MessageTable(fresh.values())
            for name in self.__slots__:
                setattr(self, name, getattr(rebuilt, name))
            return
        for meta in sorted(metas, key=lambda m: m.uid):
            self.add(meta)

    def take_verified_sizes(self, other: MessageTable) -> None:
        """Real sizes other learnt (size_verified) for rows this table holds unverified."""
        start = other._verified.find(1)
        while start != -1:
            uid = other.uids[start]
            row = self.position(uid)
            if row is not None and not self._verified[row]:
                self._sizes[row] = other._sizes[start]
                self._verified[row] = 1
            start = other._verified.find(1, start + 1)

    def __setitem__(self, uid: int, meta: MessageMeta) -> None:
        if uid != meta.uid:
            raise ValueError(f"UID {uid} is not the UID of {meta!r}")
        self.add(meta)

    def remove_many(self, uids: Iterable[int]) -> None:
        """Rows of these UIDs removed (those not here ignored): the columns
        rebuilt once, from the slices between the rows removed."""
        gone = sorted({row for uid in uids if (row := self.position(uid)) is not None})
        if not gone:
            return
        keep = [(start, stop) for start, stop in zip([0, *(row + 1 for row in gone)], [*gone, len(self.uids)],
                                                      strict=True) if start < stop]
        for name in ("uids", "_sizes", "_dates", "_flag_ids", "_verified"):
            column = getattr(self, name)
            fresh = column[:0]
            for start, stop in keep:
                fresh += column[start:stop]
            setattr(self, name, fresh)
        for blob_name, ends_name in (("_names", "_name_ends"), ("_ids", "_id_ends")):
            blob, ends = getattr(self, blob_name), getattr(self, ends_name)
            new_blob, new_ends = bytearray(), array("I")
            for start, stop in keep:
                first = ends[start - 1] if start else 0
                shift = len(new_blob) - first
                new_blob += blob[first:ends[stop - 1]]
                new_ends += array("I", [end + shift for end in ends[start:stop]])
            setattr(self, blob_name, new_blob)
            setattr(self, ends_name, new_ends)

    def pop(self, uid: int, default: Any = None) -> Any:
        meta = self.get(uid)
        if meta is None:
            return default
        self.remove_many([uid])
        return meta

    def set_flags(self, uid: int, flags: tuple[str, ...]) -> bool:
        """Whether uid is here and its flags changed."""
        row = self.position(uid)
        if row is None or self._flag_sets[self._flag_ids[row]] == flags:
            return False
        self._flag_ids[row] = self._flag_id(flags)
        return True

    def set_size(self, uid: int, size: int, verified: bool) -> None:
        row = self.position(uid)
        if row is not None:
            self._sizes[row] = size
            self._verified[row] = 1 if verified else 0

    def _flag_id(self, flags: tuple[str, ...]) -> int:
        # Few distinct flag sets exist in a folder: each is held once.
        found = self._flag_index.get(flags)
        if found is None:
            found = len(self._flag_sets)
            self._flag_sets = [*self._flag_sets, flags]  # a new list: copies share the old one safely
            self._flag_index = {**self._flag_index, flags: found}
        return found


def _text(blob: bytearray, ends: array, row: int) -> str:
    start = ends[row - 1] if row else 0
    return blob[start:ends[row]].decode("utf-8", "surrogatepass")
