"""Signing in with OAuth2 against Dovecot's oauth2 passdb, whose tokens a
local introspection endpoint (tests/support/oauth2.py) declares active or
not; and ca_file values that cannot be used.

The token command is `cat FILE`: a test changes what it prints by writing
FILE, as a helper such as oama or pizauth prints a new token once it has
one.
"""

from __future__ import annotations

import base64
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import imapclient
import pytest

from tests.integration.helpers import eml_files, message, sh, wait_for
from tests.support.dovecot import Dovecot
from tests.support.oauth2 import IntrospectionServer


@pytest.fixture(scope="module")
def idp() -> Iterator[IntrospectionServer]:
    with IntrospectionServer() as server:
        yield server


@pytest.fixture(scope="module")
def oauth_dovecot(idp: IntrospectionServer) -> Iterator[Dovecot]:
    """A Dovecot that takes OAUTHBEARER and XOAUTH2 tokens (and the password, for arranging mail)."""
    with Dovecot(oauth2_introspection_url=idp.url) as server:
        yield server


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("")
    return path


def new_token() -> str:
    # Looks like a real access token: long, URL-safe characters, dots.
    return f"ya29.{uuid.uuid4().hex}{uuid.uuid4().hex}.test"


def oauth_mount(mount, server: Dovecot, token_file: Path, *options: str, expect_fail: bool = False):
    return mount(f"oauth2_token_command=cat {token_file}", *options, url=server.url, ca_file=server.ca_file,
                 password=None, expect_fail=expect_fail)


def read_new_message(server: Dovecot, folder: str, mount_path: Path, subject: str) -> tuple[bytes, bytes]:
    """Append a message the mount has never seen and read it through the mount: (read, expected)."""
    raw = message(subject, f"body of {subject}")
    uid = server.append(folder, raw)

    def found() -> Path | None:
        return next((p for p in eml_files(mount_path / folder) if p.name.endswith(f"_{uid}.eml")), None)

    path = wait_for(found, timeout=15)
    assert path, f"UID {uid} never showed in the mount"
    return sh("cat", path).stdout, raw


def forms_of(token: str, user: str) -> list[str]:
    """The token as it could leak: plain, and base64 of what each SASL mechanism sends."""
    payloads = [f"n,a={user},\x01auth=Bearer {token}\x01\x01", f"user={user}\x01auth=Bearer {token}\x01\x01",
                f"Bearer {token}", token]
    forms = [token]
    for payload in payloads:
        data = payload.encode()
        for shift in range(3):  # the token's base64 differs with its offset inside the payload
            forms.append(base64.b64encode(data[shift:]).decode().rstrip("=")[8:-8])
    return [form for form in forms if len(form) > 12]


def assert_no_token_in(text: str, token: str, user: str = "alice") -> None:
    for form in forms_of(token, user):
        assert form not in text, f"the token (as {form[:10]}...) is in the text"
    # Any base64-looking word that decodes to something holding the token.
    for word in re.findall(r"[A-Za-z0-9+/=]{24,}", text):
        for shift in range(4):
            chunk = word[shift:]
            chunk = chunk[: len(chunk) - len(chunk) % 4]
            try:
                decoded = base64.b64decode(chunk, validate=False)
            except ValueError:
                continue
            assert token.encode()[:20] not in decoded, f"base64 in the text decodes to the token: {word[:16]}..."


