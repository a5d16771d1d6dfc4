"""Hostile, broken or vanishing servers and folders: the mount stays up.

Where Dovecot will not misbehave by itself, a TLS proxy (tests/support/proxy.py)
in front of it rewrites what it says.
"""

from __future__ import annotations

import errno
import os
import re
import time
import uuid
from pathlib import Path

import pytest

from imapfs.config import Options, parse_url
from imapfs.errors import NotFound
from imapfs.pool import connect
from tests.integration.helpers import eml_files, message, server_messages, sh, wait_for
from tests.support.proxy import ImapProxy


@pytest.fixture
def session(dovecot):
    opened = connect(parse_url(dovecot.url), dovecot.password, Options(ca_file=str(dovecot.ca_file)))
    yield opened
    opened.logout()


def test_after_a_select_of_a_deleted_folder_the_session_reads_elsewhere(dovecot, fresh_folder, session):
    uid = dovecot.append(fresh_folder, message("still here"))
    doomed = fresh_folder + "-doomed"
    dovecot.create_folder(doomed)
    status = session.ensure_selected(fresh_folder)
    dovecot.delete_folder(doomed)
    with pytest.raises(NotFound):
        session.select(doomed)
    # Dovecot deselected fresh_folder before it failed the SELECT: a UID
    # FETCH now, without selecting again, is "illegal in state AUTH".
    assert session.ensure_selected(fresh_folder).uidvalidity == status.uidvalidity
    assert session.fetch([uid], ["BODY.PEEK[]"])[uid][b"BODY[]"].startswith(b"From:")
    assert not session.broken


def timed_read(path) -> tuple[float, int]:
    """(seconds, errno or 0) of one `cat` of path."""
    started = time.monotonic()
    done = sh("cat", path, check=False, timeout=90)
    elapsed = time.monotonic() - started
    error = 0 if done.returncode == 0 else (errno.EIO if b"Input/output error" in done.stderr else -1)
    return elapsed, error


def test_with_the_server_down_a_read_fails_within_the_promised_time(own_dovecot, mount):
    # The README promises EIO within retry_for (20 s by default) with the
    # server down; timeouts and retries together once took 36 s. Default
    # timeout and retry_for; listing_ttl=1 only so that the listing is stale,
    # as it would be a while after browsing, without waiting 10 s for it.
    own_dovecot.create_folder("box")
    for i in range(3):
        own_dovecot.append("box", message(f"unread {i}", "body " * 50))
    m = mount("listing_ttl=1", url=own_dovecot.url, ca_file=own_dovecot.ca_file)
    files = eml_files(m.path / "box")
    own_dovecot.stop()
    try:
        time.sleep(1.5)
        elapsed, error = timed_read(files[0])
        assert error == errno.EIO
        assert elapsed <= 30, f"the first read with the server down took {elapsed:.1f} s"
        # Once one operation has used its budget, the pool knows the server
        # is down: the next fails at once instead of waiting as long again.
        elapsed, error = timed_read(files[1])
        assert error == errno.EIO
        assert elapsed < 5, f"the second read with the server down took {elapsed:.1f} s"
    finally:
        own_dovecot.start()
    assert wait_for(lambda: timed_read(files[2])[1] == 0, timeout=30)


@pytest.fixture
def proxy_for(dovecot):
    """proxy_for(ProxyClass, ...) -> a running proxy in front of the session Dovecot."""
    started: list[ImapProxy] = []

    def start(kind: type[ImapProxy], **options) -> ImapProxy:
        proxy = kind(dovecot.imaps_port, dovecot.tls_dir, dovecot.ca_file, **options)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.close()


class PartialWithLength(ImapProxy):
    """Answers BODY.PEEK[]<0.131072> as BODY[]<0.n> (a Gmail-like test server did), or as `name`."""

    def __init__(self, *args, name: bytes | None = None) -> None:
        super().__init__(*args)
        self.name = name

    def from_server(self, conn, line, literal):
        def rename(match):
            return match.expand(self.name or rb"BODY[]<\1.\2> {\2}")
        yield re.sub(rb"BODY\[\]<(\d+)> \{(\d+)\}", rename, line)
        if literal is not None:
            yield literal


def large_message(subject: str) -> bytes:
    body = "".join(f"line {i:07d} of a message over a megabyte\r\n" for i in range(70_000))
    return message(subject, body)


