"""imapfs.filing: what a file copied into a folder becomes, and filing it
through the real MailStore (against the fake server) exactly once."""

from __future__ import annotations

import datetime as dt
import random
import re

import pytest

from imapfs import filing
from imapfs.config import Options
from imapfs.errors import InvalidMessage
from imapfs.spool import Literal, Spool
from imapfs.store import MailStore
from tests.unit.fakes import FakePool, FakeServer

UTC = dt.timezone.utc


def crlf(data: bytes) -> bytes:
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)


def spooled(data: bytes, in_memory: int = 1 << 20) -> Spool:
    spool = Spool(in_memory=in_memory)
    spool.write(0, data)
    return spool


def filed(data: bytes, name: str = "x.eml", tmp_path=None, **kw) -> list[filing.Filed]:
    return filing.messages_in(spooled(data, **kw), name, str(tmp_path) if tmp_path else None)


def text(message: filing.Filed) -> bytes:
    return b"".join(message.literal.chunks())


def mboxrd_quoted(message: bytes) -> bytes:
    """How an mboxrd writer stores a message's body lines: '>'*'From ' gains one '>'."""
    return re.sub(rb"(?m)^(>*From )", rb">\1", message)


def mbox(*messages: bytes, envelope: bytes = b"From alice@example.org Tue Mar  5 14:32:00 2024") -> bytes:
    return b"".join(envelope + b"\n" + mboxrd_quoted(m) + (b"" if m.endswith(b"\n") else b"\n") + b"\n"
                    for m in messages)


PATCH = (b"From 8f2e4a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f Mon Sep 17 00:00:00 2001\n"
         b"From: Alice <alice@example.org>\n"
         b"Date: Tue, 5 Mar 2024 14:32:00 +0100\n"
         b"Subject: [PATCH] spool: stream the literal\n"
         b"\n"
         b"From now on the literal is streamed (this line was never quoted).\n"
         b"---\n"
         b" imapfs/spool.py | 2 +-\n"
         b"\n"
         b"diff --git a/imapfs/spool.py b/imapfs/spool.py\n"
         b"-old\n"
         b"+new\n"
         b"-- \n"
         b"2.39.2\n"
         b"\n")


# --- one message ----------------------------------------------------------

def test_a_plain_message_is_the_spool_as_it_is():
    raw = b"Subject: a\nDate: Tue, 5 Mar 2024 14:32:00 +0000\n\nbody\n\n"
    (message,) = filed(raw, "1700000000.M1.host:2,S")
    assert text(message) == crlf(raw)  # nothing dropped, not even a trailing blank line
    assert message.flags == ("\\Seen",) and message.when == dt.datetime(2024, 3, 5, 14, 32, tzinfo=UTC)


def test_a_git_format_patch_file_loses_its_from_line_and_nothing_else():
    (message,) = filed(PATCH, "0001-spool-stream-the-literal.patch")
    body = PATCH.split(b"\n", 1)[1][:-1]  # no envelope line, no separating blank line
    assert text(message) == crlf(body)
    assert message.literal.size == len(crlf(body))
    assert message.when == dt.datetime(2024, 3, 5, 13, 32, tzinfo=UTC)  # from Date:, not git's magic date


def test_the_from_line_date_is_the_internaldate_when_there_is_no_date_header():
    (message,) = filed(b"From MAILER-DAEMON Fri Jul  8 12:08:34 2011\nSubject: x\n\nbody\n")
    assert message.when == dt.datetime(2011, 7, 8, 12, 8, 34, tzinfo=UTC)
    (patch,) = filed(PATCH.replace(b"Date: Tue, 5 Mar 2024 14:32:00 +0100\n", b""))
    assert patch.when is None  # git's "Mon Sep 17 00:00:00 2001" marks a patch; it is no date