def argv_of_every_process() -> str:
    texts = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                texts.append(Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return "\n".join(texts)


def test_oauthbearer_mount_reads_and_never_shows_the_token(oauth_dovecot, idp, token_file, mount):
    token = new_token()
    idp.issue(token, oauth_dovecot.user)
    token_file.write_text(token + "\n")
    folder = f"oauth-{uuid.uuid4().hex[:8]}"
    oauth_dovecot.create_folder(folder)

    m = oauth_mount(mount, oauth_dovecot, token_file, "debug")
    got, expected = read_new_message(oauth_dovecot, folder, m.path, "first")
    assert got == expected
    assert token not in argv_of_every_process()
    logins_before = idp.times_seen(token)
    # Dropped connections log in again with the same (still valid) token.
    oauth_dovecot.kick()
    got, expected = read_new_message(oauth_dovecot, folder, m.path, "after a kick")
    assert got == expected
    assert idp.times_seen(token) > logins_before
    m.unmount()

    log = m.log()
    assert "AUTHENTICATE" in log, "the debug trace was not on, so this test proves nothing"
    assert_no_token_in(log, token)
    assert re.search(r"Login: user=<alice>, method=OAUTHBEARER", oauth_dovecot.log_text())


def test_a_token_expired_mid_mount_is_renewed_and_reads_go_on(oauth_dovecot, idp, token_file, mount):
    first, second = new_token(), new_token()
    idp.issue(first, oauth_dovecot.user)
    token_file.write_text(first + "\n")
    folder = f"oauth-{uuid.uuid4().hex[:8]}"
    oauth_dovecot.create_folder(folder)
    m = oauth_mount(mount, oauth_dovecot, token_file)
    got, expected = read_new_message(oauth_dovecot, folder, m.path, "with the first token")
    assert got == expected

    # The first token's hour is over; the helper has a new one.
    token_file.write_text(second + "\n")
    idp.issue(second, oauth_dovecot.user)
    idp.expire(first)
    oauth_dovecot.kick()  # every connection must log in again

    for number in range(3):
        got, expected = read_new_message(oauth_dovecot, folder, m.path, f"with the second token {number}")
        assert got == expected
    assert idp.times_seen(second) >= 1
    assert "oauth2_token_command printed a new one" in m.log()
    m.unmount()
    assert_no_token_in(m.log(), first)
    assert_no_token_in(m.log(), second)


def test_a_token_older_than_its_lifetime_is_renewed_before_it_is_refused(oauth_dovecot, idp, token_file, mount):
    first, second = new_token(), new_token()
    idp.issue(first, oauth_dovecot.user)
    token_file.write_text(first + "\n")
    folder = f"oauth-{uuid.uuid4().hex[:8]}"
    oauth_dovecot.create_folder(folder)
    m = oauth_mount(mount, oauth_dovecot, token_file, "oauth2_token_lifetime=2")
    got, expected = read_new_message(oauth_dovecot, folder, m.path, "young token")
    assert got == expected

    token_file.write_text(second + "\n")
    idp.issue(second, oauth_dovecot.user)  # the first one stays valid: only its age can make imapfs renew
    wait_for(lambda: False, timeout=2.5)
    first_uses = idp.times_seen(first)
    oauth_dovecot.kick()
    got, expected = read_new_message(oauth_dovecot, folder, m.path, "renewed by age")
    assert got == expected
    assert idp.times_seen(second) >= 1
    assert idp.times_seen(first) == first_uses, "a login used the token older than its lifetime"
    assert "older than oauth2_token_lifetime" in m.log()


def test_a_refused_token_at_mount_is_one_line_and_no_mount(oauth_dovecot, idp, token_file, mount):
    token = new_token()  # never issued: the server refuses it
    token_file.write_text(token + "\n")
    failed = oauth_mount(mount, oauth_dovecot, token_file, expect_fail=True)
    assert failed.returncode == 1
    lines = [line for line in failed.output.splitlines() if line.strip()]
    assert len(lines) == 1, failed.output
    assert lines[0].startswith("imapfs: error: login refused")
    assert "OAuth2 token" in lines[0] and "[AUTHENTICATIONFAILED]" in lines[0] and "invalid_token" in lines[0]
    assert_no_token_in(failed.output, token)
    # It was run again after the refusal (in case the helper had a newer token), once.
    assert idp.times_seen(token) == 1


@pytest.mark.parametrize("command, expected", [
    ("echo 'pizauth: no token for alice' >&2; exit 3", "oauth2_token_command failed with exit status 3: "
                                                      "pizauth: no token for alice"),
    ("true", "oauth2_token_command printed no token"),
])
def test_a_failing_token_command_is_one_line(oauth_dovecot, mount, command, expected):
    failed = mount(f"oauth2_token_command={command.replace(',', chr(92) + ',')}", url=oauth_dovecot.url,
                   ca_file=oauth_dovecot.ca_file, password=None, expect_fail=True)
    assert failed.returncode != 0
    lines = [line for line in failed.output.splitlines() if line.strip()]
    assert lines == [f"imapfs: error: {expected}"], failed.output


def test_xoauth2_when_the_server_offers_no_oauthbearer(idp, token_file, mount):
    token = new_token()
    idp.issue(token, "alice")
    with Dovecot(oauth2_introspection_url=idp.url, oauth2_mechanisms=("xoauth2",)) as server:
        probe = imapclient.IMAPClient(server.host, port=server.imaps_port, ssl=True, ssl_context=server.ssl_context())
        offered = probe.capabilities()  # before login: what the mount will choose from
        probe.shutdown()
        assert b"AUTH=XOAUTH2" in offered and b"AUTH=OAUTHBEARER" not in offered
        folder = f"xoauth2-{uuid.uuid4().hex[:8]}"
        server.create_folder(folder)
        token_file.write_text(token + "\n")
        m = oauth_mount(mount, server, token_file)
        got, expected = read_new_message(server, folder, m.path, "over xoauth2")
        assert got == expected
        assert re.search(r"Login: user=<alice>, method=XOAUTH2", server.log_text())
        m.unmount()

        token_file.write_text(new_token() + "\n")  # never issued
        failed = oauth_mount(mount, server, token_file, expect_fail=True)
        assert failed.returncode != 0
        lines = [line for line in failed.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "(XOAUTH2)" in lines[0] and "[AUTHENTICATIONFAILED]" in lines[0], failed.output


def test_password_logins_still_work_on_an_oauth2_server(oauth_dovecot, mount):
    m = mount(url=oauth_dovecot.url, ca_file=oauth_dovecot.ca_file, password=oauth_dovecot.password)
    assert (m.path / "INBOX").is_dir()


@pytest.mark.parametrize("kind", ["missing", "directory", "not-pem", "empty"])
def test_an_unusable_ca_file_is_one_line(dovecot, mount, tmp_path, kind):
    path = {"missing": tmp_path / "no-such.pem", "directory": tmp_path, "not-pem": tmp_path / "notes.txt",
            "empty": tmp_path / "empty.pem"}[kind]
    if kind == "not-pem":
        path.write_text("this is not a certificate\n")
    if kind == "empty":
        path.write_text("")
    failed = mount(ca_file=path, expect_fail=True)
    assert failed.returncode == 2
    lines = [line for line in failed.output.splitlines() if line.strip()]
    assert len(lines) == 1, failed.output
    assert lines[0].startswith(f"imapfs: error: ca_file {path}")
    assert {"missing": "does not exist", "directory": "is a directory", "not-pem": "not a PEM file",
            "empty": "not a PEM file"}[kind] in lines[0]
    assert "Traceback" not in failed.output
