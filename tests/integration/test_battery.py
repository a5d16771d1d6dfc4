"""One battery of checks, run against every test server that is not the
default Dovecot: each started by the tests on loopback with TLS (a
certificate of the Dovecot's test CA, the mount's default ca_file), mounted
through the real CLI, driven with real programs, and every outcome checked
from a second IMAP connection (``server.client()``).

The servers (``SERVERS``; one more is one entry, a factory taking the shared
tls_dir):

- ``imap4d``: GNU Mailutils imap4d, no MOVE, no UIDPLUS, "/" between levels.
- ``cyrus-dot``: Cyrus 3.6 with Debian's defaults: every personal folder
  under "INBOX.", "." between levels (no "/" inside a name), the top level
  its shared namespace; no Trash until imapfs makes one.
- ``cyrus-slash``: Cyrus 3.6 with upstream's defaults: "/" between levels,
  personal folders beside INBOX (altnamespace), other users' and shared
  namespaces under prefixes of their own.
- ``courier``: Courier-IMAP 5: personal folders under "INBOX.", no UNSELECT,
  no Trash until imapfs makes one.

What differs between servers is read from the server, not from a table:
where the user's folders go (the personal NAMESPACE prefix, "INBOX." on
cyrus-dot) and the separator. Server-specific checks stay in
test_servers.py.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import imapclient
import pytest

from tests.integration.helpers import eml_files, message, server_messages, sh, wait_for
from tests.support.corpus import bad_input_message, mime_messages
from tests.support.courier import Courier
from tests.support.cyrus import Cyrus
from tests.support.dovecot import Dovecot
from tests.support.imap4d import Imap4d


class Server(Protocol):
    url: str
    password: str

    def start(self) -> None: ...
    def close(self) -> None: ...
    def client(self, timeout: float = 30.0) -> imapclient.IMAPClient: ...
    def log_text(self) -> str: ...


#: param name -> a server to start, given the Dovecot's tls_dir (so its CA verifies this one too).
SERVERS: dict[str, Callable[[Path], Server]] = {
    "imap4d": lambda tls_dir: Imap4d(tls_dir=tls_dir),
    "cyrus-dot": lambda tls_dir: Cyrus(tls_dir=tls_dir, separator="."),
    "cyrus-slash": lambda tls_dir: Cyrus(tls_dir=tls_dir, separator="/", altnamespace=True),
    "courier": lambda tls_dir: Courier(tls_dir=tls_dir),
}


@dataclass
class Account:
    """A started server, and where its user's folders go (from its NAMESPACE)."""

    name: str
    server: Server
    prefix: str  # the personal namespace's prefix: "" or e.g. "INBOX."
    separator: str

    def folder(self, stem: str) -> str:
        """A new, empty folder of the user's own (under the prefix), made by the second connection."""
        name = f"{self.prefix}{stem}-{uuid.uuid4().hex[:8]}"
        with self.client() as client:
            client.create_folder(name)
        return name

    def child(self, folder: str, *levels: str) -> str:
        return self.separator.join((folder, *levels))

    def path(self, mount_point: Path, folder: str) -> Path:
        """Where the mount shows an IMAP folder (plain level names only)."""
        return mount_point.joinpath(*folder.split(self.separator))

    @contextlib.contextmanager
    def client(self) -> Iterator[imapclient.IMAPClient]:
        client = self.server.client()
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    def append(self, folder: str, raw: bytes, flags: tuple[str, ...] = ()) -> None:
        """APPEND, then the flags by STORE: imap4d 3.15 drops the flags of an APPEND.

        The read-write SELECT also settles imap4d's UIDs: it gives messages
        new ones at the first such SELECT after they came, under the same
        UIDVALIDITY (see test_servers.py); done here, before the mount lists
        them, the UIDs imapfs sees stay. Harmless on the other servers."""
        with self.client() as client:
            client.append(folder, raw)
            client.select_folder(folder)
            if flags:
                client.add_flags([max(client.search("ALL"))], flags)
            _leave(client)

    def settle(self, folder: str) -> None:
        """A read-write SELECT, for imap4d's UIDs (see append)."""
        with self.client() as client:
            client.select_folder(folder)
            _leave(client)

    def messages(self, folder: str) -> dict[int, dict]:
        with self.client() as client:
            return server_messages(client, folder)

    def bodies(self, folder: str) -> list[bytes]:
        return sorted(data["body"] for data in self.messages(folder).values())

    def folders(self) -> set[str]:
        with self.client() as client:
            return {name for _flags, _delim, name in client.list_folders()}

    def trash(self) -> str:
        """The Trash folder as imapfs finds it: \\Trash special-use, else named Trash."""
        with self.client() as client:
            listed = client.list_folders()
        for flags, _delim, name in listed:
            if b"\\Trash" in flags:
                return name
        [name] = [name for _f, _d, name in listed if name.split(self.separator)[-1].lower() == "trash"]
        return name


