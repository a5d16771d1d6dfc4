"""Servers that differ from Dovecot's defaults, each started by the tests on
loopback with TLS, mounted through the real CLI, every outcome checked from
a second IMAP connection.

- GNU Mailutils imap4d: no MOVE, no UIDPLUS. mv between folders and rm work
  by UID COPY and a plain EXPUNGE only while no other message of the folder
  is \\Deleted; with one, imapfs refuses (EPERM) and expunges nothing.
- A Dovecot whose personal namespace is "INBOX." (as Courier, and Cyrus with
  Debian's defaults): a folder made at the top level is refused with EACCES
  and a log line naming what works, instead of EIO; made inside INBOX/, it
  is created under the prefix.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

import pytest

from tests.integration.helpers import eml_files, message, sh
from tests.support.dovecot import Dovecot
from tests.support.imap4d import Imap4d


@pytest.fixture(scope="module")
def imap4d(dovecot: Dovecot) -> Iterator[Imap4d]:
    """One imap4d for this module, with a certificate of the Dovecot's test CA."""
    server = Imap4d(tls_dir=dovecot.tls_dir)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def imap4d_client(imap4d: Imap4d) -> Iterator:
    client = imap4d.client()
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.logout()


def _folder(client, request: pytest.FixtureRequest, stem: str) -> str:
    name = f"{stem}-{abs(hash(request.node.name)) % 10**8}"
    client.create_folder(name)
    return name


def _bodies(client, folder: str) -> dict[int, tuple[bytes, set[bytes]]]:
    """UID -> (body, flags) as a second connection sees them."""
    client.select_folder(folder, readonly=True)
    uids = client.search("ALL")
    if not uids:
        return {}
    data = client.fetch(uids, ["FLAGS", "BODY.PEEK[]"])
    return {uid: (d[b"BODY[]"], set(d[b"FLAGS"]) - {b"\\Recent"}) for uid, d in data.items()}


def _mount_imap4d(mount, imap4d: Imap4d):
    return mount(url=imap4d.url, password=imap4d.password)


def test_imap4d_offers_neither_move_nor_uidplus(imap4d_client):
    """What the rest of this module relies on: otherwise the fallback is not what is tested."""
    capabilities = {c.upper() for c in imap4d_client.capabilities()}
    assert b"MOVE" not in capabilities and b"UIDPLUS" not in capabilities


def test_imap4d_mv_between_folders(imap4d, imap4d_client, mount, request):
    source, target = _folder(imap4d_client, request, "src"), _folder(imap4d_client, request, "dst")
    raw, kept = message("moved by mv"), message("stays")
    imap4d_client.append(source, raw)
    imap4d_client.append(source, kept)
    m = _mount_imap4d(mount, imap4d)
    [moving] = [p for p in eml_files(m.path / source) if "moved" in p.name]
    sh("mv", moving, m.path / target)
    assert [body for body, _ in _bodies(imap4d_client, source).values()] == [kept]
    assert [body for body, _ in _bodies(imap4d_client, target).values()] == [raw]
    assert "moved UID" in m.log()


def _settle_uids(client, folder: str) -> None:
    client.select_folder(folder, readonly=False)
    client.unselect_folder()


def test_imap4d_rm_goes_to_trash_then_rm_in_trash_expunges(imap4d, imap4d_client, mount, request):
    folder = _folder(imap4d_client, request, "rm")
    raw = message("removed by rm")
    imap4d_client.append(folder, raw)
    # imap4d 3.15 gives a message a new UID at its folder's first read-write
    # SELECT, with the same UIDVALIDITY (a server bug: RFC 3501 2.3.1.1).
    # imapfs then refuses the write (ENOENT) rather than act on a guess; a
    # client that selected the folder before makes the UIDs stable.
    _settle_uids(imap4d_client, folder)
    m = _mount_imap4d(mount, imap4d)
    [path] = eml_files(m.path / folder)
    sh("rm", path)
    assert _bodies(imap4d_client, folder) == {}
    _settle_uids(imap4d_client, "Trash")
    trash = {uid: body for uid, (body, _) in _bodies(imap4d_client, "Trash").items()}
    assert raw in trash.values()
    [in_trash] = [p for p in eml_files(m.path / "Trash") if "removed" in p.name]
    sh("rm", in_trash)
    assert raw not in [body for body, _ in _bodies(imap4d_client, "Trash").values()]


