"""Hostile, broken or vanishing servers and folders: the mount stays up.

Where Dovecot will not misbehave by itself, a TLS proxy (tests/support/proxy.py)
in front of it rewrites what it says.
"""

from __future__ import annotations

import pytest

from imapfs.config import Options, parse_url
from imapfs.errors import NotFound
from imapfs.pool import connect
from tests.integration.helpers import message


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
