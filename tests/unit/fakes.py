"""An in-memory IMAP server behind the Session interface (the pool boundary).

Unit tests drive the real MailStore against it; no network. It records
every command so tests can assert what was (not) sent, e.g. that a listing
never fetches a body.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email
import email.policy
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from imapfs.config import Account, Options
from imapfs.errors import AlreadyExists, NotFound, NotSupported, ProtocolError
from imapfs.model import Folder, FolderStatus
from imapfs.pool import ConnectionPool, Namespaces, Searched
from imapfs.spool import Literal


@dataclass
class FakeMessage:
    raw: bytes
    flags: set[str] = field(default_factory=set)
    internaldate: dt.datetime = field(default_factory=lambda: dt.datetime(2024, 3, 5, 14, 32,
                                                                          tzinfo=dt.timezone.utc))
    reported_size: int | None = None  # simulate a server whose RFC822.SIZE is wrong
    modseq: int = 1


@dataclass
class FakeMailbox:
    uidvalidity: int
    uidnext: int = 1
    messages: dict[int, FakeMessage] = field(default_factory=dict)
    modseq: int = 1
    vanished: list[tuple[int, int]] = field(default_factory=list)  # (uid, modseq of its expunge)

    def drop(self, uid: int) -> FakeMessage:
        self.modseq += 1
        self.vanished.append((uid, self.modseq))
        return self.messages.pop(uid)


class FakeServer:
    def __init__(self, capabilities: tuple[str, ...] = ("IMAP4REV1", "MOVE", "UIDPLUS", "CONDSTORE",
                                                        "UNSELECT", "IDLE")) -> None:
        self.capabilities = frozenset(capabilities)
        self.mailboxes: dict[str, FakeMailbox] = {}
        self.delimiter = "/"
        self.commands: list[tuple] = []
        self.fail_next: list[BaseException] = []
        # command name -> error raised after the command took effect (the reply was lost)
        self.fail_after: dict[str, BaseException] = {}
        # command name -> error raised with the command not carried out (yet)
        self.unstored_after: dict[str, BaseException] = {}
        # command name -> error raised before the command was sent whole (a fresh connection may repeat it)
        self.fail_before: dict[str, BaseException] = {}
        self.stored_later: list[tuple[str, bytes, tuple[str, ...]]] = []  # APPENDs a slow server still stores
        self.store_on_search: int | None = None  # ... at this many UID SEARCHes
        self.searches = 0
        self.append_chunks: list[int] = []  # chunks each APPEND literal came in
        # UIDs another session expunged that this one may still fetch: Dovecot answers BODY[] NIL.
        self.ghosts: set[int] = set()
        # How a partial fetch's answer is named: "origin" (BODY[]<0>, RFC 3501),
        # "origin.length" (BODY[]<0.131072>, as some servers do), or any other
        # text, put between the brackets of BODY[...] (a server imapfs cannot follow).
        self.partial_answer = "origin"
        # The NAMESPACE answer (pool.Namespaces); a personal prefix like "INBOX." makes CREATE refuse other names.
        self.namespaces = Namespaces(personal=(("", "/"),), other=(), shared=())
        # Called (with the folder) before each UID SEARCH: another client acting between two commands.
        self.before_search: Any = None
        self._next_uidvalidity = 1000
        self.create("INBOX")

    def create(self, name: str) -> FakeMailbox:
        if name in self.mailboxes:
            raise AlreadyExists(name)
        self._next_uidvalidity += 1
        box = FakeMailbox(uidvalidity=self._next_uidvalidity)
        self.mailboxes[name] = box
        return box

    def add(self, folder: str, raw: bytes, flags: tuple[str, ...] = (), **kw: Any) -> int:
        box = self.mailboxes[folder]
        uid = box.uidnext
        box.uidnext += 1
        box.modseq += 1
        box.messages[uid] = FakeMessage(raw=raw, flags=set(flags), modseq=box.modseq, **kw)
        return uid

    def expunge(self, folder: str, uid: int) -> None:
        self.mailboxes[folder].drop(uid)

    def set_flags(self, folder: str, uid: int, flags: set[str]) -> None:
        box = self.mailboxes[folder]
        box.modseq += 1
        box.messages[uid].flags = set(flags)
        box.messages[uid].modseq = box.modseq

    def session(self) -> FakeSession:
        return FakeSession(self)


def _parse_uid_set(spec: str | list[int], existing: list[int]) -> list[int]:
    if not isinstance(spec, str):
        return [u for u in spec if u in existing]
    wanted: set[int] = set()
    top = max(existing) if existing else 0
    for part in spec.split(","):
        if ":" in part:
            a, b = part.split(":")
            lo = top if a == "*" else int(a)
            hi = top if b == "*" else int(b)
            lo, hi = min(lo, hi), max(lo, hi)
            wanted.update(u for u in existing if lo <= u <= hi)
        else:
            uid = top if part == "*" else int(part)
            if uid in existing:
                wanted.add(uid)
    return sorted(wanted)


class FakeSession:
    """Implements the verbs of imapfs.pool.Session on a FakeServer."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.broken = False
        self.selected: str | None = None
        self.selected_readonly = True
        self.status: FolderStatus | None = None
        self.last_used = time.monotonic()
        self.opened_at = self.last_used
        self.answered = 0
        self.capabilities = server.capabilities
        self.qresync = "QRESYNC" in server.capabilities
        self.literals_dropped = 0

    def _log(self, *command: Any) -> None:
        self.last_used = time.monotonic()
        self.server.commands.append(command)
        if self.server.fail_next:
            self.broken = True
            raise self.server.fail_next.pop(0)
        self.answered += 1

    def has(self, capability: str) -> bool:
        return capability.upper() in self.capabilities

    @contextlib.contextmanager
    def time_limit(self, deadline: float) -> Iterator[None]:
        yield

    def _box(self, name: str | None = None) -> FakeMailbox:
        name = name if name is not None else self.selected
        if name not in self.server.mailboxes:
            raise NotFound(f"no mailbox {name}")
        return self.server.mailboxes[name]

    def list_folders(self) -> list[Folder]:
        self._log("LIST")
        return [Folder(name=n, delimiter=self.server.delimiter) for n in sorted(self.server.mailboxes)]

    def list_folders_with_status(self) -> tuple[list[Folder], dict[str, FolderStatus]]:
        """As pool.Session's: with LIST-STATUS offered, every folder's status too."""
        if "LIST-STATUS" not in self.capabilities:
            return self.list_folders(), {}
        self._log("LIST", "RETURN STATUS")
        return ([Folder(name=n, delimiter=self.server.delimiter) for n in sorted(self.server.mailboxes)],
                {n: FolderStatus(uidvalidity=box.uidvalidity, exists=len(box.messages), uidnext=box.uidnext,
                                 highestmodseq=box.modseq if self.has("CONDSTORE") else None)
                 for n, box in self.server.mailboxes.items()})

    def select(self, folder: str, readonly: bool = True) -> FolderStatus:
        self._log("EXAMINE" if readonly else "SELECT", folder)
        box = self._box(folder)
        self.selected, self.selected_readonly = folder, readonly
        self.status = FolderStatus(uidvalidity=box.uidvalidity, exists=len(box.messages), uidnext=box.uidnext,
                                   highestmodseq=box.modseq if self.has("CONDSTORE") else None)
        return self.status

    def ensure_selected(self, folder: str, readonly: bool = True) -> FolderStatus:
        if self.selected == folder and self.status is not None and (readonly or not self.selected_readonly):
            return self.status
        return self.select(folder, readonly)

    def search_all_uids(self) -> list[int]:
        self._log("UID SEARCH", "ALL")
        return sorted(self._box().messages)

    def fetch_each(self, uid_sets: Any, items: list[str], handle: Any, *, modifiers: list[str] | None = None,
                   ahead: int = 4, literal_limit: int | None = None) -> None:
        # Pipelining changes when commands are sent, not what they return: one logged FETCH per set.
        for uid_set in uid_sets:
            handle(self.fetch(uid_set, items, modifiers, literal_limit=literal_limit))

    def fetch(self, uid_set: str | list[int], items: list[str], modifiers: list[str] | None = None, *,
              literal_limit: int | None = None) -> dict[int, dict[bytes, Any]]:
        self._log("UID FETCH", uid_set if isinstance(uid_set, str) else list(uid_set), tuple(items),
                  tuple(modifiers or ()))
        box = self._box()
        changedsince = None
        for modifier in modifiers or ():
            if modifier.upper().startswith("CHANGEDSINCE"):
                changedsince = int(modifier.split()[1])
        out: dict[int, dict[bytes, Any]] = {}
        for uid in _parse_uid_set(uid_set, sorted(box.messages)):
            msg = box.messages[uid]
            if changedsince is not None and msg.modseq <= changedsince:
                continue
            data: dict[bytes, Any] = {b"UID": uid}
            for item in items:
                upper = item.upper()
                if upper == "FLAGS":
                    data[b"FLAGS"] = tuple(f.encode() for f in sorted(msg.flags))
                elif upper == "RFC822.SIZE":
                    data[b"RFC822.SIZE"] = msg.reported_size if msg.reported_size is not None else len(msg.raw)
                elif upper == "INTERNALDATE":
                    data[b"INTERNALDATE"] = msg.internaldate
                elif upper.startswith("BODY.PEEK[HEADER.FIELDS"):
                    header = msg.raw.split(b"\r\n\r\n", 1)[0] + b"\r\n"
                    wanted = upper[len("BODY.PEEK[HEADER.FIELDS ("):-2].split()
                    keep = [line for line in _header_lines(header)
                            if line.split(b":", 1)[0].strip().upper().decode() in wanted]
                    data[item.replace(".PEEK", "").encode()] = b"".join(keep) + b"\r\n"
                elif upper == "BODY.PEEK[]":
                    data[b"BODY[]"] = None if uid in self.server.ghosts else msg.raw
                elif upper.startswith("BODY.PEEK[]<"):
                    start, length = (int(x) for x in upper[len("BODY.PEEK[]<"):-1].split("."))
                    key = {"origin": f"BODY[]<{start}>", "origin.length": f"BODY[]<{start}.{length}>"}.get(
                        self.server.partial_answer, f"BODY[{self.server.partial_answer}]")
                    data[key.encode()] = msg.raw[start:start + length]
                elif upper == "UID":
                    pass
                else:
                    raise NotImplementedError(item)
            out[uid] = data
        return out

    def search_uids_from(self, first_uid: int) -> list[int]:
        self._log("UID SEARCH", f"UID {first_uid}:*")
        return sorted(u for u in self._box().messages if u >= first_uid)

    def changes_since(self, uid_set: str, modseq: int) -> tuple[dict[int, tuple[str, ...]], list[int]]:
        assert self.qresync
        self._log("UID FETCH", uid_set, ("UID", "FLAGS"), (f"CHANGEDSINCE {modseq} VANISHED",))
        box = self._box()
        known = set(_parse_uid_set(uid_set, sorted(set(box.messages) | {u for u, _ in box.vanished})))
        flags = {uid: tuple(sorted(m.flags)) for uid, m in box.messages.items()
                 if uid in known and m.modseq > modseq}
        vanished = sorted(uid for uid, at in box.vanished if at > modseq and uid in known)
        return flags, vanished

    def noop(self) -> None:
        self._log("NOOP")

    def statuses_of(self, folders: list[str]) -> dict[str, FolderStatus]:
        """As pool.Session.statuses_of (which sends them all at once): a gone folder left out."""
        found = {}
        for folder in folders:
            try:
                status = self.status_of(folder)
            except NotFound:
                continue
            found[folder] = FolderStatus(uidvalidity=status[b"UIDVALIDITY"], exists=status[b"MESSAGES"],
                                         uidnext=status[b"UIDNEXT"], highestmodseq=status[b"HIGHESTMODSEQ"])
        return found

    def status_of(self, folder: str) -> dict[bytes, int]:
        self._log("STATUS", folder)
        box = self._box(folder)
        return {b"MESSAGES": len(box.messages), b"UIDNEXT": box.uidnext, b"UIDVALIDITY": box.uidvalidity,
                b"HIGHESTMODSEQ": box.modseq}

    def append(self, folder: str, literal: Literal, flags: Any, when: dt.datetime | None) -> tuple[int, int] | None:
        """As pool.Session.append: fail_next or fail_before["APPEND"] fail it
        before it is sent whole (nothing stored); fail_after["APPEND"] stores it and then loses the
        reply (raise WriteUncertain there); unstored_after["APPEND"] loses the
        reply without storing it (yet: see store_later)."""
        self._log("APPEND", folder, tuple(flags), when)
        if "APPEND" in self.server.fail_before:
            self.broken = True
            raise self.server.fail_before.pop("APPEND")
        chunks = list(literal.chunks())
        self.server.append_chunks.append(len(chunks))
        message = b"".join(chunks)
        assert len(message) == literal.size
        if "APPEND" in self.server.unstored_after:
            self.broken = True
            self.server.stored_later.append((folder, message, tuple(flags)))
            raise self.server.unstored_after.pop("APPEND")
        kw = {"internaldate": when} if when else {}
        uid = self.server.add(folder, message, tuple(flags), **kw)
        if "APPEND" in self.server.fail_after:
            self.broken = True
            raise self.server.fail_after.pop("APPEND")
        return self.server.mailboxes[folder].uidvalidity, uid

    def search_uids(self, criteria: list[str]) -> list[int]:
        if self.server.before_search is not None:
            self.server.before_search(self.selected)
        self._log("UID SEARCH", " ".join(criteria))
        self.server.searches += 1
        if self.server.store_on_search is not None and self.server.searches >= self.server.store_on_search:
            while self.server.stored_later:  # the slow server finally stores what it was sent
                folder, message, flags = self.server.stored_later.pop(0)
                self.server.add(folder, message, flags)
        box = self._box()
        return sorted(uid for uid in box.messages if _matches_all(list(criteria), box, uid))

    def search_matching(self, keys: Any, charset: str | None = None) -> list[int]:
        """As pool.Session.search_matching: the keys imapfs.query makes, matched as Dovecot does
        (case-insensitive substrings; TEXT over the whole message)."""
        self._log("UID SEARCH", charset, tuple(keys))
        self.server.searches += 1
        if any(not str(k).isascii() for k in keys) and (charset or "").upper() != "UTF-8":
            raise ProtocolError("NO [BADCHARSET (UTF-8)] non-ASCII search needs CHARSET UTF-8")
        box = self._box()
        return sorted(uid for uid in box.messages if _matches_all(list(keys), box, uid))

    def fetch_in(self, folder: str, uids: list[int], items: list[str], *, literal_limit: int | None = None
                 ) -> tuple[FolderStatus | None, dict[int, dict[bytes, Any]]]:
        """As pool.Session.fetch_in (which pipelines the two): EXAMINE, then UID FETCH."""
        try:
            status = self.select(folder, readonly=True)
        except NotFound:
            return None, {}
        return status, self.fetch(uids, items, literal_limit=literal_limit)

    def fetch_each_folder(self, folders: list[str], items: list[str], uid_set: str = "1:*", *,
                          literal_limit: int | None = None
                          ) -> list[tuple[FolderStatus | None, dict[int, dict[bytes, Any]] | None]]:
        """As pool.Session.fetch_each_folder (which pipelines them): EXAMINE and UID FETCH 1:* each."""
        answers: list[tuple[FolderStatus | None, dict[int, dict[bytes, Any]] | None]] = []
        for folder in folders:
            try:
                status = self.select(folder, readonly=True)
            except NotFound:
                answers.append((None, None))
                continue
            answers.append((status, self.fetch(uid_set, items, literal_limit=literal_limit)))
        return answers

    def search_each(self, folders: list[str], keys: Any, charset: str | None = None,
                    items: list[str] | None = None, *, fetch_in: Any = None,
                    literal_limit: int | None = None) -> list[Searched]:
        """As pool.Session.search_each (which pipelines these): per folder EXAMINE,
        UID SEARCH, and with items a fetch of what was found."""
        results = []
        for folder in folders:
            try:
                status = self.select(folder, readonly=True)
            except NotFound:
                results.append(Searched(folder, None, [], None, None))
                continue
            try:
                uids = self.search_matching(keys, charset)
            except ProtocolError as exc:
                results.append(Searched(folder, status, [], None, str(exc)))
                continue
            fetch = items is not None and uids and (fetch_in is None or folder in fetch_in)
            metadata = self.fetch(uids, items) if fetch else None
            results.append(Searched(folder, status, uids, metadata, None))
        return results

    def copy(self, uids: list[int], target: str) -> None:
        self._log("UID COPY", list(uids), target)
        box = self._box()
        for uid in uids:
            msg = box.messages[uid]
            self.server.add(target, msg.raw, tuple(msg.flags), internaldate=msg.internaldate)

    def move(self, uids: list[int], target: str) -> None:
        if not self.has("MOVE"):
            raise NotSupported("MOVE")
        self._log("UID MOVE", list(uids), target)
        box = self._box()
        for uid in uids:
            msg = box.drop(uid)
            self.server.add(target, msg.raw, tuple(msg.flags), internaldate=msg.internaldate)

    def set_flags(self, uids: list[int], flags: Any) -> None:
        self._log("UID STORE FLAGS", list(uids), tuple(flags))
        box = self._box()
        box.modseq += 1
        for uid in uids:
            box.messages[uid].flags = set(flags)
            box.messages[uid].modseq = box.modseq

    def add_flags(self, uids: list[int], flags: Any) -> None:
        self._log("UID STORE +FLAGS", list(uids), tuple(flags))
        box = self._box()
        box.modseq += 1
        for uid in uids:
            box.messages[uid].flags |= set(flags)
            box.messages[uid].modseq = box.modseq

    def remove_flags(self, uids: list[int], flags: Any) -> None:
        self._log("UID STORE -FLAGS", list(uids), tuple(flags))
        box = self._box()
        for uid in uids:
            box.messages[uid].flags -= set(flags)

    def expunge(self) -> None:
        self._log("EXPUNGE")
        box = self._box()
        for uid in [u for u, m in box.messages.items() if "\\Deleted" in m.flags]:
            box.drop(uid)

    def namespace(self) -> Namespaces:
        return self.server.namespaces  # Session asks once and keeps it: no command here

    def uid_expunge(self, uids: list[int]) -> None:
        self._log("UID EXPUNGE", list(uids))
        box = self._box()
        for uid in uids:
            if "\\Deleted" in box.messages.get(uid, FakeMessage(b"")).flags:
                box.drop(uid)

    def create_folder(self, folder: str) -> None:
        self._log("CREATE", folder)
        prefixes = [p for p, _ in self.server.namespaces.all()]
        if "" not in prefixes and not any(folder.startswith(p) for p in prefixes) and folder != "INBOX":
            raise ProtocolError("[CANNOT] Client tried to access nonexistent namespace.")
        self.server.create(folder)

    def delete_folder(self, folder: str) -> None:
        self._log("DELETE", folder)
        self._box(folder)
        del self.server.mailboxes[folder]

    def rename_folder(self, old: str, new: str) -> None:
        self._log("RENAME", old, new)
        if new in self.server.mailboxes:
            raise AlreadyExists(new)
        for name in sorted(self.server.mailboxes):
            if name == old or name.startswith(old + self.server.delimiter):
                self.server.mailboxes[new + name[len(old):]] = self.server.mailboxes.pop(name)

    def unselect(self) -> None:
        self.selected = None
        self.status = None

    def logout(self) -> None:
        pass


