"""The test Cyrus itself (tests/support/cyrus.py): what test_battery.py relies on.

Verified TLS with the shared test CA, the INBOX made at the first login,
the namespace each configuration promises, its syslog lines in its own log,
a wrong password as a clear CyrusError, and stop() leaving no process and
no mount behind (its private /dev lives in its own mount namespace).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.cyrus import Cyrus, CyrusError
from tests.support.dovecot import Dovecot, _session_members


def _mount_points() -> str:
    return Path("/proc/self/mountinfo").read_text()


@pytest.mark.parametrize(("separator", "altnamespace", "personal"),
                         [(".", False, ("INBOX.", ".")), ("/", True, ("", "/"))], ids=["dot", "slash"])
def test_cyrus_serves_the_namespace_asked_for_and_stops_clean(dovecot: Dovecot, separator, altnamespace, personal):
    server = Cyrus(tls_dir=dovecot.tls_dir, separator=separator, altnamespace=altnamespace)
    try:
        server.start()
        master = server._proc.pid
        with server.client() as client:  # verified against the Dovecot's CA: one ca_file for both
            assert client.namespace().personal[0] == personal
            assert [name for _f, _d, name in client.list_folders()] == ["INBOX"]
            assert b"MOVE" in client.capabilities() and b"UIDPLUS" in client.capabilities()
        log = server.log_text()
        assert "autocreateinbox: User alice, INBOX was successfully created" in log  # syslog, caught
        assert str(server.dev_dir) not in _mount_points()  # the private /dev is the master's alone
        server.password = "wrong"
        with pytest.raises(CyrusError, match="login as alice failed"):
            server.client()
        server.stop()
        assert _session_members(master) == []
        assert not server.running
    finally:
        server.close()
    assert not server.base_dir.exists()
    assert not os.path.exists(server.syslog_socket)