def _leave(client) -> None:
    """Leave the selected folder without expunging anything: UNSELECT, or
    where there is none (Courier) EXAMINE of INBOX (a CLOSE after a
    read-write SELECT would expunge what is marked \\Deleted)."""
    if client.has_capability("UNSELECT"):
        client.unselect_folder()
    else:
        client.select_folder("INBOX", readonly=True)


@pytest.fixture(scope="module", params=list(SERVERS))
def account(request: pytest.FixtureRequest, dovecot: Dovecot) -> Iterator[Account]:
    """One server per param for this module, started when the first test needing it runs."""
    server = SERVERS[request.param](dovecot.tls_dir)
    server.start()
    try:
        with server.client() as client:
            personal = client.namespace().personal or (("", "/"),)
        prefix, separator = personal[0]
        yield Account(request.param, server, prefix, separator or "/")
    finally:
        server.close()


@pytest.fixture(autouse=True)
def _server_log_on_failure(request: pytest.FixtureRequest, account: Account) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        tail = "\n".join(account.server.log_text().splitlines()[-80:])
        request.node.add_report_section("teardown", f"{account.name} log (tail)", tail)


def _mount(mount, account: Account, *options: str):
    return mount(*options, url=account.server.url, password=account.server.password)


def _uid(path: Path) -> int:
    return int(path.name.rsplit("_", 1)[1].removesuffix(".eml"))


def _munged(raw: bytes) -> bytes:
    head, sep, body = raw.partition(b"\r\n\r\n")
    return bytes(b if b < 0x80 else ord("X") for b in head) + sep + body


# ----------------------------------------------------------------- reading


def test_folder_tree_lists_nested_folders(account, mount):
    top = account.folder("tree")
    deep = account.child(top, "Été 2024", "deeper")
    with account.client() as client:
        client.create_folder(account.child(top, "Été 2024"))
        client.create_folder(deep)
        client.create_folder(account.child(top, "sibling"))
    account.append(deep, message("at the bottom"))
    m = _mount(mount, account)
    assert "INBOX" in os.listdir(m.path)
    assert sorted(os.listdir(account.path(m.path, top))) == ["sibling", "Été 2024"]
    assert os.listdir(account.path(m.path, account.child(top, "Été 2024"))) == ["deeper"]
    [path] = eml_files(account.path(m.path, deep))
    assert path.read_bytes() == message("at the bottom")
    listing = sh("ls", "-R", account.path(m.path, top)).stdout.decode()
    assert "deeper" in listing and path.name in listing


def test_a_name_holding_the_other_separator_is_one_level(account, mount):
    """On a "/" server a "." inside a name is plain; on a "." server a "/" is
    %2F, one directory. Cyrus with "." has no "/" in names ("Invalid mailbox
    name"): a mkdir of one through the mount is then refused (EACCES) with
    the server's words in the log, and nothing is made."""
    other = "/" if account.separator == "." else "."
    top = account.folder("sep")
    odd = account.child(top, f"v1{other}2")
    shown = "v1%2F2" if other == "/" else "v1.2"
    refused = None
    with account.client() as client:
        try:
            client.create_folder(odd)
        except imapclient.exceptions.IMAPClientError as exc:
            refused = str(exc).split(": ", 1)[-1]
    m = _mount(mount, account)
    base = account.path(m.path, top)
    if refused is not None:
        with pytest.raises(OSError) as error:
            os.mkdir(base / shown)
        assert error.value.errno == errno.EACCES
        assert f"refused to create folder {odd!r}" in m.log() and refused in m.log()
        assert os.listdir(base) == [] and odd not in account.folders()
        return
    assert os.listdir(base) == [shown]
    os.mkdir(base / shown / "inside")
    assert account.child(odd, "inside") in account.folders()