def _matches_all(keys: list[str], box: FakeMailbox, uid: int) -> bool:
    """Every search key in keys matches the message (IMAP's implicit AND)."""
    keys = list(keys)
    result = True
    while keys:
        result = _match_one(keys, box, uid) and result
    return result


_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


def _imap_date(text: str) -> dt.date:
    day, month, year = text.split("-")
    return dt.date(int(year), _MONTHS.index(month.lower()) + 1, int(day))


def _match_one(keys: list[str], box: FakeMailbox, uid: int) -> bool:
    """Consume one search key (with its arguments) from keys; whether it matches."""
    msg = box.messages[uid]
    key = keys.pop(0).upper()
    parsed = email.message_from_bytes(msg.raw, policy=email.policy.default)
    flags = {f.upper() for f in msg.flags}

    def header(name: str) -> str:
        return " ".join(str(v) for v in parsed.get_all(name, [])).lower()

    def body() -> str:
        part = parsed.get_body(("plain", "html"))
        return (part.get_content() if part is not None else "").lower()

    if key == "ALL":
        return True
    if key == "NOT":
        return not _match_one(keys, box, uid)
    if key == "OR":
        first = _match_one(keys, box, uid)
        second = _match_one(keys, box, uid)
        return first or second
    if key == "UID":
        return uid in _parse_uid_set(keys.pop(0), sorted(box.messages))
    if key in ("LARGER", "SMALLER"):
        limit = int(keys.pop(0))
        return len(msg.raw) > limit if key == "LARGER" else len(msg.raw) < limit
    if key in ("FROM", "TO", "CC", "BCC", "SUBJECT"):
        return keys.pop(0).lower() in header(key)
    if key == "HEADER":
        name, value = keys.pop(0), keys.pop(0)
        return name in parsed and value.lower() in header(name)
    if key == "BODY":
        return keys.pop(0).lower() in body()
    if key == "TEXT":
        value = keys.pop(0).lower()
        return value in body() or any(value in str(v).lower() for v in parsed.values())
    if key in ("SINCE", "BEFORE", "ON"):
        day, when = _imap_date(keys.pop(0)), msg.internaldate.date()
        return {"SINCE": when >= day, "BEFORE": when < day, "ON": when == day}[key]
    states = {"SEEN": "\\SEEN", "FLAGGED": "\\FLAGGED", "ANSWERED": "\\ANSWERED", "DRAFT": "\\DRAFT",
              "DELETED": "\\DELETED"}
    if key in states:
        return states[key] in flags
    if key.startswith("UN") and key[2:] in states:
        return states[key[2:]] not in flags
    if key == "X-GM-RAW":  # no Gmail here: its syntax read as one TEXT term
        value = keys.pop(0).lower()
        return value in body() or any(value in str(v).lower() for v in parsed.values())
    raise NotImplementedError(key)


def _header_lines(header: bytes) -> list[bytes]:
    """Split a header block into whole fields (a field keeps its folded lines)."""
    fields: list[bytes] = []
    for line in header.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + b"\r\n"
        else:
            fields.append(line + b"\r\n")
    return fields


def FakePool(server: FakeServer, **options) -> ConnectionPool:
    """The real ConnectionPool (its retry rules are under test too) lending FakeSessions."""
    options.setdefault("retry_for", 0.5)
    account = Account(user="alice", host="fake.invalid", port=993, implicit_tls=True)
    return ConnectionPool(account, "pw", Options(**options), connector=lambda *_: server.session())
