"""IMAP sessions and the bounded pool that lends them out.

This is the only module that talks to imapclient/imaplib. ``Session`` wraps
one IMAPClient with the verbs the store needs and translates every library,
socket and TLS error into the imapfs tree (errors.py), once, with
``raise ... from exc``. ``ConnectionPool`` holds at most ``connections``
sessions; each is used by one thread at a time, because IMAPClient objects
are not thread safe and FUSE calls us from many threads.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import functools
import imaplib
import json
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any, NamedTuple, TypeVar

import imapclient
from imapclient import exceptions as imapexc
from imapclient.datetime_util import datetime_to_INTERNALDATE
from imapclient.imapclient import SocketTimeout, _literal, seq_to_parenstr, seq_to_parenstr_upper
from imapclient.response_parser import parse_message_list, parse_response

from imapfs import names
from imapfs.config import Account, Options
from imapfs.credentials import Credentials
from imapfs.errors import (
    AlreadyExists,
    AuthenticationError,
    CertificateError,
    ConfigError,
    ConnectError,
    ConnectionLimit,
    DroppedAfterLogin,
    ImapFSError,
    NotFound,
    NotSupported,
    ProtocolError,
    QuotaError,
    ServerUnavailable,
    WriteUncertain,
)
from imapfs.fetch_response import parse_responses
from imapfs.model import Folder, FolderStatus
from imapfs.query import Value
from imapfs.spool import Literal

log = logging.getLogger(__name__)
T = TypeVar("T")
# A pooled connection idle longer than this is probed with NOOP before a write.
IDLE_CHECK_AFTER = 20.0
# After a connection-limit refusal, the pool tries one connection more this often.
LIMIT_PROBE_INTERVAL = 60.0


# A login refused because the user has all the connections the server allows.
# Dovecot 2.3: "[LIMIT] Maximum number of connections from user+IP exceeded",
# later Dovecots "[UNAVAILABLE] Maximum number of connections ...", Gmail
# "[ALERT] Too many simultaneous connections. (Failure)"; [LIMIT] is RFC 5530's
# code for it. Matched on the server's text, whatever the exception, but only
# while connecting: [LIMIT] on other commands is about other limits.
_CONNECTION_LIMIT = re.compile(
    r"\[LIMIT\]|too many (?:simultaneous |concurrent |open |parallel )?(?:connections|sessions|logins)"
    r"|maximum (?:number of )?(?:simultaneous |concurrent )?(?:connections|sessions)"
    r"|connection limit", re.IGNORECASE)


# New connections in a row that die before answering one command: then the
# server accepts logins but drops every command, and retrying only costs time.
DROPS_BEFORE_FAILING_FAST = 3
# A literal bigger than a command's limit (fetch_each(literal_limit=...)) is
# read and dropped in pieces of this size, never held whole.
DRAIN_CHUNK = 1 << 16
# ... for at most this long; then the connection is given up instead.
DRAIN_SECONDS = 60.0


@functools.lru_cache(maxsize=4)
def make_ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """A verifying context: the system store, or only ca_file when given.

    Made once and shared by every connection: loading the CA store costs
    about as much as a TLS handshake on loopback. A ca_file that cannot be
    used is a ConfigError naming it.
    """
    try:
        context = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    except ssl.SSLError as exc:
        raise ConfigError(f"ca_file {ca_file} is not a PEM file of CA certificates "
                          f"({exc.reason or exc})") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"ca_file {ca_file} is a directory; give a PEM file of CA certificates") from exc
    except FileNotFoundError as exc:
        raise ConfigError(f"ca_file {ca_file} does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read ca_file {ca_file}: {exc.strerror or exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def translate(exc: BaseException, account: Account | None = None) -> ImapFSError:
    """Map one library exception to the imapfs error tree."""
    where = f" ({account.host}:{account.port})" if account else ""
    if isinstance(exc, ImapFSError):
        return exc
    if isinstance(exc, ssl.SSLCertVerificationError):
        return CertificateError(f"TLS certificate verification failed{where}: {exc.verify_message}")
    if isinstance(exc, ssl.CertificateError):
        return CertificateError(f"TLS certificate does not match the host{where}: {exc}")
    if isinstance(exc, imapexc.LoginError):
        return AuthenticationError(f"login refused{where}: {_server_text(exc)}")
    if isinstance(exc, imapexc.CapabilityError):
        return NotSupported(str(exc))
    if isinstance(exc, imaplib.IMAP4.abort):
        return ServerUnavailable(f"connection lost{where}: {_server_text(exc)}")
    if isinstance(exc, ssl.SSLError):
        return ServerUnavailable(f"TLS failed{where}: {exc.reason or exc}")
    if isinstance(exc, socket.gaierror):
        return ServerUnavailable(f"cannot resolve host{where}: {exc.strerror}")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return ServerUnavailable(f"server did not answer in time{where}")
    if isinstance(exc, OSError):
        return ServerUnavailable(f"cannot reach server{where}: {exc.strerror or exc}")
    if isinstance(exc, imaplib.IMAP4.error):
        text = _server_text(exc)
        upper = text.upper()
        if "[OVERQUOTA]" in upper or "QUOTA" in upper:
            return QuotaError(text)
        if "[NONEXISTENT]" in upper or "[EXPUNGEISSUED]" in upper or "DOESN'T EXIST" in upper \
                or "NO SUCH" in upper or "DELETED UNDER US" in upper:  # the last: Dovecot, folder deleted meanwhile
            return NotFound(text)
        if "[ALREADYEXISTS]" in upper or "ALREADY EXISTS" in upper:
            return AlreadyExists(text)
        return ProtocolError(text)
    return ProtocolError(f"unexpected {type(exc).__name__}: {exc}")


def _server_text(exc: BaseException) -> str:
    text = str(exc.args[0] if exc.args else exc)
    if text.startswith(("b'", 'b"')):
        text = text[2:-1]
    return text


def parse_uid_set(text: str) -> list[int]:
    """'3:5,9' -> [3, 4, 5, 9] (servers send VANISHED in this form)."""
    uids: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if ":" in part:
            low, high = sorted(int(x) for x in part.split(":", 1))
            uids.extend(range(low, high + 1))
        else:
            uids.append(int(part))
    return uids


def compact_uid_set(uids: Iterable[int]) -> str:
    """[1,2,3,7,9,10] -> '1:3,7,9:10': keeps FETCH command lines short."""
    ordered = sorted(set(uids))
    if not ordered:
        raise ValueError("empty UID set")
    ranges: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        ranges.append(f"{start}:{prev}" if prev != start else str(start))
        start = prev = uid
    ranges.append(f"{start}:{prev}" if prev != start else str(start))
    return ",".join(ranges)


class Session:
    """One logged-in IMAP connection with the verbs the store uses.

    Not thread safe: the pool hands it to one thread at a time. Any
    connection-level failure marks it ``broken`` so the pool drops it.
    """

    def __init__(self, client: Any, account: Account) -> None:
        self._client = client
        self._account = account
        self.broken = False
        self.selected: str | None = None
        self.selected_readonly = True
        self.status: FolderStatus | None = None
        self.last_used = time.monotonic()
        self.opened_at = self.last_used
        self.answered = 0  # commands that completed without a connection failure
        self.capabilities = frozenset(c.decode().upper() if isinstance(c, bytes) else c.upper()
                                      for c in client.capabilities())
        self.qresync = False  # set by connect() once ENABLE QRESYNC succeeded
        self._namespaces: Namespaces | None = None  # see namespace()
        # Literals are read through _bounded_read, so that one response cannot
        # cost more memory than the command it answers may (see fetch_each).
        self.literal_limit: int | None = None
        self.literals_dropped = 0
        imap = getattr(client, "_imap", None)
        if imap is not None:
            self._read_literal = imap.read
            imap.read = self._bounded_read

    def has(self, capability: str) -> bool:
        return capability.upper() in self.capabilities

    @contextlib.contextmanager
    def _translating(self) -> Iterator[None]:
        try:
            yield
        except ImapFSError:
            raise
        except Exception as exc:
            error = translate(exc, self._account)
            if isinstance(error, ServerUnavailable) or not isinstance(exc, imaplib.IMAP4.error) \
                    or isinstance(exc, imapexc.ProtocolError):
                # After a timeout or a response we could not parse, the
                # stream's position is unknown: a later command could read an
                # earlier answer. Such a connection is never used again.
                self.broken = True
            raise error from exc
        else:
            self.answered += 1
        finally:
            self.last_used = time.monotonic()

    def _bounded_read(self, size: int) -> bytes:
        """imaplib's read() of one literal. One larger than literal_limit
        (500 MB answering a FETCH of two header fields) is read and dropped
        in pieces, so the connection stays in step, and an empty
        DroppedLiteral stands for it."""
        limit = self.literal_limit
        if limit is None or size <= limit:
            return self._read_literal(size)
        log.warning("%s:%d sent a %d-byte literal where at most %d bytes were expected; dropped it",
                    self._account.host, self._account.port, size, limit)
        started = time.monotonic()
        left = size
        while left:
            piece = self._read_literal(min(left, DRAIN_CHUNK))
            if not piece or time.monotonic() - started > DRAIN_SECONDS:
                raise imaplib.IMAP4.abort(f"gave up reading an oversized literal ({size} bytes)")
            left -= len(piece)
        self.literals_dropped += 1
        return DroppedLiteral(size)

    @contextlib.contextmanager
    def time_limit(self, deadline: float) -> Iterator[None]:
        """No command waits for an answer past deadline (time.monotonic()),
        give or take a second: the socket timeout is shortened meanwhile."""
        sock = getattr(self._client._imap, "sock", None)
        normal = sock.gettimeout() if sock is not None else None
        left = max(1.0, deadline - time.monotonic())
        shortened = normal is not None and left < normal
        if shortened:
            sock.settimeout(left)
        try:
            yield
        finally:
            if shortened and not self.broken:
                with contextlib.suppress(OSError):
                    sock.settimeout(normal)

    @contextlib.contextmanager
    def _names_as_sent(self) -> Iterator[None]:
        """imapclient decodes and encodes folder names itself, and cannot
        take or give names that are not valid modified UTF-7 (a LIST with
        one such name fails whole). Meanwhile it passes them as they are:
        LIST names undecoded, and command arguments as _wire() made them."""
        self._client.folder_encode = False
        try:
            yield
        finally:
            self._client.folder_encode = True

    @staticmethod
    def _wire(folder: str) -> str:
        return names.encode_folder_name(folder).decode("ascii")

    # --- reading ---------------------------------------------------------
    def list_folders(self) -> list[Folder]:
        return self.list_folders_with_status()[0]

    def list_folders_with_status(self) -> tuple[list[Folder], dict[str, FolderStatus]]:
        """LIST of every folder; where the server offers LIST-STATUS (RFC
        5819), with each selectable folder's MESSAGES, UIDNEXT, UIDVALIDITY
        (and HIGHESTMODSEQ) in the same round trip: what an EXAMINE would
        tell, for all folders at once. Without it, no statuses."""
        status_lines: list[Any] = []
        with self._translating(), self._names_as_sent():
            if self.has("LIST-STATUS"):
                imap = self._client._imap
                items = ["MESSAGES", "UIDNEXT", "UIDVALIDITY"] + (["HIGHESTMODSEQ"] if self.has("CONDSTORE") else [])
                # With RETURN options a server sends only the attributes asked
                # for: the children and special-use ones a plain LIST carries
                # (\Trash names the Trash folder) must be asked for too.
                options = [option for option, capability in (("CHILDREN", "LIST-EXTENDED"),
                                                              ("SPECIAL-USE", "SPECIAL-USE")) if self.has(capability)]
                options.append(f"STATUS ({' '.join(items)})")
                imap.untagged_responses.pop("STATUS", None)
                typ, data = imap._simple_command("LIST", '""', '"*"', "RETURN", f"({' '.join(options)})")
                self._client._checkok("list", typ, data)
                status_lines = imap.untagged_responses.pop("STATUS", [])
                typ, data = imap._untagged_response(typ, data, "LIST")
                rows = self._client._proc_folder_list(data)
            else:
                rows = self._client.list_folders()
        folders = []
        for flags, delimiter, wire in rows:
            if isinstance(delimiter, bytes):
                delimiter = delimiter.decode("ascii", "replace")
            name = names.decode_folder_name(wire if isinstance(wire, bytes) else str(wire).encode())
            if name is None:
                _skipped_folder(wire if isinstance(wire, bytes) else str(wire).encode())
                continue
            flag_set = frozenset(f.decode() if isinstance(f, bytes) else str(f) for f in flags)
            folders.append(Folder(name=name, delimiter=delimiter or None, flags=flag_set))
        return folders, _statuses(status_lines)

    def select(self, folder: str, readonly: bool = True) -> FolderStatus:
        """EXAMINE (readonly) or SELECT a folder; always re-issued so EXISTS is current.

        The server deselects the current folder before it tries the new one,
        so a SELECT that fails (the folder was deleted elsewhere) leaves none
        selected (RFC 3501 6.3.1): the session must not go on believing in the
        old one, or its next UID command fails ("illegal in state AUTH").
        """
        self.selected = None
        self.status = None
        with self._translating(), self._names_as_sent():
            response = self._client.select_folder(self._wire(folder), readonly=readonly)
        self.selected = folder
        self.selected_readonly = readonly
        self.status = _folder_status(response)
        return self.status

    def ensure_selected(self, folder: str, readonly: bool = True) -> FolderStatus:
        """Select only if this session is not already in `folder` (with enough rights)."""
        if self.selected == folder and self.status is not None and (readonly or not self.selected_readonly):
            return self.status
        return self.select(folder, readonly=readonly)

    def search_all_uids(self) -> list[int]:
        with self._translating():
            return sorted(int(u) for u in self._client.search("ALL"))

    def search_uids_from(self, first_uid: int) -> list[int]:
        """UIDs >= first_uid (new mail since a known UIDNEXT), without listing the rest."""
        with self._translating():
            found = self._client.search(["UID", f"{first_uid}:*"])
        # "n:*" also matches the highest existing UID when it is below n.
        return sorted(int(u) for u in found if int(u) >= first_uid)

    def changes_since(self, uid_set: str, modseq: int) -> tuple[dict[int, tuple[Any, ...]], list[int]]:
        """Flags changed (as the server sent them) and UIDs expunged since modseq (RFC 7162 QRESYNC):
        one UID FETCH ... (CHANGEDSINCE m VANISHED), costing what changed."""
        if not self.qresync:
            raise NotSupported("QRESYNC is not enabled on this connection")
        fetched = self.fetch(uid_set, ["UID", "FLAGS"], [f"CHANGEDSINCE {modseq} VANISHED"])
        with self._translating():
            vanished_lines = self._client._imap.untagged_responses.pop("VANISHED", [])
        vanished: list[int] = []
        for line in vanished_lines:
            text = line.decode("ascii", "replace") if isinstance(line, bytes) else str(line)
            vanished.extend(parse_uid_set(text.replace("(EARLIER)", "").strip()))
        flags = {uid: tuple(data[b"FLAGS"]) for uid, data in fetched.items() if b"FLAGS" in data}
        return flags, vanished

    def fetch(self, uid_set: str | list[int], items: list[str],
              modifiers: list[str] | None = None, *, literal_limit: int | None = None
              ) -> dict[int, dict[bytes, Any]]:
        """UID FETCH; the result is keyed by UID.

        imapclient's own fetch() only accepts lists of single UIDs (it drops
        responses for anything it cannot int() from the request), which
        would make every command line as long as its UID list. So the
        command is sent through imapclient's lower layer with a compact set
        like 1:500. Untagged FETCH responses without a UID (unsolicited
        flag updates, keyed by sequence number) are dropped: attributing
        them to a UID would be a guess.
        """
        results: list[dict[int, dict[bytes, Any]]] = []
        self.fetch_each([uid_set], items, results.append, modifiers=modifiers, literal_limit=literal_limit)
        return results[0]

    def fetch_each(self, uid_sets: Iterable[str | list[int]], items: list[str],
                   handle: Callable[[dict[int, dict[bytes, Any]]], None], *,
                   modifiers: list[str] | None = None, ahead: int = 4, literal_limit: int | None = None) -> None:
        """fetch() for each UID set in turn, handing each set's result to
        handle(), with up to `ahead` commands on the wire at once.

        A listing's batches then cost one round trip in all instead of one
        each, and the server prepares the next batch while this one is
        parsed. Servers may run such commands at once and interleave their
        untagged answers (RFC 3501 5.5; Dovecot does), so answers are sorted
        out by UID: when a command completes, every answer for its UIDs has
        arrived, and answers for later sets wait for theirs. A set given as
        a string ("1:*") can only be attributed alone, so such sets are sent
        one at a time. If anything fails with commands still unanswered, the
        connection is marked broken: their answers would otherwise be read
        as the replies to later commands.

        With literal_limit, a literal in the answers longer than that is
        dropped (read, not kept; it reads as an empty DroppedLiteral and
        literals_dropped counts it), so that no response costs more memory
        than it should.
        """
        def command(uid_set: str | list[int]) -> tuple[str, list[int] | None]:
            if isinstance(uid_set, str):
                return imap._command(*args(uid_set)), None
            return imap._command(*args(compact_uid_set(uid_set))), uid_set

        def args(uid_set: str) -> list[str]:
            parts = ["UID", "FETCH", uid_set, seq_to_parenstr_upper(items)]
            if modifiers:
                parts.append(seq_to_parenstr_upper(modifiers))
            return parts

        imap = self._client._imap
        remaining = iter(uid_sets)
        sent: collections.deque[tuple[str, list[int] | None]] = collections.deque()
        arrived: dict[int, dict[bytes, Any]] = {}  # answers by UID, for sets not yet complete
        self.literal_limit = literal_limit
        try:
            while True:
                with self._translating():
                    while len(sent) < max(1, ahead) and not (sent and sent[-1][1] is None):
                        following = next(remaining, None)
                        if following is None:
                            break
                        sent.append(command(following))
                    if not sent:
                        return
                    tag, wanted = sent[0]
                    typ, data = imap._command_complete("FETCH", tag)
                    sent.popleft()
                    self._client._checkok("fetch", typ, data)
                    typ, data = imap._untagged_response(typ, data, "FETCH")
                    # One dict per response, never merged by sequence number:
                    # an EXPUNGE between pipelined commands renumbers messages.
                    parsed = parse_responses(data)
                for values in parsed:
                    if b"UID" in values:
                        arrived.setdefault(int(values[b"UID"]), {}).update(values)
                if wanted is None:
                    result, arrived = arrived, {}
                else:
                    result = {uid: arrived.pop(uid) for uid in wanted if uid in arrived}
                handle(result)
        except BaseException:
            if sent:
                self.broken = True
            raise
        finally:
            self.literal_limit = None

    def noop(self) -> None:
        with self._translating():
            self._client.noop()

    def status_of(self, folder: str) -> dict[bytes, int]:
        with self._translating():
            what = ["MESSAGES", "UIDNEXT", "UIDVALIDITY"]
            if self.has("CONDSTORE"):
                what.append("HIGHESTMODSEQ")
            with self._names_as_sent():
                return self._client.folder_status(self._wire(folder), what)

    def statuses_of(self, folders: list[str]) -> dict[str, FolderStatus]:
        """STATUS of each folder, every command sent at once (one round trip);
        a folder whose STATUS fails (deleted meanwhile) is left out."""
        if not folders:
            return {}
        imap = self._client._imap
        items = "(MESSAGES UIDNEXT UIDVALIDITY" + (" HIGHESTMODSEQ)" if self.has("CONDSTORE") else ")")
        tags, lines = [], []
        for folder in folders:
            with self._names_as_sent():
                mailbox = self._client._normalise_folder(self._wire(folder))
            tags.append(imap._new_tag())
            lines.append(tags[-1] + b" STATUS " + (mailbox if isinstance(mailbox, bytes) else mailbox.encode())
                         + b" " + items.encode("ascii"))
        answered: list[Any] = []
        with self._translating():
            self.broken = True  # until every command is answered
            for tag in tags:
                imap.tagged_commands[tag] = None
            imap.untagged_responses.pop("STATUS", None)
            imap.send(b"".join(line + b"\r\n" for line in lines))
            for tag in tags:
                typ, _text, untagged = self._answer(tag, "STATUS")
                if typ == "OK":
                    answered += untagged.get("STATUS", [])
            self.broken = False
        wanted = set(folders)
        return {name: status for name, status in _statuses(answered).items() if name in wanted}

    def search_uids(self, criteria: list[str]) -> list[int]:
        """UID SEARCH in the selected folder; criteria as imapclient takes them."""
        with self._translating():
            return sorted(int(u) for u in self._client.search(criteria))

    def search_matching(self, keys: Iterable[str], charset: str | None = None) -> list[int]:
        """UID SEARCH in the selected folder for keys from imapfs.query.

        The command is built here, not by imapclient's search(), which sends a
        string bare unless it holds a space or a quote: ``subject:{5}`` would
        then announce a literal and hang the command, ``foo(bar`` break it.
        So keywords go as atoms and every query.Value as a quoted string, or
        as a literal when it is not plain printable ASCII (UTF-8 with CHARSET).
        """
        args: list[bytes] = []
        for word in _search_words(keys, charset, literal_plus=False):
            args.append(_literal(word[1]) if word[0] == "literal" else word[1])
        with self._translating():
            found = self._client._raw_command_untagged(b"SEARCH", args)
            return sorted(int(u) for u in parse_message_list(found))

    def search_each(self, folders: list[str], keys: Iterable[str], charset: str | None = None,
                    items: list[str] | None = None, *, fetch_in: Collection[str] | None = None,
                    literal_limit: int | None = None) -> list[Searched]:
        """EXAMINE, then UID SEARCH for keys, in each folder; with items, also
        UID FETCH of those items for the messages found (in the folders of
        fetch_in only, when given).

        Every command for every folder is sent at once and the answers read
        in order, so the whole costs one round trip (two where the server
        lacks SEARCHRES and items are asked for: then the fetch of what was
        found follows). A server runs a command that needs a selected folder
        only after the EXAMINE before it (RFC 3501 5.5); with SEARCHRES
        (RFC 5182) the search saves its result and ``UID FETCH $`` fetches
        it, so the UIDs need not travel before the fetch is sent. A folder
        that cannot be examined (deleted meanwhile) answers with no status; a
        search the server refuses, with its words. Afterwards the last folder
        that was examined is the selected one.

        A value that needs a literal goes as a non-synchronising one
        (LITERAL+); without LITERAL+ such a search is sent folder by folder,
        waiting for each continuation.
        """
        keys = list(keys)
        literal_plus = self.has("LITERAL+")
        words = _search_words(keys, charset, literal_plus=literal_plus)
        if not literal_plus and any(kind == "literal" for kind, _ in words):
            return [self._search_one(folder, keys, charset, items if fetch_in is None or folder in fetch_in else None,
                                     literal_limit) for folder in folders]
        save = items is not None and self.has("SEARCHRES") and self.has("ESEARCH")
        criteria = b" ".join(word for _, word in words)
        search = b"UID SEARCH " + (b"RETURN (SAVE ALL) " if save else b"") + criteria
        fetch = b"UID FETCH $ " + seq_to_parenstr_upper(items).encode("ascii") if save and items else None

        def commands(folder: str) -> list[bytes]:
            return [search, fetch] if fetch and (fetch_in is None or folder in fetch_in) else [search]

        answers = self._each_examined(folders, commands, literal_limit)
        results = []
        for folder, (status, replies) in zip(folders, answers, strict=True):
            if status is None:
                results.append(Searched(folder, None, [], None, None))
                continue
            (typ, text, untagged), *fetched = replies
            if typ != "OK":
                results.append(Searched(folder, status, [], None, text or typ))
                continue
            uids = _esearch_uids(untagged.get("ESEARCH", [])) if save else \
                sorted(int(u) for u in parse_message_list(untagged.get("SEARCH", [])))
            metadata = _fetched_by_uid(fetched[0][2]) if fetched and fetched[0][0] == "OK" else None
            results.append(Searched(folder, status, uids, metadata, None))
        if items is not None and not save:
            wanted = [r for r in results if r.uids and (fetch_in is None or r.folder in fetch_in)]
            if wanted:
                uid_sets = {r.folder: compact_uid_set(r.uids) for r in wanted}
                item_list = seq_to_parenstr_upper(items).encode("ascii")
                fetched = self._each_examined(
                    [r.folder for r in wanted],
                    lambda folder: [b"UID FETCH " + uid_sets[folder].encode("ascii") + b" " + item_list],
                    literal_limit)
                metadata = {r.folder: _fetched_by_uid(replies[0][2]) if status is not None and replies[0][0] == "OK"
                            else None for r, (status, replies) in zip(wanted, fetched, strict=True)}
                results = [r._replace(metadata=metadata[r.folder]) if r.folder in metadata else r for r in results]
        return results

    def fetch_in(self, folder: str, uids: list[int], items: list[str], *, literal_limit: int | None = None
                 ) -> tuple[FolderStatus | None, dict[int, dict[bytes, Any]]]:
        """EXAMINE folder and UID FETCH items of uids there, both sent at once
        (one round trip); (None, {}) when the folder cannot be examined."""
        ((status, fetched),) = self.fetch_each_folder([folder], items, compact_uid_set(uids),
                                                      literal_limit=literal_limit)
        if status is None:
            return None, {}
        if fetched is None:
            raise ProtocolError(f"UID FETCH in {folder!r} was refused")
        return status, fetched

    def fetch_each_folder(self, folders: list[str], items: list[str], uid_set: str = "1:*", *,
                          literal_limit: int | None = None
                          ) -> list[tuple[FolderStatus | None, dict[int, dict[bytes, Any]] | None]]:
        """EXAMINE and UID FETCH items of uid_set (every message by default)
        in each folder, all sent at once (one round trip): per folder its
        status (None: it could not be examined) and the items by UID (None:
        the fetch was refused, as some servers refuse 1:* in an empty folder)."""
        command = b"UID FETCH " + uid_set.encode("ascii") + b" " + seq_to_parenstr_upper(items).encode("ascii")
        answers = self._each_examined(folders, lambda _folder: [command], literal_limit)
        return [(status, _fetched_by_uid(replies[0][2]) if status is not None and replies[0][0] == "OK" else None)
                for status, replies in answers]

    def _search_one(self, folder: str, keys: list[str], charset: str | None, items: list[str] | None,
                    literal_limit: int | None) -> Searched:
        """search_each's way for one folder when the search must wait for continuations."""
        try:
            status = self.select(folder, readonly=True)
        except (NotFound, ProtocolError):
            return Searched(folder, None, [], None, None)
        try:
            uids = self.search_matching(keys, charset)
        except ProtocolError as exc:
            return Searched(folder, status, [], None, str(exc))
        metadata = self.fetch(uids, items, literal_limit=literal_limit) if items is not None and uids else None
        return Searched(folder, status, uids, metadata, None)

    def _each_examined(self, folders: list[str], commands: Callable[[str], list[bytes]],
                       literal_limit: int | None) -> list[tuple[FolderStatus | None, list[tuple[str, str, dict]]]]:
        """EXAMINE each folder followed by its commands (UID commands, as
        bytes without a tag), all sent at once; per folder its status (None:
        it could not be examined) and, per command, (result, the server's
        text, the untagged answers it brought by type)."""
        imap = self._client._imap
        sent: list[tuple[str, bytes, list[bytes]]] = []
        lines: list[bytes] = []
        for folder in folders:
            with self._names_as_sent():
                mailbox = self._client._normalise_folder(self._wire(folder))
            examine = imap._new_tag()
            lines.append(examine + b" EXAMINE " + (mailbox if isinstance(mailbox, bytes) else mailbox.encode()))
            following = []
            for command in commands(folder):
                following.append(imap._new_tag())
                lines.append(following[-1] + b" " + command)
            sent.append((folder, examine, following))
        self.selected = None
        self.status = None
        answers: list[tuple[FolderStatus | None, list[tuple[str, str, dict]]]] = []
        last: FolderStatus | None = None
        self.literal_limit = literal_limit
        try:
            with self._translating():
                self.broken = True  # until every command is answered
                for _, examine, following in sent:
                    imap.tagged_commands[examine] = None
                    for tag in following:
                        imap.tagged_commands[tag] = None
                imap.untagged_responses = {}
                imap.send(b"".join(line + b"\r\n" for line in lines))
                for folder, examine, following in sent:
                    typ, _text, untagged = self._answer(examine, "EXAMINE")
                    status = self._status_from(untagged) if typ == "OK" else None
                    if status is None:
                        log.info("could not examine %r: %s", folder, _text)
                    last = status
                    answers.append((status, [self._answer(tag, "UID") for tag in following]))
                self.broken = False
        finally:
            self.literal_limit = None
        imap.state = "SELECTED" if last is not None else "AUTH"
        imap.is_readonly = True
        if last is not None:
            self.selected, self.selected_readonly, self.status = folders[-1], True, last
        return answers

    def _answer(self, tag: bytes, name: str) -> tuple[str, str, dict]:
        """Wait for tag's completion; its result, text and the untagged answers it brought."""
        imap = self._client._imap
        try:
            typ, data = imap._command_complete(name, tag)
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as exc:  # BAD: read whole, the stream is still in step
            typ, data = "BAD", [str(exc).encode()]
        untagged, imap.untagged_responses = imap.untagged_responses, {}
        text = b" ".join(d for d in data if isinstance(d, bytes)).decode("utf-8", "replace")
        return typ, text, untagged

    def _status_from(self, untagged: dict) -> FolderStatus:
        return _folder_status(self._client._process_select_response(untagged))

    # --- writing ---------------------------------------------------------
    def append(self, folder: str, literal: Literal, flags: Iterable[str],
               when: dt.datetime | None) -> tuple[int, int] | None:
        """APPEND (see _append); once more, after leaving the folder, if the
        server refused it while this session had that folder EXAMINEd:
        Courier refuses an APPEND there ("Current box is selected
        READ-ONLY."). A refusal stored nothing, so sending it again is safe,
        and other servers never pay for the unselect."""
        try:
            return self._append(folder, literal, flags, when)
        except QuotaError:
            raise
        except ProtocolError:
            if self.selected != folder or not self.selected_readonly:
                raise
            log.debug("APPEND to %r refused while it was EXAMINEd; leaving it and sending it again", folder)
        self.unselect()
        return self._append(folder, literal, flags, when)

    def _append(self, folder: str, literal: Literal, flags: Iterable[str],
                when: dt.datetime | None) -> tuple[int, int] | None:
        """APPEND, streaming the literal chunk by chunk; returns (UIDVALIDITY, UID)
        when the server reports APPENDUID.

        imaplib's own append needs the whole message as one bytes object and
        rewrites its line endings into a second one. Here the command is
        sent by hand on imaplib's connection, so memory stays constant.

        Failures before the command's last byte was handed to the socket
        raise ServerUnavailable: the server cannot have stored the message
        (it stores nothing until the command is complete), so repeating it
        is safe. A failure after that raises WriteUncertain.
        """
        imap = self._client._imap
        with self._names_as_sent():
            mailbox = self._client._normalise_folder(self._wire(folder))
        words = [mailbox if isinstance(mailbox, bytes) else mailbox.encode("ascii"),
                 seq_to_parenstr(list(flags)).encode("ascii")]
        if when is not None:
            words.append(b'"%s"' % datetime_to_INTERNALDATE(when).encode("ascii"))
        synchronising = not self.has("LITERAL+")
        words.append(b"{%d%s}" % (literal.size, b"" if synchronising else b"+"))
        with self._translating():
            self.broken = True  # until the command is answered, the stream's position is ours alone
            tag = imap._new_tag()
            imap.send(tag + b" APPEND " + b" ".join(words) + b"\r\n")
            refused = False
            if synchronising:
                while imap._get_response():  # None: the "+" continuation
                    if imap.tagged_commands[tag]:
                        refused = True  # answered (NO/BAD) instead of asking for the literal
                        break
            if not refused:
                previous = b""
                for chunk in literal.chunks():
                    if previous:
                        imap.send(previous)
                    previous = chunk
                # The last bytes and the CRLF that completes the command go in
                # one send: until it returns, the command is not complete.
                imap.send(previous + b"\r\n")
        try:
            with self._translating():
                typ, data = imap._command_complete("APPEND", tag)
                self.broken = False
                self._client._checkok("append", typ, data)
        except ServerUnavailable as exc:
            if refused:
                raise
            raise WriteUncertain(f"{exc} after the APPEND to {folder!r} was sent whole") from exc
        return _appenduid(data[0] if data else b"")

    def copy(self, uids: list[int], target: str) -> None:
        with self._translating(), self._names_as_sent():
            self._client.copy(uids, self._wire(target))

    def move(self, uids: list[int], target: str) -> None:
        with self._translating(), self._names_as_sent():
            self._client.move(uids, self._wire(target))

    def set_flags(self, uids: list[int], flags: Iterable[str]) -> None:
        with self._translating():
            self._client.set_flags(uids, list(flags), silent=True)

    def add_flags(self, uids: list[int], flags: Iterable[str]) -> None:
        with self._translating():
            self._client.add_flags(uids, list(flags), silent=True)

    def remove_flags(self, uids: list[int], flags: Iterable[str]) -> None:
        with self._translating():
            self._client.remove_flags(uids, list(flags), silent=True)

    def uid_expunge(self, uids: list[int]) -> None:
        with self._translating():
            self._client.uid_expunge(uids)

    def expunge(self) -> None:
        """A plain EXPUNGE: every message of the selected folder marked \\Deleted goes,
        not only ours. Only for servers without UIDPLUS, and only after the
        caller checked that nothing else is marked (MailStore._expunge_alone)."""
        with self._translating():
            self._client.expunge()

    def namespace(self) -> Namespaces:
        """The server's namespaces (RFC 2342), asked once per connection and
        kept: they do not change while a user is logged in. A server without
        NAMESPACE has one personal namespace with no prefix, by the RFC's
        own reading of such servers."""
        if self._namespaces is None:
            if not self.has("NAMESPACE"):
                self._namespaces = Namespaces(personal=(("", None),), other=(), shared=())
            else:
                with self._translating(), self._names_as_sent():
                    found = self._client.namespace()
                self._namespaces = Namespaces(*(tuple(_namespace_entry(p, d) for p, d in (kind or ()))
                                                for kind in found))
        return self._namespaces

    def create_folder(self, folder: str) -> None:
        with self._translating(), self._names_as_sent():
            self._client.create_folder(self._wire(folder))

    def delete_folder(self, folder: str) -> None:
        with self._translating():
            if self.selected == folder:
                self.unselect()
            with self._names_as_sent():
                self._client.delete_folder(self._wire(folder))

    def rename_folder(self, old: str, new: str) -> None:
        with self._translating():
            # Courier refuses to rename the folder the session has open, or
            # one above it ("Can't RENAME the currently-open folder"); a
            # name that merely starts alike costs one needless unselect.
            if self.selected is not None and self.selected.startswith(old):
                self.unselect()
            with self._names_as_sent():
                self._client.rename_folder(self._wire(old), self._wire(new))

    def unselect(self) -> None:
        """Leave the selected folder, expunging nothing.

        UNSELECT where the server has it. Otherwise CLOSE, which on a folder
        selected read-write expunges every message marked \\Deleted there,
        by whichever client (RFC 3501 6.4.2): so such a folder is EXAMINEd
        first (an implicit close that expunges nothing), and CLOSE then
        leaves a read-only folder (Courier has no UNSELECT)."""
        try:
            with self._translating():
                if self.has("UNSELECT"):
                    self._client.unselect_folder()
                    return
                if self.selected is not None and not self.selected_readonly:
                    try:
                        with self._names_as_sent():
                            self._client.select_folder(self._wire(self.selected), readonly=True)
                    except imaplib.IMAP4.abort:
                        raise
                    except imaplib.IMAP4.error:
                        return  # gone meanwhile: the failed EXAMINE left no folder selected (RFC 3501 6.3.1)
                self._client.close_folder()
        finally:
            self.selected = None
            self.status = None

    # --- waiting for changes (used by the watcher's own connection) ------
    def idle_start(self) -> None:
        with self._translating():
            self._client.idle()

    def idle_wait(self, timeout: float) -> list[tuple]:
        """Untagged responses received while idling, or [] after timeout seconds."""
        with self._translating():
            return self._client.idle_check(timeout=timeout)

    def idle_done(self) -> None:
        with self._translating():
            self._client.idle_done()

    def logout(self) -> None:
        with contextlib.suppress(Exception):
            self._client.logout()
        with contextlib.suppress(Exception):
            self._client.shutdown()


@dataclasses.dataclass(frozen=True)
class Namespaces:
    """A NAMESPACE answer: (prefix, delimiter) pairs of each kind, prefixes decoded
    from modified UTF-7 as folder names are (so "INBOX." compares with Folder.name)."""

    personal: tuple[tuple[str, str | None], ...]
    other: tuple[tuple[str, str | None], ...]
    shared: tuple[tuple[str, str | None], ...]

    def all(self) -> tuple[tuple[str, str | None], ...]:
        return self.personal + self.other + self.shared


def _namespace_entry(prefix: Any, delimiter: Any) -> tuple[str, str | None]:
    raw = prefix if isinstance(prefix, bytes) else str(prefix).encode()
    name = names.decode_folder_name(raw)
    if isinstance(delimiter, bytes):
        delimiter = delimiter.decode("ascii", "replace")
    return (name if name is not None else raw.decode("ascii", "replace")), (delimiter or None)


class DroppedLiteral(bytes):
    """Stands, empty, for a literal too big to keep. Its len() is the size
    the server announced, because both FETCH parsers (fetch_response's and
    imapclient's) check a literal's length against that; everything else
    sees no bytes (slicing, decoding, searching it gives b"")."""

    def __new__(cls, announced: int) -> DroppedLiteral:
        dropped = super().__new__(cls, b"")
        dropped.announced = announced
        return dropped

    def __len__(self) -> int:
        return self.announced


_skipped_lock = threading.Lock()  # guards _skipped
_skipped: set[bytes] = set()


def _skipped_folder(wire: bytes) -> None:
    """Say once per name (LIST runs every few seconds) that a folder is not shown."""
    with _skipped_lock:
        first = wire not in _skipped
        _skipped.add(wire)
    (log.warning if first else log.debug)(
        "folder %r is not shown: its name holds bytes that are neither modified UTF-7 nor printable ASCII, "
        "so no command could name it", wire)


def _appenduid(response: Any) -> tuple[int, int] | None:
    """(UIDVALIDITY, UID) from an APPENDUID response code (RFC 4315)."""
    text = response.decode("ascii", "replace") if isinstance(response, bytes) else str(response)
    marker = "[APPENDUID "
    start = text.upper().find(marker)
    if start < 0:
        return None
    fields = text[start + len(marker):].split("]")[0].split()
    if len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit():
        return int(fields[0]), int(fields[1])
    return None


class Searched(NamedTuple):
    """What search_each found in one folder."""

    folder: str
    status: FolderStatus | None  # None: the folder could not be examined (gone)
    uids: list[int]
    metadata: dict[int, dict[bytes, Any]] | None  # the items asked for, by UID; None: not fetched
    refused: str | None  # the server's words when it refused the search


def _search_words(keys: Iterable[str], charset: str | None, *, literal_plus: bool) -> list[tuple[str, bytes]]:
    """The search criteria as (kind, bytes) words: keywords as atoms, every
    query.Value quoted, or as a literal when it is not printable ASCII
    ("literal": the bare data, unless literal_plus made it a complete
    non-synchronising literal)."""
    words: list[tuple[str, bytes]] = [("atom", b"CHARSET"), ("atom", charset.encode("ascii"))] if charset else []
    for key in keys:
        if not isinstance(key, Value):
            words.append(("atom", key.encode("ascii")))
            continue
        data = key.encode("utf-8")
        if all(0x20 <= byte < 0x7F for byte in data):
            words.append(("quoted", b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'))
        elif literal_plus:
            words.append(("quoted", b"{%d+}\r\n" % len(data) + data))
        else:
            words.append(("literal", data))
    return words


def _folder_status(response: dict[bytes, Any]) -> FolderStatus:
    """What a SELECT or EXAMINE answered, as imapclient's select response has it."""
    return FolderStatus(
        uidvalidity=int(response.get(b"UIDVALIDITY", 0)),
        exists=int(response.get(b"EXISTS", 0)),
        uidnext=int(response[b"UIDNEXT"]) if b"UIDNEXT" in response else None,
        highestmodseq=int(response[b"HIGHESTMODSEQ"]) if b"HIGHESTMODSEQ" in response else None,
    )


def _statuses(lines: list[Any]) -> dict[str, FolderStatus]:
    """The untagged STATUS answers of a LIST-STATUS, by folder name. One
    that cannot be read (a name that does not decode, a count missing) is
    left out, and answers that do not parse at all give none: those
    folders are simply examined when they are used."""
    try:
        parsed = parse_response([line for line in lines if line not in (b"", None)])
    except imapexc.ProtocolError as exc:
        log.debug("ignoring STATUS answers that cannot be parsed: %s", exc)
        return {}
    statuses: dict[str, FolderStatus] = {}
    for wire, items in zip(parsed[0::2], parsed[1::2], strict=False):
        try:
            values = {bytes(items[i]).upper(): int(items[i + 1]) for i in range(0, len(items) - 1, 2)}
            name = names.decode_folder_name(wire if isinstance(wire, bytes) else str(wire).encode())
            if name is None:
                continue
            statuses[name] = FolderStatus(
                uidvalidity=values[b"UIDVALIDITY"], exists=values[b"MESSAGES"], uidnext=values[b"UIDNEXT"],
                highestmodseq=values.get(b"HIGHESTMODSEQ"))
        except (KeyError, ValueError, TypeError) as exc:
            log.debug("ignoring a STATUS answer that cannot be read (%s): %r %r", exc, wire, items)
    return statuses


def _esearch_uids(lines: list[Any]) -> list[int]:
    """UIDs of an ESEARCH answer (RFC 4731): ``(TAG "x") UID ALL 1:3,7``; none without ALL."""
    uids: list[int] = []
    for line in lines:
        text = line.decode("ascii", "replace") if isinstance(line, bytes) else str(line)
        match = re.search(r"\bALL\s+([0-9:,]+)", text, re.IGNORECASE)
        if match:
            uids.extend(parse_uid_set(match.group(1)))
    return sorted(set(uids))


def _fetched_by_uid(untagged: dict) -> dict[int, dict[bytes, Any]]:
    """The untagged FETCH answers of one command, by UID (those without a UID dropped)."""
    fetched: dict[int, dict[bytes, Any]] = {}
    for values in parse_responses(untagged.get("FETCH", [])):
        if b"UID" in values:
            fetched.setdefault(int(values[b"UID"]), {}).update(values)
    return fetched


def connect(account: Account, credentials: Credentials | str, options: Options) -> Session:
    """Open, secure and log in one connection; raise ConnectError subclasses.

    With OAuth2 credentials, a refused token is renewed (credentials.py
    says when) and the login tried once more on a new connection.
    """
    if isinstance(credentials, str):
        credentials = Credentials.password(credentials)
    secret = credentials.secret()
    try:
        return _connect_once(account, credentials, secret, options)
    except AuthenticationError as refused:
        if not credentials.oauth2:
            raise
        try:
            fresh = credentials.renew_after_refusal(secret)
        except ConfigError as exc:
            raise AuthenticationError(f"{refused}; and renewing the token failed: {exc}") from exc
        if fresh is None:
            raise
        return _connect_once(account, credentials, fresh, options)


def _connect_once(account: Account, credentials: Credentials, secret: str, options: Options) -> Session:
    context = make_ssl_context(options.ca_file)  # ConfigError for a ca_file that cannot be used
    timeout = SocketTimeout(connect=min(options.timeout, 10.0), read=options.timeout)
    client = None
    logged_in = False
    try:
        client = imapclient.IMAPClient(account.host, port=account.port, ssl=account.implicit_tls,
                                       ssl_context=context if account.implicit_tls else None,
                                       timeout=timeout)
        client.normalise_times = False
        # imapclient turns imaplib's protocol trace on (debug=5), and imaplib
        # then formats the repr of every response, bodies included, for a
        # logger that usually drops it: a third of a cold grep's CPU time.
        # (With -o debug the trace is on; it never holds a secret: imapclient
        # redacts LOGIN and AUTHENTICATE lines, and imaplib logs only the
        # size of the AUTHENTICATE responses that carry a token.)
        client._imap.debug = 5 if options.debug else 0
        if options.debug:
            # imaplib's print_log (after a lost connection) calls _mesg(text,
            # secs); imapclient's replacement takes the text alone, so each
            # such line became a "--- Logging error ---" traceback.
            trace = client._imap._mesg
            client._imap._mesg = lambda text, secs=None: trace(text)
        if not account.implicit_tls:
            if client.has_capability("STARTTLS"):
                client.starttls(context)
            elif not options.insecure_plaintext:
                what = "token" if credentials.oauth2 else "password"
                raise ConnectError(f"{account.host}:{account.port} does not offer STARTTLS; refusing to "
                                   f"send the {what} in clear (use imaps:// or -o insecure_plaintext)")
        if credentials.oauth2:
            _oauth2_login(client, account, secret)
        else:
            client.login(account.user, secret)
        logged_in = True
        session = Session(client, account)
        if session.has("QRESYNC"):
            # Lets a resync ask for expunged UIDs (VANISHED) instead of listing every UID.
            session.qresync = b"QRESYNC" in {c.upper() for c in client.enable("QRESYNC")}
        return session
    except ImapFSError:
        _close_quietly(client)
        raise
    except Exception as exc:
        _close_quietly(client)
        if isinstance(exc, imaplib.IMAP4.error) and _CONNECTION_LIMIT.search(_server_text(exc)):
            raise ConnectionLimit(f"no more connections allowed ({account.host}:{account.port}): "
                                  f"{_server_text(exc)}") from exc
        error = translate(exc, account)
        if logged_in and isinstance(error, ServerUnavailable):
            error = DroppedAfterLogin(f"{error} (right after the login was accepted)")
        raise error from exc


def _oauth2_login(client: Any, account: Account, token: str) -> None:
    """AUTHENTICATE OAUTHBEARER (RFC 7628) if the server offers it, else XOAUTH2.

    On a refused token the server sends its reason as a JSON challenge,
    which the client must answer with a dummy response (%x01 for
    OAUTHBEARER, an empty line for XOAUTH2) before the tagged NO; the
    reason's status goes into the error message. imapclient's own
    oauth*_login would send the token a second time instead.
    """
    offered = {c.decode().upper() if isinstance(c, bytes) else str(c).upper() for c in client.capabilities()}
    if "AUTH=OAUTHBEARER" in offered:
        mechanism = "OAUTHBEARER"
        user = account.user.replace("=", "=3D").replace(",", "=2C")
        first = f"n,a={user},\x01auth=Bearer {token}\x01\x01"
        dummy = "\x01"
    elif "AUTH=XOAUTH2" in offered:
        mechanism = "XOAUTH2"
        first = f"user={account.user}\x01auth=Bearer {token}\x01\x01"
        dummy = ""
    else:
        mechanisms = sorted(c[5:] for c in offered if c.startswith("AUTH=")) or ["none"]
        raise AuthenticationError(f"{account.host}:{account.port} offers neither OAUTHBEARER nor XOAUTH2 "
                                  f"(it offers {', '.join(mechanisms)}); oauth2_token_command cannot be used")
    challenges: list[bytes] = []

    def respond(challenge: bytes) -> str:
        challenges.append(challenge)
        # The first challenge is empty (client-first mechanisms); any later
        # one is the server's error report, and the token is never sent twice.
        return first if len(challenges) == 1 else dummy

    try:
        client._command_and_check("authenticate", mechanism, respond)
    except imaplib.IMAP4.error as exc:
        if isinstance(exc, imaplib.IMAP4.abort) or _CONNECTION_LIMIT.search(_server_text(exc)):
            raise
        reason = _oauth2_status(challenges[1:])
        raise AuthenticationError(
            f"login refused ({account.host}:{account.port}): the OAuth2 token from oauth2_token_command "
            f"was not accepted ({mechanism}): {_server_text(exc)}{reason}") from exc


def _oauth2_status(challenges: list[bytes]) -> str:
    """' (status: invalid_token)' from a server's RFC 7628 error challenge, or ''."""
    for challenge in challenges:
        try:
            status = json.loads(challenge.decode("utf-8", "replace")).get("status")
        except (ValueError, AttributeError):
            continue
        if status:
            return f" (status: {str(status)[:60]})"
    return ""


def _close_quietly(client: Any) -> None:
    if client is not None:
        with contextlib.suppress(Exception):
            client.shutdown()


class ServerHealth:
    """What recent operations taught the pool about the server, so that an
    operation does not spend its whole retry budget on what is known to fail.

    Two patterns make later operations try once, without retries, until a
    command is answered again: an operation used its whole budget failing
    (the server is down: every operation would wait as long again), and
    new connections keep dying before they answer a command (a server that
    accepts logins but drops every command: retries only add pauses).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the fields below
        self._gave_up = False
        self._drops = 0

    def fail_fast(self) -> bool:
        with self._lock:
            return self._gave_up or self._drops >= DROPS_BEFORE_FAILING_FAST

    def answered(self) -> None:
        with self._lock:
            was_failing = self._gave_up or self._drops >= DROPS_BEFORE_FAILING_FAST
            self._gave_up = False
            self._drops = 0
        if was_failing:
            log.info("IMAP server answers again")

    def dropped_after_login(self, exc: ImapFSError) -> bool:
        """A new connection died before its first answer; True once that makes the pattern."""
        with self._lock:
            self._drops += 1
            clear = self._drops == DROPS_BEFORE_FAILING_FAST
            pattern = self._drops >= DROPS_BEFORE_FAILING_FAST
        if clear:
            log.warning("the IMAP server accepts logins but dropped %d new connections in a row before "
                        "answering a command (%s); operations fail at once until it answers again",
                        DROPS_BEFORE_FAILING_FAST, exc)
        return pattern

    def gave_up(self) -> None:
        with self._lock:
            self._gave_up = True


class ConnectionPool:
    """At most ``options.connections`` sessions, lent one thread at a time.

    ``run(fn)`` borrows a session and calls fn(session); when the connection
    turns out dead, the session is discarded and, for idempotent work, fn is
    retried on a fresh connection with exponential backoff, a bounded number
    of times, so a dropped connection or a restarted server costs a retry,
    not an error.

    When the server refuses a login for a connection limit (other clients
    hold the rest of what it allows per user), the pool shrinks to the
    sessions it has and borrowers wait for one of those; every
    LIMIT_PROBE_INTERVAL seconds it tries one connection more, up to
    ``connections``. Only with no session at all does the refusal reach the
    borrower (as ServerUnavailable, which run() retries within retry_for).
    """

    def __init__(self, account: Account, credentials: Credentials | str, options: Options,
                 connector: Callable[[Account, Credentials, Options], Session] = connect) -> None:
        self.account = account
        self._credentials = Credentials.password(credentials) if isinstance(credentials, str) else credentials
        self._options = options
        self._connector = connector
        # Guards _idle, _established, _connecting, _limit, _probe_at, _closed and
        # _down_since; waited on for a session to come back or a slot to free.
        self._cond = threading.Condition(threading.Lock())
        self._idle: list[Session] = []
        self._established = 0  # sessions lent out or idle
        self._connecting = 0  # connections being opened now
        self._limit = options.connections  # below connections after a connection-limit refusal
        self._probe_at: float | None = None  # when to try one connection over _limit again
        self._closed = False
        self._down_since: float | None = None  # when connecting started failing
        self._health = ServerHealth()

    @property
    def server_down(self) -> bool:
        return self._down_since is not None

    @property
    def limit(self) -> int:
        """How many sessions the pool may hold now (``connections``, or fewer after a refusal)."""
        with self._cond:
            return self._limit

    def _acquire(self, deadline: float | None = None) -> Session:
        wait = max(self._options.timeout * 2, 5)
        deadline = time.monotonic() + wait if deadline is None else min(deadline, time.monotonic() + wait)
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        raise ServerUnavailable("imapfs is shutting down")
                    if self._idle:
                        return self._idle.pop()
                    now = time.monotonic()
                    self._probe_locked(now)
                    if self._established + self._connecting < self._limit:
                        self._connecting += 1
                        break
                    if now >= deadline:
                        raise ServerUnavailable("all IMAP connections are busy; gave up waiting")
                    self._cond.wait(deadline - now)
            try:
                session = self._connector(self.account, self._credentials, self._within(deadline))
            except ConnectionLimit as exc:
                with self._cond:
                    self._connecting -= 1
                    if self._established == 0:
                        raise  # nothing to wait for: run() retries with backoff
                    if self._limit > self._established:
                        log.info("the server allows no more connections (%s); making do with %d",
                                 exc, self._established)
                    self._limit = max(1, self._established)
                    self._probe_at = time.monotonic() + LIMIT_PROBE_INTERVAL
                    self._cond.notify_all()
                continue  # wait for one of the sessions already open
            except BaseException as exc:
                with self._cond:
                    self._connecting -= 1
                    if isinstance(exc, ServerUnavailable) and self._down_since is None:
                        self._down_since = time.monotonic()
                    self._cond.notify_all()
                raise
            with self._cond:
                self._connecting -= 1
                self._established += 1
                if self._down_since is not None:
                    log.info("IMAP server reachable again")
                self._down_since = None
            return session

    def _probe_locked(self, now: float) -> None:
        """After a connection-limit refusal, allow one connection more now and
        then (another client may have logged out). ``_cond`` held."""
        if self._probe_at is not None and now >= self._probe_at and self._limit < self._options.connections:
            self._limit += 1
            self._probe_at = now + LIMIT_PROBE_INTERVAL if self._limit < self._options.connections else None

    def _release(self, session: Session) -> None:
        keep = False
        with self._cond:
            if not session.broken and not self._closed:
                self._idle.append(session)
                keep = True
            else:
                self._established -= 1
            self._cond.notify()
        if not keep:
            session.logout()

    def _within(self, deadline: float | None) -> Options:
        """Options whose timeout ends no later than deadline (1 s at least)."""
        if deadline is None or deadline - time.monotonic() >= self._options.timeout:
            return self._options
        return dataclasses.replace(self._options, timeout=max(1.0, deadline - time.monotonic()))

    @contextlib.contextmanager
    def session(self, deadline: float | None = None) -> Iterator[Session]:
        session = self._acquire(deadline)
        try:
            yield session
        finally:
            self._release(session)

    def run(self, work: Callable[[Session], T], *, idempotent: bool = True, bounded: bool = True,
            check_idle: bool = False) -> T:
        """Run work(session), retrying on a fresh connection when that is safe.

        Idempotent work (LIST, SELECT, FETCH, STATUS) is retried with
        backoff after a connection failure, so a dropped connection or a
        restarted server costs a pause, not an error. Other work is retried
        only if the failure came before it was sent: a pooled connection
        that sat idle is checked with NOOP first, so a write is not lost
        into a connection that died silently, and never sent twice.

        The whole call, waits for a connection, connecting, timeouts and
        retries together, ends within ``retry_for`` seconds (give or take a
        second): each wait is cut to what is left. Once a call has used all
        of it, or new connections keep dying before their first answer
        (ServerHealth), calls make a single attempt until the server answers
        again, so callers fail fast (and may serve what is cached) instead
        of all waiting. ``bounded=False`` exempts the work itself (not the
        wait for a session) from that budget: an APPEND of 300 MB may take
        longer than retry_for and must not be cut off for it. ``check_idle``
        probes an idle pooled connection with NOOP first for idempotent work
        too: an APPEND sent with a non-synchronising literal into a silently
        dead connection would otherwise end in a timeout nobody can read.
        """
        started = time.monotonic()
        deadline = started + self._options.retry_for
        once = self._health.fail_fast()
        delay = 0.1
        attempt = 0
        while True:
            attempt += 1
            sent = False
            session: Session | None = None
            attempt_started = time.monotonic()
            try:
                with self.session(deadline) as session:
                    with session.time_limit(deadline) if bounded else contextlib.nullcontext():
                        if (not idempotent or check_idle) and time.monotonic() - session.last_used > IDLE_CHECK_AFTER:
                            session.noop()
                        sent = True
                        result = work(session)
                self._health.answered()
                return result
            except WriteUncertain:
                raise  # done or not, nobody knows: repeating it could duplicate it
            except ServerUnavailable as exc:
                new_and_silent = (session is not None and session.opened_at >= attempt_started
                                  and session.answered == 0)
                if isinstance(exc, DroppedAfterLogin) or new_and_silent:
                    once = self._health.dropped_after_login(exc) or once
                if (sent and not idempotent) or once or time.monotonic() + delay > deadline:
                    if not (sent and not idempotent):
                        self._health.gave_up()
                    raise
                if session is not None and session.opened_at < attempt_started:
                    # A pooled connection that died says little about the
                    # server now (a kick, a restart, an idle timeout): the
                    # next one, pooled or new, is tried at once.
                    log.debug("pooled IMAP connection failed (%s); retry %d at once", exc, attempt)
                    continue
                log.info("IMAP connection failed (%s); retry %d in %.1f s", exc, attempt, delay)
                time.sleep(delay)
                delay = min(delay * 2, 3.0)

    def warm_up(self, count: int) -> None:
        """Open up to count connections in the background, so the first
        listing and the first read-ahead do not each wait for TLS and login."""
        def connect_one() -> None:
            try:
                with self.session():
                    pass
            except ImapFSError as exc:
                log.debug("warm-up connection failed: %s", exc)

        for _ in range(min(count, self._options.connections)):
            threading.Thread(target=connect_one, name="imapfs-warm-up", daemon=True).start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._established -= len(idle)
            self._cond.notify_all()
        for session in idle:
            session.logout()