@pytest.mark.parametrize("line, when", [
    (b"From a@b Tue Mar  5 14:32:00 2024", dt.datetime(2024, 3, 5, 14, 32, tzinfo=UTC)),
    (b"From a@b Thu Jan  1 10:00:00 +0200 2015", dt.datetime(2015, 1, 1, 8, 0, tzinfo=UTC)),
    (b"From 1790238489342@xxx Tue Mar 05 14:32:00 +0000 2024", dt.datetime(2024, 3, 5, 14, 32, tzinfo=UTC)),
    (b"From a@b Tue, 05 Mar 2024 14:32:00 +0000", dt.datetime(2024, 3, 5, 14, 32, tzinfo=UTC)),
    (b"From a@b sometime", None),
    (b"From a@b", None),
])
def test_envelope_dates(line, when):
    assert filing.envelope_date(line) == when


def test_a_single_message_behind_a_from_line_is_streamed_without_a_copy(tmp_path):
    raw = b"From a@b Tue Mar  5 14:32:00 2024\nSubject: big\n\n" + b"x" * 70 + b"\n" * 1
    raw += (b"y" * 75 + b"\n") * 40_000  # 3 MB, well past one chunk
    spool = spooled(raw, in_memory=1 << 16)
    reads = []
    original = spool.read
    spool.read = lambda offset, size: reads.append(size) or original(offset, size)
    (message,) = filing.messages_in(spool, "big.eml", str(tmp_path))
    chunks = list(message.literal.chunks())
    assert len(chunks) > 2 and max(map(len, chunks)) <= 2 * 1024 * 1024  # never one bytes object
    assert b"".join(chunks) == crlf(raw.split(b"\n", 1)[1])
    assert max(reads) <= 1024 * 1024
    assert list(tmp_path.iterdir()) == []  # no named copy for mailbox.mbox was needed


def test_status_flags_of_an_mbox_message_join_the_name_s_flags():
    (message,) = filed(b"From a@b Tue Mar  5 14:32:00 2024\nSubject: x\nStatus: RO\nX-Status: A\n\nb\n",
                       "saved:2,F")
    assert message.flags == ("\\Flagged", "\\Seen", "\\Answered")


# --- what is not mail -----------------------------------------------------

@pytest.mark.parametrize("data", [
    b"",
    b"hi\n",
    b"\x89PNG\r\n\x1a\n\x00\x00",
    b"From a@b Tue Mar  5 14:32:00 2024\n",
    b"From a@b Tue Mar  5 14:32:00 2024\nhello, this is no header\n\nbody\n",
    b"From a@b Tue Mar  5 14:32:00 2024\nSub\x00ject: x\n\nbody\n",
    b"Subject: x\r\nbroken\x00line\r\n\r\n",
])
def test_what_is_not_mail_is_refused_and_nothing_is_handed_out(data):
    with pytest.raises(InvalidMessage, match="nothing was appended"):
        filed(data)


def test_a_broken_header_line_after_valid_fields_is_filed_as_it_is(caplog):
    raw = (b"Return-Path: <a@example.org>\nFrom: a@example.org\nTo: b@example.org,\n"
           b"c@example.org\nSubject: wrapped by a broken mailer\n\nbody\n")
    with caplog.at_level("INFO", logger="imapfs.filing"):
        (message,) = filed(raw)
    assert text(message) == crlf(raw)
    assert "1 header line(s)" in caplog.text


# --- mboxes ---------------------------------------------------------------

def numbered(number: int) -> bytes:
    body = b"".join([b"From here on, line %d.\n" % number, b">From the quoted\n", b">>From twice\n",
                     b"plain line\n"] * (number % 3 + 1))
    return (b"From: a%d@example.org\nSubject: message %d\nMessage-ID: <%d@example.org>\n"
            b"Date: Tue, %d Mar 2024 14:32:00 +0000\n\n" % (number, number, number, number % 28 + 1)) + body


