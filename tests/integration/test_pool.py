"""The pool's Session against a real Dovecot: pipelined FETCH batches."""

from __future__ import annotations

import pytest

from imapfs.config import Options, parse_url
from imapfs.pool import connect
from tests.integration.helpers import message, server_messages


@pytest.fixture
def session(dovecot):
    opened = connect(parse_url(dovecot.url), dovecot.password, Options(ca_file=str(dovecot.ca_file)))
    yield opened
    opened.logout()


def test_pipelined_batches_return_what_one_fetch_each_would(dovecot, imap, fresh_folder, session):
    for i in range(40):
        dovecot.append(fresh_folder, message(f"pipelined {i}", "x" * i))
    session.select(fresh_folder)
    uids = sorted(server_messages(imap, fresh_folder))
    batches = [uids[start:start + 3] for start in range(0, len(uids), 3)]
    got: list[dict] = []
    session.fetch_each(batches, ["UID", "RFC822.SIZE", "FLAGS"], got.append, ahead=4)
    assert [sorted(result) for result in got] == batches  # in order, each batch's own UIDs
    one_by_one = [session.fetch(batch, ["UID", "RFC822.SIZE", "FLAGS"]) for batch in batches]
    assert got == one_by_one
    assert not session.broken


def test_a_failure_with_answers_outstanding_retires_the_connection(dovecot, imap, fresh_folder, session):
    for i in range(10):
        dovecot.append(fresh_folder, message(f"pipelined {i}"))
    session.select(fresh_folder)
    uids = sorted(server_messages(imap, fresh_folder))

    def fail(_result):
        raise RuntimeError("the consumer broke")

    with pytest.raises(RuntimeError):
        session.fetch_each([[uid] for uid in uids], ["UID"], fail, ahead=4)
    # Three answers were still unread: the next command would read them as its own.
    assert session.broken