def test_imap4d_refuses_when_another_message_is_deleted(imap4d, imap4d_client, mount, request):
    folder, target = _folder(imap4d_client, request, "busy"), _folder(imap4d_client, request, "busy-dst")
    raw, other = message("wants to move"), message("marked elsewhere")
    imap4d_client.append(folder, raw)
    imap4d_client.append(folder, other)
    m = _mount_imap4d(mount, imap4d)
    # Another client marks a message \Deleted and leaves it for its own EXPUNGE.
    imap4d_client.select_folder(folder)
    [other_uid] = [uid for uid, (body, _) in _bodies(imap4d_client, folder).items() if body == other]
    imap4d_client.select_folder(folder)
    imap4d_client.add_flags([other_uid], [b"\\Deleted"])
    # imap4d keeps a session's flag changes to itself until it leaves the
    # folder (and its own EXPUNGE sees only what its SEARCH sees): UNSELECT
    # makes the mark visible to imapfs's connection, as a client that set it
    # and went away would.
    imap4d_client.unselect_folder()
    [path] = [p for p in eml_files(m.path / folder) if "wants" in p.name]
    for command in (["mv", path, m.path / target], ["rm", path]):
        done = sh(*command, check=False)
        assert done.returncode != 0 and b"Operation not permitted" in done.stderr, done.stderr
    after = _bodies(imap4d_client, folder)
    assert sorted(body for body, _ in after.values()) == sorted([raw, other])  # nothing expunged
    assert b"\\Deleted" in after[other_uid][1]
    assert all(b"\\Deleted" not in flags for body, flags in after.values() if body == raw)
    assert _bodies(imap4d_client, target) == {}  # refused before the COPY: not in both
    assert raw not in [body for body, _ in _bodies(imap4d_client, "Trash").values()]
    assert "other message(s) marked \\Deleted" in m.log()


@pytest.fixture(scope="module")
def prefixed_dovecot() -> Iterator[Dovecot]:
    """A Dovecot keeping every folder under "INBOX." with "." between levels."""
    server = Dovecot(namespace_prefix="INBOX.", separator=".")
    server.start()
    try:
        yield server
    finally:
        server.close()


def test_mkdir_at_the_top_of_a_prefixed_namespace_is_refused_clearly(prefixed_dovecot, mount):
    m = mount(url=prefixed_dovecot.url, ca_file=prefixed_dovecot.ca_file)
    assert "Trash" in os.listdir(m.path / "INBOX")  # INBOX.Trash shows where the server lists it
    with pytest.raises(OSError) as refused:
        os.mkdir(m.path / "NewFolder")
    assert refused.value.errno == errno.EACCES
    assert "'INBOX.NewFolder'" in m.log() and "NAMESPACE" in m.log()
    assert not (m.path / "NewFolder").exists()
    with prefixed_dovecot.client() as client:
        assert not client.folder_exists("NewFolder") and not client.folder_exists("INBOX.NewFolder")


def test_mkdir_inside_inbox_of_a_prefixed_namespace_creates_under_the_prefix(prefixed_dovecot, mount):
    m = mount(url=prefixed_dovecot.url, ca_file=prefixed_dovecot.ca_file)
    os.mkdir(m.path / "INBOX" / "Projects")
    assert (m.path / "INBOX" / "Projects").is_dir()
    with prefixed_dovecot.client() as client:
        assert client.folder_exists("INBOX.Projects")
    sh("cp", "/dev/null", m.path / "INBOX" / "Projects" / "empty.eml", check=False)  # an empty file files nothing
    raw = message("filed under the prefix")
    (m.path / "INBOX" / "Projects" / "new.eml").write_bytes(raw)
    with prefixed_dovecot.client() as client:
        client.select_folder("INBOX.Projects", readonly=True)
        bodies = [d[b"BODY[]"] for d in client.fetch(client.search("ALL"), ["BODY.PEEK[]"]).values()]
    assert bodies == [raw]