def test_an_mbox_of_50_messages_is_split_each_whole_and_unquoted(tmp_path):
    messages = [numbered(n) for n in range(50)]
    out = filed(mbox(*messages), "export.mbox", tmp_path)
    assert [text(m) for m in out] == [crlf(m) for m in messages]
    assert [m.literal.size for m in out] == [len(crlf(m)) for m in messages]
    assert [m.when.day for m in out] == [n % 28 + 1 for n in range(50)]
    assert out[7].where == "export.mbox, message 8 of 50"
    assert list(tmp_path.iterdir()) == []  # the named copy for mailbox.mbox is gone


def test_an_mbox_with_crlf_line_endings_splits_alike(tmp_path):
    messages = [numbered(n) for n in range(5)]
    out = filed(crlf(mbox(*messages)), "export.mbox", tmp_path)
    assert [text(m) for m in out] == [crlf(m) for m in messages]


@pytest.mark.parametrize("body", [
    b"From x\n", b">From x\n", b">>>>From x\n", b"From\n", b">From\n", b">Fro\n", b">\n", b">>\n",
    b"a line\n>From in the middle\nFrom last", b"From ", b">From ", b">>",
])
def test_mboxrd_quoting_round_trips(body, tmp_path):
    message = b"Subject: q\n\n" + body
    (one,) = filed(mbox(message), "one.mbox", tmp_path)
    assert text(one) == crlf(message if message.endswith(b"\n") else message + b"\n")


def test_unquoting_does_not_depend_on_where_chunks_break():
    rng = random.Random(5)
    data = b"".join(rng.choice([b">From a\n", b">>From b\n", b"From c\n", b">x\n", b">", b"From", b"\n", b"text"])
                    for _ in range(3000))
    expected = re.sub(rb"(?m)^>(>*From )", rb"\1", data)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 40)))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert b"".join(filing.mboxrd_unquoted(iter(chunks))) == expected


def test_a_from_line_that_opens_no_message_stays_in_the_message_before_it(tmp_path):
    second = b"Subject: second\n\nbody\n"
    out = filed(PATCH + b"From a@b Tue Mar  5 14:32:00 2024\n" + second, "series.mbox", tmp_path)
    assert [text(m) for m in out] == [crlf(PATCH.split(b"\n", 1)[1][:-1]), crlf(second)]
    assert b"From now on" in text(out[0])


def test_a_writer_that_never_quotes_loses_one_quote_of_its_own_quoted_from_lines():
    """The price of mboxrd: git format-patch does not quote, so a commit
    message's own ">From " line cannot be told from a quoted "From " one."""
    (message,) = filed(PATCH.replace(b"From now on", b">From now on"))
    assert b"\r\nFrom now on" in text(message)


def test_a_604_message_mix_of_what_people_have_each_files_as_one_message(tmp_path):
    """Like the 604 real messages of the issue: plain files, git format-patch,
    mutt's save-to-file (Status, quoted From), CRLF, broken header lines,
    bodies with unquoted 'From ' lines; generated, every kind many times."""
    rng = random.Random(604)
    kinds = {"plain": 0, "patch": 0, "mutt": 0, "crlf": 0, "broken": 0, "from-body": 0}
    for number in range(604):
        kind = list(kinds)[number % len(kinds)]
        kinds[kind] += 1
        message = numbered(number).replace(b"From here on", b"Here on")
        if kind == "broken":
            message = message.replace(b"Subject:", b"this is no field\nSubject:", 1)
        if kind == "from-body":
            message += b"From %d people who wrote this line unquoted.\n" % rng.randrange(10 ** 6)
        expected = crlf(message)
        if kind == "plain":
            data = message
        elif kind == "crlf":
            data = crlf(mbox(message))
        elif kind == "mutt":
            data = mbox(message.replace(b"\n\n", b"\nStatus: RO\n\n", 1))
            expected = crlf(message.replace(b"\n\n", b"\nStatus: RO\n\n", 1))
        else:  # patch, broken, from-body: git's envelope, nothing quoted (see the test below)
            message = message.replace(b">From the quoted\n", b"").replace(b">>From twice\n", b"")
            data = b"From %040x Mon Sep 17 00:00:00 2001\n" % rng.getrandbits(160) + message + b"\n"
            expected = crlf(message)
        out = filed(data, f"{number:04d}.eml", tmp_path)
        assert len(out) == 1, (kind, number)
        assert text(out[0]) == expected, (kind, number)
        assert out[0].literal.size == len(expected)
        assert out[0].when is not None
        assert ("\\Seen" in out[0].flags) == (kind == "mutt")
    assert min(kinds.values()) == 100