def test_reads_are_byte_exact_and_leave_messages_unseen(account, mount):
    folder = account.folder("read")
    corpus = [raw for _id, raw in mime_messages() if len(raw) < 1_000_000]
    corpus += [bad_input_message(i) for i in ("subject-slash", "no-subject", "empty-body", "long-body-line",
                                             "header-8bit-utf8")]
    for raw in corpus:
        account.append(folder, raw)
    stored = account.messages(folder)  # what the server keeps (Cyrus rewrites 8-bit header bytes)
    m = _mount(mount, account)
    files = eml_files(account.path(m.path, folder))
    assert sorted(map(_uid, files)) == sorted(stored)
    for path in files:
        body = stored[_uid(path)]["body"]
        assert path.stat().st_size == len(body), path.name
        assert sh("cat", path).stdout == body, path.name
    # As appended; Cyrus (munge8bit, its default) turns each 8-bit byte of a header into "X".
    assert sorted(data["body"] for data in stored.values()) in (sorted(corpus), sorted(map(_munged, corpus)))
    assert all(b"\\Seen" not in data["flags"] for data in account.messages(folder).values())


def test_flags_show_as_xattrs_and_setfattr_sets_them(account, mount):
    folder = account.folder("flags")
    with account.client() as client:
        permanent = client.select_folder(folder)[b"PERMANENTFLAGS"]
    # Keywords where the server keeps them (PERMANENTFLAGS has \*); imap4d keeps none.
    flags = ("\\Flagged", "$Label1") if b"\\*" in permanent else ("\\Flagged", "\\Draft")
    account.append(folder, message("flagged one"), flags=flags)
    m = _mount(mount, account)
    [path] = eml_files(account.path(m.path, folder))
    shown = sh("getfattr", "-n", "user.imap.flags", "--only-values", path).stdout.decode().split()
    assert set(shown) == set(flags)
    assert sh("getfattr", "-n", "user.imap.uid", "--only-values", path).stdout.decode() == str(_uid(path))
    sh("setfattr", "-n", "user.imap.flags", "-v", "\\Seen \\Answered", path)
    shown = sh("getfattr", "-n", "user.imap.flags", "--only-values", path).stdout.decode().split()
    assert set(shown) == {"\\Seen", "\\Answered"}
    # imap4d shows a session's flag changes to others only once it leaves
    # the folder: the mount's sessions log out at unmount.
    m.unmount()
    [data] = account.messages(folder).values()
    assert data["flags"] == {b"\\Seen", b"\\Answered"}


# ----------------------------------------------------------------- writing


def test_cp_of_an_eml_appends_it_exactly_once(account, mount, tmp_path):
    folder = account.folder("cp")
    raw = message("filed by cp", "kept")
    source = tmp_path / "filed.eml"
    source.write_bytes(raw)
    m = _mount(mount, account)
    sh("cp", source, account.path(m.path, folder))
    account.settle(folder)
    [(uid, data)] = account.messages(folder).items()
    assert data["body"] == raw and b"\\Seen" not in data["flags"]
    files = eml_files(account.path(m.path, folder))
    assert [_uid(p) for p in files] == [uid]
    assert [p.read_bytes() for p in files] == [raw]


def test_mv_between_folders(account, mount):
    source, target = account.folder("mv-src"), account.folder("mv-dst")
    moving, staying = message("moved by mv"), message("stays put")
    account.append(source, moving, flags=("\\Flagged",))
    account.append(source, staying)
    m = _mount(mount, account)
    [path] = [p for p in eml_files(account.path(m.path, source)) if "moved" in p.name]
    sh("mv", path, account.path(m.path, target))
    assert account.bodies(source) == [staying]
    [data] = account.messages(target).values()
    assert data["body"] == moving and b"\\Flagged" in data["flags"]
    assert [p.read_bytes() for p in eml_files(account.path(m.path, target))] == [moving]


def test_rm_goes_to_trash_and_rm_in_trash_expunges(account, mount):
    folder = account.folder("rm")
    token = uuid.uuid4().hex
    raw = message(f"removed {token}")
    account.append(folder, raw)
    m = _mount(mount, account)
    [path] = eml_files(account.path(m.path, folder))
    sh("rm", path)
    assert account.messages(folder) == {}
    trash = account.trash()  # made by imapfs if the server had none
    assert trash.startswith(account.prefix)
    account.settle(trash)
    assert raw in account.bodies(trash)
    [in_trash] = [p for p in eml_files(account.path(m.path, trash)) if token in p.name]
    assert in_trash.read_bytes() == raw
    sh("rm", in_trash)
    assert raw not in account.bodies(trash)


