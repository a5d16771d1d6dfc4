"""The test server itself: if these fail, imapfs integration failures mean nothing.

They pin down what the imapfs tests rely on: verified TLS with the test CA (and only
with it), login, APPENDUID, restart keeping UIDVALIDITY and mail, kick dropping a
connection, stop leaving no process behind, and the CLI used by scripts/demo.
"""

from __future__ import annotations

import datetime
import imaplib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import imapclient
import pytest
from imapclient.exceptions import LoginError

from tests.conftest import REPO_ROOT
from tests.support import dovecot as dovecot_module
from tests.support.corpus import demo_messages
from tests.support.dovecot import Dovecot, DovecotError

MESSAGE = b"From: a@example.org\r\nTo: alice@example.org\r\nSubject: hello\r\n\r\nHello, world.\r\n"


@pytest.fixture
def server_dir() -> Iterator[Path]:
    """A base dir for a server of the test's own, outside pytest's tmp_path (see Dovecot's docstring)."""
    path = Path(tempfile.mkdtemp(prefix="imapfs-dovecot-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _connect_refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    except ConnectionRefusedError:
        return True
    return False


def test_tls_is_verified_against_ca_file(dovecot: Dovecot) -> None:
    context = ssl.create_default_context(cafile=str(dovecot.ca_file))
    with socket.create_connection((dovecot.host, dovecot.imaps_port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=dovecot.host) as tls:
            assert tls.recv(4).startswith(b"* OK")
            names = dict(tls.getpeercert()["subjectAltName"])
    assert names["IP Address"] == "127.0.0.1"
    assert dovecot.url == f"imaps://alice@127.0.0.1:{dovecot.imaps_port}"
    assert dovecot.starttls_url == f"imap://alice@127.0.0.1:{dovecot.imap_port}"


def test_localhost_name_is_in_the_certificate(dovecot: Dovecot) -> None:
    client = imapclient.IMAPClient("localhost", port=dovecot.imaps_port, ssl_context=dovecot.ssl_context())
    client.logout()


@pytest.mark.parametrize("trust", ["other_ca_file", "system_store"])
def test_verification_fails_without_the_right_ca(dovecot: Dovecot, trust: str) -> None:
    if trust == "other_ca_file":
        context = ssl.create_default_context(cafile=str(dovecot.other_ca_file))
    else:
        context = ssl.create_default_context()
    with pytest.raises(ssl.SSLCertVerificationError):
        imapclient.IMAPClient(dovecot.host, port=dovecot.imaps_port, ssl_context=context, timeout=10)


def test_capabilities_imapfs_relies_on(dovecot: Dovecot) -> None:
    with dovecot.client() as client:
        capabilities = set(client.capabilities())
    assert {b"IDLE", b"MOVE", b"UIDPLUS", b"CONDSTORE", b"QRESYNC", b"SPECIAL-USE", b"ENABLE"} <= capabilities


def test_wrong_password_is_refused_without_slowing_later_logins(dovecot: Dovecot) -> None:
    for _attempt in range(2):
        client = imapclient.IMAPClient(dovecot.host, port=dovecot.imaps_port, ssl_context=dovecot.ssl_context())
        with pytest.raises(LoginError):
            client.login(dovecot.user, "wrong " + dovecot.password)
        client.shutdown()
    # Dovecot's anvil would delay the next logins from 127.0.0.1 by up to 15 s.
    started = time.monotonic()
    dovecot.client().logout()
    assert time.monotonic() - started < 2.0


def test_plain_port_offers_starttls_and_allows_plaintext_login(dovecot: Dovecot) -> None:
    client = imapclient.IMAPClient(dovecot.host, port=dovecot.imap_port, ssl=False, timeout=10)
    assert b"STARTTLS" in client.capabilities()
    client.starttls(dovecot.ssl_context())
    client.login(dovecot.user, dovecot.password)
    client.logout()

    plaintext = imapclient.IMAPClient(dovecot.host, port=dovecot.imap_port, ssl=False, timeout=10)
    plaintext.login(dovecot.user, dovecot.password)  # for tests of -o insecure_plaintext
    plaintext.logout()


def test_special_use_folders(imap: imapclient.IMAPClient) -> None:
    folders = {name: flags for flags, _delimiter, name in imap.list_folders()}
    assert "INBOX" in folders
    assert b"\\Trash" in folders["Trash"]
    assert imap.namespace().personal[0][1] == "/"


def test_append_returns_the_uid(dovecot: Dovecot, fresh_folder: str, imap: imapclient.IMAPClient) -> None:
    when = datetime.datetime(2024, 5, 17, 10, 30, tzinfo=datetime.timezone.utc)
    first = dovecot.append(fresh_folder, MESSAGE, flags=[imapclient.SEEN], msg_time=when)
    second = dovecot.append(fresh_folder, MESSAGE.replace(b"hello", b"again"))
    assert second > first > 0

    imap.select_folder(fresh_folder, readonly=True)
    fetched = imap.fetch([first, second], ["BODY.PEEK[]", "FLAGS", "INTERNALDATE"])
    assert fetched[first][b"BODY[]"] == MESSAGE
    assert imapclient.SEEN in fetched[first][b"FLAGS"]
    assert imapclient.SEEN not in fetched[second][b"FLAGS"]
    internal = fetched[first][b"INTERNALDATE"]
    if internal.tzinfo is None:  # imapclient normalises to naive local time by default
        internal = internal.astimezone()
    assert internal == when


def test_create_folder_with_nested_non_latin_name(dovecot: Dovecot, fresh_folder: str) -> None:
    dovecot.create_folder(f"{fresh_folder}/Données")
    dovecot.create_folder(f"{fresh_folder}/Données/Été")
    with dovecot.client() as client:
        names = {name for _flags, _delimiter, name in client.list_folders(fresh_folder + "/")}
        client.folder_encode = False  # now names come back as they went over the wire
        wire = {name for _flags, _delimiter, name in client.list_folders(fresh_folder + "/")}
    assert names >= {f"{fresh_folder}/Données", f"{fresh_folder}/Données/Été"}
    assert f"{fresh_folder}/Donn&AOk-es/&AMk-t&AOk-".encode() in wire


def test_restart_keeps_ports_uidvalidity_and_mail(dovecot: Dovecot, fresh_folder: str) -> None:
    uid = dovecot.append(fresh_folder, MESSAGE)
    with dovecot.client() as client:
        before = client.select_folder(fresh_folder)[b"UIDVALIDITY"]
    ports, pid = (dovecot.imaps_port, dovecot.imap_port), dovecot.pid

    dovecot.restart()

    assert (dovecot.imaps_port, dovecot.imap_port) == ports
    assert dovecot.pid != pid
    with dovecot.client() as client:
        assert client.select_folder(fresh_folder)[b"UIDVALIDITY"] == before
        assert client.fetch([uid], ["BODY.PEEK[]"])[uid][b"BODY[]"] == MESSAGE


def test_kick_drops_connections(dovecot: Dovecot) -> None:
    client = dovecot.client()
    client.noop()
    dovecot.kick()
    deadline = time.monotonic() + 10
    with pytest.raises((imaplib.IMAP4.abort, OSError)):  # the drop lands a moment after kick
        while time.monotonic() < deadline:
            client.noop()
            time.sleep(0.1)
    client.shutdown()
    dovecot.kick()  # nobody left to kick is not an error
    with dovecot.client() as again:
        again.noop()


def test_stop_ends_every_process_and_frees_the_ports() -> None:
    with Dovecot(user="bob", password="p@ss w0rd") as server:
        pid, base_dir = server.pid, server.base_dir
        assert pid is not None
        with server.client() as client:
            client.noop()
        # A connection still open at stop time must not keep a process alive.
        lingering = server.client()
        assert len(dovecot_module._session_members(pid)) > 3
    assert dovecot_module._session_members(pid) == []
    assert _connect_refused(server.imaps_port) and _connect_refused(server.imap_port)
    assert not base_dir.exists()
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        lingering.noop()


def test_long_base_dir_gets_a_short_socket_dir(server_dir: Path) -> None:
    deep = server_dir.joinpath(*["a-rather-long-directory-name"] * 4)
    with Dovecot(deep) as server:
        assert len(str(server.run_dir)) < 80 and not str(server.run_dir).startswith(str(deep))
        with server.client() as client:
            client.noop()
        assert dovecot_module.running_master_pid(deep) == server.pid
    assert not server.run_dir.exists()


def test_start_failure_says_why(server_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = Dovecot(server_dir, imaps_port=busy.getsockname()[1])
        try:
            with pytest.raises(DovecotError, match="Address already in use"):
                server.start()
            assert not server.running
        finally:
            server.stop()


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.support.dovecot", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _message_count(info: dict[str, object]) -> int:
    client = imapclient.IMAPClient(
        "127.0.0.1",
        port=int(str(info["imaps_port"])),
        ssl_context=ssl.create_default_context(cafile=str(info["ca_file"])),
    )
    with client:
        client.login(str(info["user"]), str(info["password"]))
        return sum(
            client.folder_status(name, [b"MESSAGES"])[b"MESSAGES"]
            for flags, _delimiter, name in client.list_folders()
            if b"\\Noselect" not in flags
        )


def test_cli_detach_seed_persist_and_stop(server_dir: Path) -> None:
    started = _cli("--dir", str(server_dir), "--seed", "demo", "--detach")
    assert started.returncode == 0, started.stderr
    info = json.loads(started.stdout)
    try:
        assert {"url", "ca_file", "password", "pid"} <= info.keys()
        assert info["url"].startswith("imaps://alice@127.0.0.1:")
        assert _message_count(info) == len(demo_messages())
        again = _cli("--dir", str(server_dir), "--detach")  # already running: same answer
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["pid"] == info["pid"]
    finally:
        stopped = _cli("--stop", "--dir", str(server_dir))
    assert json.loads(stopped.stdout)["stopped"] is True
    assert dovecot_module._session_members(info["pid"]) == []
    assert json.loads(_cli("--stop", "--dir", str(server_dir)).stdout)["stopped"] is False

    # Same dir again: same account and mail, seeded only once.
    restarted = json.loads(_cli("--dir", str(server_dir), "--seed", "demo", "--detach").stdout)
    try:
        assert (restarted["url"], restarted["password"]) == (info["url"], info["password"])
        assert _message_count(restarted) == len(demo_messages())
    finally:
        _cli("--stop", "--dir", str(server_dir))


def test_cli_foreground_stops_on_sigterm(server_dir: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.dovecot", "--dir", str(server_dir)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert _message_count(info) == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        dovecot_module.stop_dir(server_dir)  # in case the CLI failed to stop it
    assert dovecot_module._session_members(info["pid"]) == []
