"""Courier-IMAP 5 (Debian's courier-imap, unpacked by scripts/setup and run by
tests/support/courier.py on loopback with its own TLS), mounted through the
real CLI, each outcome checked from a second IMAP connection.

What sets Courier apart for imapfs: every personal folder is under the
NAMESPACE prefix "INBOX." with "." between levels, so the mount shows them
inside INBOX/ (a top-level mkdir is refused with EACCES and a log line, and
``mkdir M/INBOX/X`` makes ``INBOX.X``), and Trash is ``INBOX.Trash``; it has
UIDPLUS but no MOVE, so mv is UID COPY and UID EXPUNGE.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import imapclient
import pytest
from imapclient.exceptions import LoginError

from tests.integration.helpers import eml_files, message, server_messages, sh, wait_for
from tests.support.courier import Courier, CourierError
from tests.support.dovecot import Dovecot, _session_members

WHEN_HEADER = "Mon, 01 Jan 2018 10:00:00 +0200"


@pytest.fixture(scope="module")
def courier(dovecot: Dovecot) -> Iterator[Courier]:
    """One Courier for this module, with a certificate of the Dovecot's test CA."""
    server = Courier(tls_dir=dovecot.tls_dir)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def courier_client(courier: Courier) -> Iterator[imapclient.IMAPClient]:
    client = courier.client()
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.logout()


@pytest.fixture
def folder(courier_client) -> str:
    """A new, empty folder of this test's own, under the "INBOX." prefix: its server name."""
    name = f"INBOX.t-{uuid.uuid4().hex[:8]}"
    courier_client.create_folder(name)
    return name


def _path(m, name: str) -> Path:
    """The mount's directory for a Courier folder name (levels split at ".")."""
    return m.path.joinpath(*name.split("."))


def _mount(mount, server: Courier, *options: str):
    return mount(*options, url=server.url, password=server.password)


def _messages(client, folder: str) -> dict[int, tuple[bytes, set[bytes]]]:
    """UID -> (body, flags) as a second connection sees them."""
    return {uid: (data["body"], data["flags"]) for uid, data in server_messages(client, folder).items()}


def _append(client, folder: str, raw: bytes, flags: tuple[str, ...] = ()) -> int:
    """APPEND, and the UID Courier gave it (APPENDUID: it has UIDPLUS)."""
    response = client.append(folder, raw, flags=flags)
    text = response.decode() if isinstance(response, bytes) else str(response)
    return int(text.split("APPENDUID", 1)[1].split("]", 1)[0].split()[1])


def _names(client) -> set[str]:
    return {name for _flags, _delim, name in client.list_folders()}


# ------------------------------------------------------------------ the fixture


