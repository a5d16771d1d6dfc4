"""The pool's side of signing in: the OAuth2 SASL exchange, connection-limit
refusals recognised, and a pool that shrinks to the sessions it has instead
of failing reads."""

from __future__ import annotations

import imaplib
import json
import logging
import threading
import time

import pytest

from imapfs import pool as pool_module
from imapfs.config import Account, Options
from imapfs.credentials import Credentials
from imapfs.errors import AuthenticationError, ConfigError, ConnectionLimit, ProtocolError, ServerUnavailable
from imapfs.pool import _CONNECTION_LIMIT, ConnectionPool, _oauth2_login, translate
from tests.unit.fakes import FakeServer

ACCOUNT = Account(user="alice@example.com", host="imap.example", port=993, implicit_tls=True)
TOKEN = "ya29.a0AfH6SMBx-secret-token"


class FakeClient:
    """Just enough IMAPClient for _oauth2_login: capabilities and one AUTHENTICATE."""

    def __init__(self, capabilities: tuple[bytes, ...], accept: bool) -> None:
        self._capabilities = capabilities
        self.accept = accept
        self.mechanism = None
        self.responses: list[str] = []

    def capabilities(self) -> tuple[bytes, ...]:
        return self._capabilities

    def _command_and_check(self, command: str, mechanism: str, respond) -> list[bytes]:
        assert command == "authenticate"
        self.mechanism = mechanism
        self.responses.append(respond(b""))  # the server's empty first challenge
        if self.accept:
            return [b"Logged in"]
        error = {"status": "invalid_token", "schemes": "bearer", "scope": "mail"}
        self.responses.append(respond(json.dumps(error).encode()))
        raise imaplib.IMAP4.error("authenticate failed: [AUTHENTICATIONFAILED] Authentication failed.")


def test_oauthbearer_is_preferred_and_sends_the_rfc_7628_message():
    client = FakeClient((b"IMAP4REV1", b"AUTH=XOAUTH2", b"AUTH=OAUTHBEARER", b"AUTH=PLAIN"), accept=True)
    _oauth2_login(client, ACCOUNT, TOKEN)
    assert client.mechanism == "OAUTHBEARER"
    assert client.responses == [f"n,a=alice@example.com,\x01auth=Bearer {TOKEN}\x01\x01"]


def test_xoauth2_when_that_is_all_the_server_offers():
    client = FakeClient((b"IMAP4REV1", b"AUTH=XOAUTH2"), accept=True)
    _oauth2_login(client, ACCOUNT, TOKEN)
    assert client.mechanism == "XOAUTH2"
    assert client.responses == [f"user=alice@example.com\x01auth=Bearer {TOKEN}\x01\x01"]


@pytest.mark.parametrize(("capabilities", "mechanism", "dummy"), [
    ((b"AUTH=OAUTHBEARER",), "OAUTHBEARER", "\x01"),
    ((b"AUTH=XOAUTH2",), "XOAUTH2", ""),
])
def test_a_refused_token_answers_the_error_challenge_with_a_dummy_and_names_the_status(capabilities, mechanism,
                                                                                      dummy):
    client = FakeClient(capabilities, accept=False)
    with pytest.raises(AuthenticationError) as raised:
        _oauth2_login(client, ACCOUNT, TOKEN)
    assert client.responses[1] == dummy  # not the token a second time
    message = str(raised.value)
    assert message.startswith("login refused (imap.example:993): the OAuth2 token from oauth2_token_command")
    assert f"({mechanism})" in message and "[AUTHENTICATIONFAILED]" in message and "invalid_token" in message
    assert TOKEN not in message and "secret" not in message


def test_a_server_without_oauth2_mechanisms_is_told_clearly():
    client = FakeClient((b"IMAP4REV1", b"AUTH=PLAIN", b"AUTH=LOGIN"), accept=True)
    with pytest.raises(AuthenticationError, match=r"offers neither OAUTHBEARER nor XOAUTH2 \(it offers LOGIN, PLAIN\)"):
        _oauth2_login(client, ACCOUNT, TOKEN)


@pytest.mark.parametrize("text", [
    "[LIMIT] Maximum number of connections from user+IP exceeded (mail_max_userip_connections=10)",  # Dovecot 2.3
    "[UNAVAILABLE] Maximum number of connections from user+IP exceeded (mail_max_userip_connections=10)",
    "[ALERT] Too many simultaneous connections. (Failure)",  # Gmail
    "Too many concurrent connections for this account",
    "Connection limit reached",
])
def test_connection_limit_refusals_are_recognised(text):
    assert _CONNECTION_LIMIT.search(text)


@pytest.mark.parametrize("text", [
    "[AUTHENTICATIONFAILED] Authentication failed.",
    "[UNAVAILABLE] Temporary authentication failure. [host:2024-01-01 00:00:00]",
    "[ALERT] Please log in via your web browser",
])
def test_other_login_refusals_are_not_taken_for_limits(text):
    assert not _CONNECTION_LIMIT.search(text)


