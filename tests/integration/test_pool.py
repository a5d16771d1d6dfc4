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


# --- search_each: EXAMINE + UID SEARCH (+ UID FETCH of the matches) for many folders at once


META = ["UID", "FLAGS", "RFC822.SIZE", "INTERNALDATE", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]


def _searchable(dovecot, imap, root: str) -> dict[str, list[int]]:
    """Three folders under root, each with a different mix of matching mail; folder -> matching UIDs."""
    expected = {}
    for index, name in enumerate(("a", "b", "Zürich")):
        folder = f"{root}/{name}"
        dovecot.create_folder(folder)
        for number in range(6):
            text = "needle Grüße" if (number + index) % 3 == 0 else "hay"
            dovecot.append(folder, message(f"search {name} {number}", text))
        imap.select_folder(folder, readonly=True)
        expected[folder] = sorted(imap.search(["CHARSET", "UTF-8", "TEXT", "needle"]))
    return expected


def _check_answers(imap, answers, expected: dict[str, list[int]], with_metadata: bool) -> None:
    for answer in answers:
        if answer.folder not in expected:
            assert answer.status is None and answer.uids == [] and answer.refused is None
            continue
        assert answer.refused is None and answer.status is not None
        assert answer.uids == expected[answer.folder], answer.folder
        imap.select_folder(answer.folder, readonly=True)
        assert answer.status.uidvalidity == imap.folder_status(answer.folder, ["UIDVALIDITY"])[b"UIDVALIDITY"]
        if not with_metadata:
            assert answer.metadata is None
            continue
        theirs = imap.fetch(expected[answer.folder], ["RFC822.SIZE", "FLAGS"])
        assert sorted(answer.metadata) == expected[answer.folder]
        for uid, data in answer.metadata.items():
            assert data[b"RFC822.SIZE"] == theirs[uid][b"RFC822.SIZE"]
            assert b"search" in next(v for k, v in data.items() if k.startswith(b"BODY[HEADER"))


@pytest.mark.parametrize("without", [(), ("SEARCHRES",), ("LITERAL+",), ("SEARCHRES", "LITERAL+")],
                         ids=["all", "no-searchres", "no-literal-plus", "neither"])
def test_search_each_answers_as_imapclients_own_search(dovecot, imap, fresh_folder, session, without):
    """Every folder's matches and their metadata, one gone folder among them; with SEARCHRES
    the fetch rides on the saved result, without it follows; a UTF-8 term needs a literal,
    non-synchronising with LITERAL+, else sent folder by folder."""
    expected = _searchable(dovecot, imap, fresh_folder)
    session.capabilities = session.capabilities - set(without)
    folders = [f"{fresh_folder}/a", f"{fresh_folder}/gone", f"{fresh_folder}/b", f"{fresh_folder}/Zürich"]
    from imapfs.query import Value
    answers = session.search_each(folders, ["TEXT", Value("needle"), "TEXT", Value("Grüße")], "UTF-8", META)
    assert [a.folder for a in answers] == folders
    _check_answers(imap, answers, expected, with_metadata=True)
    assert not session.broken
    # The session knows where it is: the last folder, examined; its next commands work there.
    assert session.selected == folders[-1]
    assert sorted(session.search_all_uids()) == sorted(server_messages(imap, folders[-1]))


def test_search_each_fetches_only_where_asked_and_ends_in_no_folder_after_a_gone_one(
        dovecot, imap, fresh_folder, session):
    expected = _searchable(dovecot, imap, fresh_folder)
    folders = [f"{fresh_folder}/a", f"{fresh_folder}/b", f"{fresh_folder}/gone"]
    answers = session.search_each(folders, ["TEXT", "needle"], None, META, fetch_in={f"{fresh_folder}/b"})
    assert answers[0].metadata is None and answers[0].uids == expected[folders[0]]
    assert sorted(answers[1].metadata) == expected[folders[1]]
    assert answers[2].status is None
    # The last EXAMINE failed: no folder is selected (RFC 3501 6.3.1), and the session says so.
    assert session.selected is None and not session.broken
    session.select(folders[0])
    assert session.search_all_uids() == sorted(server_messages(imap, folders[0]))


def test_a_search_the_server_refuses_is_reported_and_the_others_still_answer(dovecot, imap, fresh_folder, session):
    expected = _searchable(dovecot, imap, fresh_folder)
    from imapfs.query import Value
    folders = [f"{fresh_folder}/a", f"{fresh_folder}/b"]
    # A charset Dovecot does not know: NO [BADCHARSET] in every folder, and nothing out of step.
    answers = session.search_each(folders, ["TEXT", Value("Grüße")], "X-NO-SUCH-CHARSET", META)
    assert all(a.refused and "BADCHARSET" in a.refused.upper() for a in answers), answers
    assert not session.broken
    again = session.search_each(folders, ["TEXT", "needle"], None, META)
    assert [a.uids for a in again] == [expected[f] for f in folders]