def test_courier_fixture_serves_verified_tls_logs_in_and_stops_every_process(dovecot):
    """What the rest of this module relies on, on a Courier of this test's own."""
    with Courier(tls_dir=dovecot.tls_dir) as server:
        assert server.url == f"imaps://alice%40example.test@127.0.0.1:{server.port}"
        # Implicit TLS with a certificate that the Dovecot's CA verifies (one ca_file for both) ...
        context = ssl.create_default_context(cafile=str(dovecot.ca_file))
        with socket.create_connection((server.host, server.port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname=server.host) as tls:
            assert b"Courier-IMAP ready" in tls.recv(300)
        # ... and no other.
        with pytest.raises(ssl.SSLCertVerificationError):
            imapclient.IMAPClient(server.host, port=server.port, timeout=10,
                                  ssl_context=ssl.create_default_context(cafile=str(dovecot.other_ca_file)))
        client = server.client()
        try:
            capabilities = {c.upper() for c in client.capabilities()}
            personal = client.namespace().personal
        finally:
            client.logout()
        # Courier's differences that this module tests: a prefixed namespace, UIDPLUS without MOVE.
        assert b"UIDPLUS" in capabilities and b"MOVE" not in capabilities
        assert [tuple(p) for p in personal] == [("INBOX.", ".")]
        with pytest.raises(LoginError):
            imapclient.IMAPClient(server.host, port=server.port, ssl_context=context, timeout=10).login(
                server.user, "wrong")
        assert f"LOGIN, user={server.user}" in server.log_text()
        # Only on loopback, and the compiled-in paths stay inside its namespace.
        assert not Path("/etc/courier").exists() and not Path("/run/courier").exists()
        master = server._proc.pid
        assert len(_session_members(master)) >= 2  # couriertcpd and authdaemond at least
        port = server.port
    assert _session_members(master) == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert not server.base_dir.exists()


def test_courier_fixture_says_what_is_missing(monkeypatch, tmp_path):
    from tests.support import courier as courier_module
    monkeypatch.setattr(courier_module, "COURIER_DIR", tmp_path / "nowhere")
    with pytest.raises(CourierError, match="scripts/setup"):
        Courier(tmp_path / "base").start()


# ------------------------------------------------------------------ reading


def test_courier_folders_are_directories_inside_inbox(courier, courier_client, folder, mount):
    courier_client.create_folder(f"{folder}.Sub")
    courier_client.create_folder(f"{folder}.Sub.Été")
    m = _mount(mount, courier)
    assert "INBOX" in os.listdir(m.path)
    assert _path(m, folder).name in sh("ls", m.path / "INBOX").stdout.decode().split()
    assert sorted(os.listdir(_path(m, folder))) == ["Sub"]
    assert os.listdir(_path(m, folder) / "Sub") == ["Été"]
    assert sh("getfattr", "-n", "user.imap.folder", "--only-values",
              _path(m, folder) / "Sub").stdout.decode() == f"{folder}.Sub"


def test_courier_reads_are_byte_exact_and_never_mark_seen(courier, courier_client, folder, mount):
    raws = [
        message("Quarterly report", "numbers"),
        message("Grüße", "Zürich, 8-bit body: äöü\r\n" + "long line " * 200),
        message("attachment", "x" * 300_000),
        b"Subject: bare LF lines\nFrom: a@example.org\n\nbody\n",
    ]
    uids = [_append(courier_client, folder, raw) for raw in raws]
    m = _mount(mount, courier)
    files = {int(p.name.rsplit("_", 1)[1].removesuffix(".eml")): p for p in eml_files(_path(m, folder))}
    stored = _messages(courier_client, folder)
    assert sorted(files) == sorted(uids)
    for uid in uids:
        body = stored[uid][0]  # what Courier serves (it may store bare LF as it got it)
        assert files[uid].stat().st_size == len(body)
        assert sh("cat", files[uid]).stdout == body
    for raw, uid in zip(raws[:3], uids[:3], strict=True):
        assert stored[uid][0] == raw
    assert all(b"\\Seen" not in flags for _, flags in _messages(courier_client, folder).values())


def test_courier_flags_show_and_setfattr_stores_them(courier, courier_client, folder, mount):
    uid = _append(courier_client, folder, message("flagged one"), flags=("\\Flagged", "$Label1"))
    m = _mount(mount, courier)
    [path] = eml_files(_path(m, folder))
    assert sh("getfattr", "-n", "user.imap.uid", "--only-values", path).stdout.decode() == str(uid)
    shown = sh("getfattr", "-n", "user.imap.flags", "--only-values", path).stdout.decode().split()
    assert set(shown) == {"\\Flagged", "$Label1"}
    sh("setfattr", "-n", "user.imap.flags", "-v", "\\Seen \\Answered", path)
    assert _messages(courier_client, folder)[uid][1] == {b"\\Seen", b"\\Answered"}
    shown = sh("getfattr", "-n", "user.imap.flags", "--only-values", path).stdout.decode().split()
    assert set(shown) == {"\\Seen", "\\Answered"}


# ------------------------------------------------------------------ writing


def test_courier_cp_in_appends_once(courier, courier_client, folder, mount, tmp_path):
    raw = message("archived", "kept", date=WHEN_HEADER)
    source = tmp_path / "archived.eml"
    source.write_bytes(raw)
    m = _mount(mount, courier)
    sh("cp", source, _path(m, folder))
    [(body, _flags)] = _messages(courier_client, folder).values()
    assert body == raw
    assert [p.read_bytes() for p in eml_files(_path(m, folder))] == [raw]
    [path] = eml_files(_path(m, folder))
    assert path.name.startswith("2018-01-01_0800_archived_")  # INTERNALDATE from the Date header


def test_courier_mv_between_folders_copies_then_expunges_that_uid(courier, courier_client, folder, mount):
    target = f"{folder}-dst"
    courier_client.create_folder(target)
    raw, kept = message("moved by mv"), message("stays")
    _append(courier_client, folder, raw, flags=("\\Flagged",))
    bystander = _append(courier_client, folder, kept)
    courier_client.select_folder(folder)
    courier_client.add_flags([bystander], [b"\\Deleted"])  # marked by another client, not expunged
    m = _mount(mount, courier)
    [moving] = [p for p in eml_files(_path(m, folder)) if "moved" in p.name]
    sh("mv", moving, _path(m, target))
    after = _messages(courier_client, folder)
    assert list(after) == [bystander] and after[bystander] == (kept, {b"\\Deleted"})  # UID EXPUNGE only
    [(body, flags)] = _messages(courier_client, target).values()
    assert body == raw and b"\\Flagged" in flags
    assert [p.read_bytes() for p in eml_files(_path(m, target))] == [raw]


def test_courier_rm_goes_to_inbox_trash_then_rm_there_expunges(courier, courier_client, folder, mount):
    if "INBOX.Trash" not in _names(courier_client):
        courier_client.create_folder("INBOX.Trash")
    token = uuid.uuid4().hex
    raw = message(f"unwanted {token}")
    _append(courier_client, folder, raw)
    m = _mount(mount, courier)
    [path] = eml_files(_path(m, folder))
    sh("rm", path)
    assert _messages(courier_client, folder) == {}
    assert raw in [body for body, _ in _messages(courier_client, "INBOX.Trash").values()]
    [in_trash] = [p for p in eml_files(m.path / "INBOX" / "Trash") if token in p.name]
    assert in_trash.read_bytes() == raw
    sh("rm", in_trash)
    assert raw not in [body for body, _ in _messages(courier_client, "INBOX.Trash").values()]


def test_courier_rm_without_a_trash_folder_makes_inbox_trash(dovecot, mount):
    """A new Courier account has no Trash: the first rm makes one where the
    server allows it (INBOX.Trash), not a top-level Trash it would refuse."""
    with Courier(tls_dir=dovecot.tls_dir) as server:
        client = server.client()
        try:
            name = "INBOX.fresh"
            client.create_folder(name)
            raw = message("first ever rm")
            _append(client, name, raw)
            assert not any(n.lower().endswith("trash") for n in _names(client))
            m = _mount(mount, server)
            sh("rm", eml_files(_path(m, name))[0])
            assert _messages(client, name) == {}
            assert "INBOX.Trash" in _names(client)
            assert [body for body, _ in _messages(client, "INBOX.Trash").values()] == [raw]
            assert [p.read_bytes() for p in eml_files(m.path / "INBOX" / "Trash")] == [raw]
        finally:
            client.logout()


def test_courier_mkdir_at_the_top_is_refused_clearly(courier, courier_client, mount):
    m = _mount(mount, courier)
    with pytest.raises(OSError) as refused:
        os.mkdir(m.path / "NewFolder")
    assert refused.value.errno == errno.EACCES
    assert "'INBOX.NewFolder'" in m.log() and "NAMESPACE" in m.log()
    assert not (m.path / "NewFolder").exists()
    assert not {"NewFolder", "INBOX.NewFolder"} & _names(courier_client)


def test_courier_mkdir_rmdir_and_rename_inside_inbox(courier, courier_client, folder, mount):
    m = _mount(mount, courier)
    base = _path(m, folder)
    sh("mkdir", "-p", base / "Projekte" / "Été 2024")
    sh("mkdir", base / "日本語")
    names = _names(courier_client)
    assert f"{folder}.Projekte.Été 2024" in names and f"{folder}.日本語" in names
    sh("rmdir", base / "日本語")
    assert f"{folder}.日本語" not in _names(courier_client)

    _append(courier_client, f"{folder}.Projekte.Été 2024", message("keep me"))
    done = sh("rmdir", base / "Projekte" / "Été 2024", check=False)
    assert done.returncode != 0 and "not empty" in done.stderr.decode()
    assert f"{folder}.Projekte.Été 2024" in _names(courier_client)

    sh("mv", base / "Projekte", base / "Projects")
    names = _names(courier_client)
    assert f"{folder}.Projects.Été 2024" in names and f"{folder}.Projekte" not in names
    sh("mkdir", base / "Archive")
    sh("mv", base / "Projects" / "Été 2024", base / "Archive" / "Summer")
    assert f"{folder}.Archive.Summer" in _names(courier_client)
    assert [p.read_bytes() for p in eml_files(base / "Archive" / "Summer")] == [message("keep me")]
    assert [body for body, _ in _messages(courier_client, f"{folder}.Archive.Summer").values()] == [
        message("keep me")]


def test_courier_rename_of_a_folder_just_written_expunges_nothing(courier, courier_client, folder, mount):
    """Courier refuses to RENAME the folder a session has open, and has no
    UNSELECT: leaving a folder selected read-write with CLOSE would expunge
    every message another client marked \\Deleted there. imapfs leaves it
    by EXAMINE first, so CLOSE expunges nothing."""
    flagged, bystander = message("flagged by setfattr"), message("marked deleted elsewhere")
    _append(courier_client, folder, flagged)
    bystander_uid = _append(courier_client, folder, bystander)
    # Marked by another client (a mail program that leaves the EXPUNGE for later).
    courier_client.select_folder(folder)
    courier_client.add_flags([bystander_uid], [b"\\Deleted"])
    courier_client.select_folder("INBOX", readonly=True)  # leaves it without expunging
    m = _mount(mount, courier, "connections=1")  # the rename runs on the session that set the flag
    [path] = [p for p in eml_files(_path(m, folder)) if "setfattr" in p.name]
    sh("setfattr", "-n", "user.imap.flags", "-v", "\\Flagged", path)  # SELECT, read-write
    renamed = f"{folder}-renamed"
    sh("mv", _path(m, folder), _path(m, renamed))
    # By content: RFC 3501 lets a renamed folder's UIDs start over, and
    # Courier at times numbers them again in another order (seen in one full
    # run: the two UIDs swapped, both messages there with their flags).
    kept = {body: flags for body, flags in _messages(courier_client, renamed).values()}
    assert kept == {flagged: {b"\\Flagged"}, bystander: {b"\\Deleted"}}


# ------------------------------------------------------------------ freshness, read-only


def test_courier_changes_made_elsewhere_show_within_the_listing_ttl(courier, courier_client, folder, mount):
    """A server difference imapfs does not cover: with Debian's settings
    (IMAP_ENHANCEDIDLE=0, IMAP_IDLE_TIMEOUT=60) Courier's IDLE looks at the
    folder only once a minute, so the folder in use does not show another
    client's change "within a second or two" as on Dovecot, but at the next
    listing once ``listing_ttl`` (10 s by default, 2 s here) has passed."""
    first = _append(courier_client, folder, message("already here"))
    m = _mount(mount, courier, "listing_ttl=2", "poll_interval=2")
    directory = _path(m, folder)

    def names() -> set[str]:
        try:
            return {p.name for p in eml_files(directory)}
        except OSError:
            return set()

    assert len(names()) == 1
    uid = _append(courier_client, folder, message("new arrival"))
    assert wait_for(lambda: any(n.endswith(f"_{uid}.eml") for n in names()), timeout=10)

    courier_client.select_folder(folder)
    courier_client.add_flags([first], [b"\\Flagged"])
    path = next(p for p in eml_files(directory) if p.name.endswith(f"_{first}.eml"))

    def flagged() -> bool:
        done = sh("getfattr", "-n", "user.imap.flags", "--only-values", path, check=False)
        return "\\Flagged" in done.stdout.decode()
    assert wait_for(flagged, timeout=10)

    courier_client.delete_messages([first])
    courier_client.uid_expunge([first])
    assert wait_for(lambda: not any(n.endswith(f"_{first}.eml") for n in names()), timeout=10)

    courier_client.create_folder(f"{folder}.born-elsewhere")
    assert wait_for(lambda: (directory / "born-elsewhere").is_dir(), timeout=15)


def test_courier_read_only_mount_refuses_every_write(courier, courier_client, folder, mount, tmp_path):
    raw = message("keep me")
    _append(courier_client, folder, raw)
    m = _mount(mount, courier, "ro")
    directory = _path(m, folder)
    [existing] = eml_files(directory)
    assert existing.read_bytes() == raw
    outside = tmp_path / "x.eml"
    outside.write_bytes(message("new"))
    for command in (["cp", outside, directory / "x.eml"], ["rm", existing], ["mv", existing, m.path / "INBOX"],
                    ["mkdir", directory / "sub"], ["rmdir", directory], ["touch", existing],
                    ["setfattr", "-n", "user.imap.flags", "-v", "\\Seen", existing]):
        done = sh(*command, check=False)
        assert done.returncode != 0 and "Read-only file system" in done.stderr.decode(), (command, done.stderr)
    assert [body for body, _ in _messages(courier_client, folder).values()] == [raw]
    assert f"{folder}.sub" not in _names(courier_client)
