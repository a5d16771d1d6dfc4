"""ConnectionPool.run's budget: retries, timeouts and what it learns about the server."""

from __future__ import annotations

import logging
import time

import pytest

from imapfs.config import Account, Options
from imapfs.errors import DroppedAfterLogin, ServerUnavailable
from imapfs.pool import DROPS_BEFORE_FAILING_FAST, ConnectionPool
from tests.unit.fakes import FakeServer

ACCOUNT = Account(user="alice", host="fake.invalid", port=993, implicit_tls=True)


class Connector:
    """Stands in for pool.connect: counts calls and fails as told."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.calls: list[Options] = []
        self.refuse = False  # the server is down
        self.drop_first_command = False  # logins work, the first command loses the connection

    def __call__(self, account: Account, password: str, options: Options):
        self.calls.append(options)
        if self.refuse:
            raise ServerUnavailable("cannot reach server: Connection refused")
        session = self.server.session()
        if self.drop_first_command:
            self.server.fail_next.append(ServerUnavailable("connection lost: socket error: EOF"))
        return session


def pool_for(connector: Connector, **options) -> ConnectionPool:
    return ConnectionPool(ACCOUNT, "pw", Options(**options), connector=connector)


def test_a_server_that_drops_every_command_after_login_fails_fast_once_that_is_clear(caplog):
    server = FakeServer()
    connector = Connector(server)
    connector.drop_first_command = True
    pool = pool_for(connector, retry_for=20)
    caplog.set_level(logging.INFO, logger="imapfs.pool")
    started = time.monotonic()
    with pytest.raises(ServerUnavailable):
        pool.run(lambda s: s.list_folders())
    assert len(connector.calls) == DROPS_BEFORE_FAILING_FAST
    assert time.monotonic() - started < 2  # not the 18 s a full retry budget took
    # The pattern is clear now: one attempt per operation, and no retry lines.
    caplog.clear()
    for _ in range(5):
        with pytest.raises(ServerUnavailable):
            pool.run(lambda s: s.list_folders())
    assert len(connector.calls) == DROPS_BEFORE_FAILING_FAST + 5
    assert not [r for r in caplog.records if "retry" in r.getMessage()]
    # The server heals: the next operation works, and later failures are retried again.
    connector.drop_first_command = False
    assert [f.name for f in pool.run(lambda s: s.list_folders())] == ["INBOX"]
    server.fail_next.append(ServerUnavailable("one dropped connection"))
    assert pool.run(lambda s: s.list_folders())


def test_drops_inside_connect_after_the_login_count_too():
    server = FakeServer()
    calls = []

    def connector(account, password, options):
        calls.append(options)
        raise DroppedAfterLogin("connection lost (right after the login was accepted)")

    pool = ConnectionPool(ACCOUNT, "pw", Options(retry_for=20), connector=connector)
    with pytest.raises(DroppedAfterLogin):
        pool.run(lambda s: s.list_folders())
    assert len(calls) == DROPS_BEFORE_FAILING_FAST
    assert server.commands == []


def test_a_pooled_connection_killed_server_side_is_not_taken_for_the_pattern():
    # Connections that answered before (a kick, a restart) are not drops after login.
    server = FakeServer()
    connector = Connector(server)
    pool = pool_for(connector, retry_for=20, connections=1)
    pool.run(lambda s: s.list_folders())
    for _ in range(DROPS_BEFORE_FAILING_FAST + 1):
        server.fail_next.append(ServerUnavailable("kicked"))
        assert pool.run(lambda s: s.list_folders())  # retried on a new connection


def test_with_the_server_down_one_call_uses_the_budget_and_the_next_fail_at_once():
    server = FakeServer()
    connector = Connector(server)
    connector.refuse = True
    pool = pool_for(connector, retry_for=1.0)
    started = time.monotonic()
    with pytest.raises(ServerUnavailable):
        pool.run(lambda s: s.list_folders())
    assert time.monotonic() - started <= 1.5
    tried = len(connector.calls)
    assert tried > 1  # it did retry within the budget
    started = time.monotonic()
    with pytest.raises(ServerUnavailable):
        pool.run(lambda s: s.list_folders())
    assert time.monotonic() - started < 0.2 and len(connector.calls) == tried + 1
    connector.refuse = False
    assert pool.run(lambda s: s.list_folders())
    connector.refuse = True
    server.fail_next.append(ServerUnavailable("the pooled connection died with the server"))
    started = time.monotonic()
    with pytest.raises(ServerUnavailable):
        pool.run(lambda s: s.list_folders())
    assert time.monotonic() - started > 0.5  # the server answered meanwhile: a full budget again


def test_connecting_late_in_the_budget_gets_only_what_is_left_of_it():
    server = FakeServer()
    connector = Connector(server)
    connector.refuse = True
    pool = pool_for(connector, retry_for=2.0, timeout=20)
    with pytest.raises(ServerUnavailable):
        pool.run(lambda s: s.list_folders())
    timeouts = [options.timeout for options in connector.calls]
    assert timeouts[0] <= 2.0
    assert all(later <= earlier for earlier, later in zip(timeouts, timeouts[1:], strict=False))
    assert min(timeouts) >= 1.0  # never below a second