def test_a_limit_on_another_command_is_not_a_connection_limit():
    # RFC 5530's LIMIT also covers e.g. too many messages; only logins are about connections.
    error = translate(imaplib.IMAP4.error("append failed: [LIMIT] Too many messages in the mailbox"))
    assert isinstance(error, ProtocolError) and not isinstance(error, ServerUnavailable)


class CappedServer:
    """A FakeServer that refuses logins beyond `cap` sessions at once, as Dovecot does per user+IP."""

    def __init__(self, cap: int) -> None:
        self.server = FakeServer()
        self.cap = cap
        self.lock = threading.Lock()
        self.live = 0
        self.refused = 0
        self.most_in_use = 0
        self.in_use = 0

    def connect(self, *_args):
        with self.lock:
            if self.live >= self.cap:
                self.refused += 1
                raise ConnectionLimit("no more connections allowed (fake): [LIMIT] Maximum number of connections")
            self.live += 1
        return self.server.session()

    def work(self, session) -> int:
        with self.lock:
            self.in_use += 1
            self.most_in_use = max(self.most_in_use, self.in_use)
        time.sleep(0.02)
        with self.lock:
            self.in_use -= 1
        return 1


def capped_pool(capped: CappedServer, **options) -> ConnectionPool:
    options.setdefault("retry_for", 1.0)
    return ConnectionPool(ACCOUNT, "pw", Options(**options), connector=capped.connect)


def run_parallel(pool: ConnectionPool, capped: CappedServer, count: int) -> list[object]:
    results: list[object] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            value: object = pool.run(capped.work)
        except Exception as exc:  # collected: the test asserts there are none
            value = exc
        with lock:
            results.append(value)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_a_connection_limit_shrinks_the_pool_and_every_read_still_succeeds(caplog):
    caplog.set_level(logging.INFO, logger="imapfs.pool")
    capped = CappedServer(cap=2)
    pool = capped_pool(capped, connections=4)
    results = run_parallel(pool, capped, 40)
    assert results == [1] * 40
    assert capped.refused >= 1  # the limit was really hit
    assert pool.limit == 2 and capped.live == 2
    assert capped.most_in_use == 2
    assert "making do with" in caplog.text


def test_with_no_connection_at_all_a_read_fails_after_the_retry_budget():
    capped = CappedServer(cap=0)
    pool = capped_pool(capped, connections=4, retry_for=1.0)
    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match="no more connections allowed"):
        pool.run(capped.work)
    took = time.monotonic() - started
    assert 0.5 <= took <= 3.0  # retried within retry_for, not at once and not forever
    assert capped.refused >= 3
    assert not pool.server_down  # a full server is not a dead one: later calls still retry


def test_after_a_shrink_the_pool_grows_again_when_the_server_allows(monkeypatch):
    monkeypatch.setattr(pool_module, "LIMIT_PROBE_INTERVAL", 0.1)
    capped = CappedServer(cap=1)
    pool = capped_pool(capped, connections=3)
    assert run_parallel(pool, capped, 10) == [1] * 10
    assert pool.limit == 1
    capped.cap = 3  # other clients logged out
    deadline = time.monotonic() + 5
    while pool.limit < 3 and time.monotonic() < deadline:
        run_parallel(pool, capped, 6)
        time.sleep(0.05)
    assert pool.limit == 3 and capped.live == 3


def test_connect_renews_a_refused_token_and_logs_in_again(monkeypatch):
    tried: list[str] = []

    def connect_once(account, credentials, secret, options):
        tried.append(secret)
        if secret == "old":
            raise AuthenticationError("login refused (imap.example:993): the OAuth2 token ... was not accepted")
        return f"session with {secret}"

    monkeypatch.setattr(pool_module, "_connect_once", connect_once)
    tokens = iter(["old", "new"])
    credentials = Credentials(token_command="helper", run=lambda _command: next(tokens))
    assert pool_module.connect(ACCOUNT, credentials, Options()) == "session with new"
    assert tried == ["old", "new"]


def test_connect_gives_up_when_renewing_cannot_help(monkeypatch):
    def refuse(account, credentials, secret, options):
        raise AuthenticationError("login refused (imap.example:993): not accepted")

    monkeypatch.setattr(pool_module, "_connect_once", refuse)
    same = Credentials(token_command="helper", run=lambda _command: "same")
    with pytest.raises(AuthenticationError, match="^login refused"):
        pool_module.connect(ACCOUNT, same, Options())
    assert same.command_runs == 2  # once to log in, once more after the refusal

    runs = iter(["first"])

    def helper(_command: str) -> str:
        try:
            return next(runs)
        except StopIteration:
            raise ConfigError("oauth2_token_command failed with exit status 1: offline") from None

    failing = Credentials(token_command="helper", run=helper)
    with pytest.raises(AuthenticationError, match="not accepted; and renewing the token failed: .*offline$"):
        pool_module.connect(ACCOUNT, failing, Options())
    # Password logins are never retried.
    with pytest.raises(AuthenticationError):
        pool_module.connect(ACCOUNT, "pw", Options())