def test_a_partial_fetch_answered_with_its_length_reads_exactly(dovecot, imap, fresh_folder, mount, proxy_for):
    raw = large_message("big, answered oddly")
    dovecot.append(fresh_folder, raw)
    stored = next(iter(server_messages(imap, fresh_folder).values()))["body"]
    proxy = proxy_for(PartialWithLength)
    m = mount(url=proxy.url(dovecot.user))
    path = eml_files(m.path / fresh_folder)[0]
    assert sh("head", "-c", "4096", path).stdout == stored[:4096]
    assert sh("cat", path).stdout == stored  # before: ENOENT, "the message is gone"


def test_a_partial_fetch_answered_under_another_name_is_eio_and_logged(dovecot, fresh_folder, mount, proxy_for):
    dovecot.append(fresh_folder, large_message("big, answered wrongly"))
    proxy = proxy_for(PartialWithLength, name=b"BODY[TEXT]<0> {\\2}")
    m = mount(url=proxy.url(dovecot.user))
    path = eml_files(m.path / fresh_folder)[0]
    done = sh("head", "-c", "4096", path, check=False)
    assert done.returncode != 0 and b"Input/output error" in done.stderr, done.stderr
    assert "cannot match" in m.log()


HUGE = 300 * 1024 * 1024


class HugeHeaderFields(ImapProxy):
    """Answers the header FETCH of one message with a 300 MB literal, made up in pieces."""

    def from_server(self, conn, line, literal):
        if literal is not None and b"HEADER.FIELDS" in line and b"huge-header" in literal:
            yield re.sub(rb"\{\d+\}\r\n\Z", b"{%d}\r\n" % HUGE, line)
            piece = b"Subject: " + b"X" * (1024 * 1024 - 9)
            for _ in range(HUGE // len(piece)):
                yield piece
            yield b"X" * (HUGE % len(piece))
            return
        yield line
        if literal is not None:
            yield literal


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_huge_literal_for_the_header_fields_costs_neither_memory_nor_the_listing(
        dovecot, fresh_folder, mount, proxy_for):
    dovecot.append(fresh_folder, message("huge-header"))
    dovecot.append(fresh_folder, message("an ordinary one"))
    proxy = proxy_for(HugeHeaderFields)
    m = mount(url=proxy.url(dovecot.user))
    names = sorted(p.name for p in eml_files(m.path / fresh_folder))
    peak = peak_rss_mb(m.proc.pid)
    assert peak < 150, f"imapfs peaked at {peak:.0f} MB listing a folder with a 300 MB header literal"
    # The one message lists without its subject; the rest as always; both read.
    assert len(names) == 2 and any("_no-subject_" in n for n in names) and any("ordinary" in n for n in names)
    for path in eml_files(m.path / fresh_folder):
        assert sh("cat", path).stdout.startswith(b"From:")
    assert "314572800-byte literal" in m.log()


class DropsAfterLogin(ImapProxy):
    """While `dropping`: accepts logins, then closes the connection at its next command."""

    dropping = False

    def from_client(self, conn, line):
        if self.dropping and conn.state.get("logged_in"):
            return None
        if re.match(rb"\S+ LOGIN ", line, re.IGNORECASE):
            conn.state["logged_in"] = True
        return line


def test_a_server_that_drops_every_command_after_login_fails_fast(dovecot, fresh_folder, mount, proxy_for):
    for i in range(3):
        dovecot.append(fresh_folder, message(f"dropped {i}", "body " * 40))
    proxy = proxy_for(DropsAfterLogin)
    m = mount(url=proxy.url(dovecot.user))
    files = eml_files(m.path / fresh_folder)
    proxy.dropping = True
    try:
        elapsed, error = timed_read(files[0])
        assert error == errno.EIO
        assert elapsed < 5, f"the first read took {elapsed:.1f} s (every retry pays a new login)"
        elapsed, error = timed_read(files[1])
        assert error == errno.EIO and elapsed < 2, f"the second read took {elapsed:.1f} s"
    finally:
        proxy.dropping = False
    log = m.log()
    assert log.count("accepts logins but dropped") == 1, log
    assert log.count("; retry ") <= 4, log
    assert wait_for(lambda: timed_read(files[2])[1] == 0, timeout=20)


class RenamesFolders(ImapProxy):
    """Shows real folders under names Dovecot refuses to create: LIST and
    STATUS answers carry the odd name, commands naming it reach the real one."""

    def __init__(self, *args, names: dict[bytes, bytes]) -> None:
        super().__init__(*args)
        self.to_odd = names  # real wire name -> odd wire name

    def from_server(self, conn, line, literal):
        if re.match(rb"\* (LIST|LSUB|STATUS) ", line):
            for real, odd in self.to_odd.items():
                found = re.search(rb'( |")' + re.escape(real) + rb'("?)( \(|\r\n)', line)
                if found:
                    head, tail = line[:found.start(1)], line[found.end(2):]
                    if all(0x20 <= b < 0x7F and b not in b'"\\' for b in odd):
                        line = head + b' "' + odd + b'"' + tail
                    else:  # as a literal, which is how a server sends 8-bit names
                        yield head + b" {%d}\r\n" % len(odd) + odd
                        line = tail
        yield line
        if literal is not None:
            yield literal

    def from_client(self, conn, line):
        for real, odd in self.to_odd.items():
            line = line.replace(b'"' + odd + b'"', b'"' + real + b'"')
        return line


# odd wire name -> where it must show (Dovecot refuses to create all of these)
ODD_NAMES = {
    b"nul&AAA-x": "nul%00x",  # decodes to NUL
    b"ctl&AAE-x": "ctl%01x",  # a control character
    b"x&AC8-y": "x%26AC8-y",  # "/" encoded where it must not be: not valid modified UTF-7
    b"bad&Zz-name": "bad%26Zz-name",  # invalid base64
    b"a//b": "a/%/b",  # an empty level
    b"trailing/": "trailing/%",
}


def test_folders_with_hostile_names_show_escaped_and_the_rest_works(own_dovecot, mount):
    # Dovecot accepts these four as they are...
    with own_dovecot.client() as client:
        for wire in (b"del&AH8-", b"c1&AIU-", b"%", b"%2F"):
            client._imap._simple_command("CREATE", b'"' + wire + b'"')
    real_names = {}
    for number, odd in enumerate([*ODD_NAMES, "café".encode()]):
        real = f"backing-{number}"
        own_dovecot.create_folder(real)
        own_dovecot.append(real, message(f"in backing {number}"))
        real_names[real.encode()] = odd
    for wire in ("del\x7f", "c1\x85", "%", "%2F"):
        own_dovecot.append(wire, message(f"in {wire!r}"))
    own_dovecot.append("INBOX", message("plain"))
    # ...and a proxy shows the others, which it refuses.
    proxy = RenamesFolders(own_dovecot.imaps_port, own_dovecot.tls_dir, own_dovecot.ca_file, names=real_names)
    try:
        m = mount("folders_ttl=0", url=proxy.url(own_dovecot.user), ca_file=own_dovecot.ca_file)
        shown = {**{odd: path for odd, path in ODD_NAMES.items()},
                 b"del&AH8-": "del%7F", b"c1&AIU-": "c1%85", b"%": "%25", b"%2F": "%252F"}
        for _ in range(3):  # the folder list is fetched again each time (folders_ttl=0)
            root = set(os.listdir(m.path))
        assert {"INBOX", "nul%00x", "ctl%01x", "x%26AC8-y", "bad%26Zz-name", "a", "trailing", "del%7F", "c1%85",
                "%25", "%252F"} <= root
        for wire, path in shown.items():
            files = eml_files(m.path / path)
            assert len(files) == 1, (wire, path)
            assert sh("cat", files[0]).stdout.startswith(b"From:"), path
        assert sh("getfattr", "--only-values", "-n", "user.imap.folder", m.path / "bad%26Zz-name").stdout \
            == b"bad&Zz-name"
        assert eml_files(m.path / "INBOX")
        assert not any("caf" in name for name in root)
        assert m.log().count("is not shown") == 1, m.log()  # one line, however often LIST runs
    finally:
        proxy.close()


def test_mkdir_of_a_level_holding_the_delimiter_is_refused_not_split(dovecot, imap, mount):
    m = mount()
    name = f"a%2Fb-{uuid.uuid4().hex[:8]}"
    done = sh("mkdir", m.path / name, check=False)
    assert done.returncode != 0 and b"Invalid argument" in done.stderr, done.stderr
    listed = {folder for _flags, _delimiter, folder in imap.list_folders()}
    assert not any(folder.startswith("a/b-") or folder == "a" for folder in listed)
    assert "hierarchy delimiter" in m.log()
    sh("mkdir", m.path / f"ctl%7F{name[6:]}")  # an escape that names one level does create it
    assert f"ctl\x7f{name[6:]}" in {folder for _flags, _delimiter, folder in imap.list_folders()}