def test_mkdir_rmdir_and_rename_folders(account, mount):
    top = account.folder("dirs")
    m = _mount(mount, account)
    base = account.path(m.path, top)
    sh("mkdir", "-p", base / "Projekte" / "Été 2024")
    sh("mkdir", base / "日本語")
    names = account.folders()
    assert account.child(top, "Projekte", "Été 2024") in names and account.child(top, "日本語") in names
    sh("rmdir", base / "日本語")
    assert account.child(top, "日本語") not in account.folders()

    account.append(account.child(top, "Projekte", "Été 2024"), message("keep me"))
    done = sh("rmdir", base / "Projekte" / "Été 2024", check=False)
    assert done.returncode != 0 and "not empty" in done.stderr.decode()

    sh("mv", base / "Projekte", base / "Projects")
    names = account.folders()
    assert account.child(top, "Projects", "Été 2024") in names and account.child(top, "Projekte") not in names
    assert [p.read_bytes() for p in eml_files(base / "Projects" / "Été 2024")] == [message("keep me")]


def test_mkdir_at_the_top_follows_the_namespace(account, mount):
    """Where the personal namespace has a prefix, a top-level folder is
    refused with EACCES and a log line naming what works; else it is made."""
    m = _mount(mount, account)
    name = f"Top-{uuid.uuid4().hex[:8]}"
    if not account.prefix:
        os.mkdir(m.path / name)
        assert name in account.folders()
        return
    with pytest.raises(OSError) as refused:
        os.mkdir(m.path / name)
    assert refused.value.errno == errno.EACCES
    assert repr(account.prefix + name) in m.log() and "NAMESPACE" in m.log()
    assert not {name, account.prefix + name} & account.folders()
    os.mkdir(m.path / "INBOX" / name)
    assert account.prefix + name in account.folders()


# ----------------------------------------------------------------- freshness, read-only


def test_changes_made_elsewhere_show_after_the_listing_ttl(account, mount):
    folder = account.folder("fresh")
    account.append(folder, message("already here"))
    m = _mount(mount, account, "listing_ttl=1,folders_ttl=1,poll_interval=1")
    path = account.path(m.path, folder)
    assert len(eml_files(path)) == 1
    account.append(folder, message("new arrival"))
    assert wait_for(lambda: len(eml_files(path)) == 2, timeout=10)
    born = account.child(folder, "born-elsewhere")
    with account.client() as client:
        client.create_folder(born)
    assert wait_for(lambda: account.path(m.path, born).is_dir(), timeout=10)


def test_read_only_mount_refuses_writes(account, mount, tmp_path):
    folder, other = account.folder("ro"), account.folder("ro-other")
    raw = message("keep me")
    account.append(folder, raw)
    m = _mount(mount, account, "ro")
    base = account.path(m.path, folder)
    [existing] = eml_files(base)
    outside = tmp_path / "x.eml"
    outside.write_bytes(message("new"))
    for command in (["cp", outside, base / "x.eml"], ["rm", existing], ["mv", existing, account.path(m.path, other)],
                    ["mkdir", base / "sub"], ["rmdir", base], ["touch", existing],
                    ["setfattr", "-n", "user.imap.flags", "-v", "\\Seen", existing]):
        done = sh(*command, check=False)
        assert done.returncode != 0 and "Read-only file system" in done.stderr.decode(), (command, done.stderr)
    [data] = account.messages(folder).values()
    assert data["body"] == raw and data["flags"] == set()
    assert account.messages(other) == {}
    assert account.child(folder, "sub") not in account.folders()


# ----------------------------------------------------------------- searching


def test_search_finds_what_the_servers_own_uid_search_finds(account, mount):
    """.search/ in two folders at once, whatever the server offers (imap4d and
    Courier: no SEARCHRES, no LIST-STATUS; the pipelined EXAMINE + SEARCH and
    the fetch of the matches' metadata must work there too)."""
    top = account.folder("search")
    folders = [account.child(top, "a"), account.child(top, "b")]
    with account.client() as client:
        for folder in folders:
            client.create_folder(folder)
    for index, folder in enumerate(folders):
        for number in range(5):
            body = "needle in the hay" if (number + index) % 2 == 0 else "only hay"
            account.append(folder, message(f"searched {number}", body))
    m = _mount(mount, account)
    expected = {}
    with account.client() as client:
        for folder in folders:
            client.select_folder(folder, readonly=True)
            expected[folder] = sorted(client.search(["TEXT", "needle"]))
    result = m.path / ".search" / f"needle in:{top}"
    for folder in folders:
        shown = account.path(result, folder)
        assert sorted(_uid(p) for p in eml_files(shown)) == expected[folder], folder
        for path in eml_files(shown):  # the real messages, byte for byte
            assert b"needle" in path.read_bytes()