# --- filed through the store, once ----------------------------------------

def make_store():
    server = FakeServer(("IMAP4REV1", "UIDPLUS"))
    return server, MailStore(FakePool(server), Options())


def file_in(store, data, name="x.eml", folder="INBOX", tmp_path=None):
    return [store.append(folder, m.literal, m.flags, m.when) for m in filed(data, name, tmp_path)]


def bodies(server, folder="INBOX"):
    return [m.raw for m in server.mailboxes[folder].messages.values()]


def test_the_same_content_filed_twice_is_one_message():
    server, store = make_store()
    raw = numbered(1)
    first = file_in(store, raw, "a.eml")
    second = file_in(store, raw, "b.eml")
    assert first == second and bodies(server) == [crlf(raw)]
    assert sum(c[0] == "APPEND" for c in server.commands) == 1


def test_lf_and_crlf_versions_of_a_message_are_one_message():
    server, store = make_store()
    raw = numbered(2)
    assert file_in(store, raw) == file_in(store, crlf(raw)) == file_in(store, mbox(raw))
    assert bodies(server) == [crlf(raw)]


def test_a_message_of_the_same_size_but_other_bytes_is_filed():
    server, store = make_store()
    raw = numbered(3)
    file_in(store, raw)
    file_in(store, raw.replace(b"plain line", b"PLAIN LINE"))
    assert len(bodies(server)) == 2


def test_the_check_costs_one_search_and_fetches_only_same_size_candidates():
    server, store = make_store()
    for n in range(20):
        server.add("INBOX", crlf(numbered(n + 100)))
    raw = numbered(3)
    same_size = crlf(raw.replace(b"plain line", b"PLAIN LINE"))
    decoy = server.add("INBOX", same_size)
    server.commands.clear()
    file_in(store, raw)
    verbs = [c[0] for c in server.commands]
    assert verbs.count("UID SEARCH") == 1
    fetched = {tuple(c[1]) for c in server.commands if c[0] == "UID FETCH"}
    assert fetched == {(decoy,)}  # the one message of that size, nothing else


def test_an_mbox_copied_twice_leaves_each_message_once(tmp_path):
    server, store = make_store()
    messages = [numbered(n) for n in range(50)]
    data = mbox(*messages)
    first = file_in(store, data, "export.mbox", tmp_path=tmp_path)
    second = file_in(store, data, "export.mbox", tmp_path=tmp_path)
    assert first == second and len(set(first)) == 50
    assert bodies(server) == [crlf(m) for m in messages]


def test_unless_present_off_appends_again():
    server, store = make_store()
    literal = Literal.from_bytes(numbered(4))
    store.append("INBOX", literal, (), None)
    store.append("INBOX", literal, (), None, unless_present=False)
    assert len(bodies(server)) == 2


def test_each_message_of_an_mbox_is_streamed_too(tmp_path):
    big = b"Subject: big\n\n" + (b"z" * 75 + b"\n") * 40_000  # 3 MB
    messages = [numbered(1), big, numbered(2)]
    spool = spooled(mbox(*messages), in_memory=1 << 16)
    out = filing.messages_in(spool, "export.mbox", str(tmp_path))
    chunks = list(out[1].literal.chunks())
    assert len(chunks) > 2 and max(map(len, chunks)) <= 2 * 1024 * 1024
    assert [text(m) for m in out] == [crlf(m) for m in messages]
