"""imapfs.query: every construct of the search language -> the exact SEARCH keys."""

from __future__ import annotations

import pytest

from imapfs.errors import InvalidQuery
from imapfs.query import Value, is_under, parse


@pytest.mark.parametrize("text, keys", [
    ("invoice", ["TEXT", "invoice"]),
    ('"quarterly report"', ["TEXT", "quarterly report"]),
    ("from:alice", ["FROM", "alice"]),
    ("to:bob@example.org", ["TO", "bob@example.org"]),
    ("cc:carol", ["CC", "carol"]),
    ("bcc:dave", ["BCC", "dave"]),
    ("subject:offer", ["SUBJECT", "offer"]),
    ('subject:"special offer"', ["SUBJECT", "special offer"]),
    ("body:needle", ["BODY", "needle"]),
    ("FROM:alice", ["FROM", "alice"]),  # operators in any case
    ("header:List-Id:dev.example.org", ["HEADER", "List-Id", "dev.example.org"]),
    ("header:X-Spam-Flag:", ["HEADER", "X-Spam-Flag", ""]),
    ('header:X-Note:"two words"', ["HEADER", "X-Note", "two words"]),
    ("header:Reply-To:a:b", ["HEADER", "Reply-To", "a:b"]),
    ("since:2024-01-01", ["SINCE", "01-Jan-2024"]),
    ("before:2023-12-31", ["BEFORE", "31-Dec-2023"]),
    ("on:2024-02-29", ["ON", "29-Feb-2024"]),
    ("larger:500", ["LARGER", "500"]),
    ("larger:10k", ["LARGER", "10240"]),
    ("smaller:2M", ["SMALLER", str(2 * 1024 * 1024)]),
    ("smaller:1g", ["SMALLER", str(1024 ** 3)]),
    ("is:unread", ["UNSEEN"]),
    ("is:read", ["SEEN"]),
    ("is:flagged", ["FLAGGED"]),
    ("is:answered", ["ANSWERED"]),
    ("is:draft", ["DRAFT"]),
    ("is:UNREAD", ["UNSEEN"]),
    ("-is:unread", ["SEEN"]),
    ("-is:read", ["UNSEEN"]),
    ("-is:flagged", ["UNFLAGGED"]),
    ("-is:answered", ["UNANSWERED"]),
    ("-is:draft", ["UNDRAFT"]),
    ("-from:bob", ["NOT", "FROM", "bob"]),
    ('-"out of office"', ["NOT", "TEXT", "out of office"]),
    ("-since:2024-01-01", ["NOT", "SINCE", "01-Jan-2024"]),
    ("from:alice since:2024-01-01 invoice", ["FROM", "alice", "SINCE", "01-Jan-2024", "TEXT", "invoice"]),
    ("from:alice OR from:bob", ["OR", "FROM", "alice", "FROM", "bob"]),
    ("a OR b OR c", ["OR", "TEXT", "a", "OR", "TEXT", "b", "TEXT", "c"]),
    ("x a OR -b y", ["TEXT", "x", "OR", "TEXT", "a", "NOT", "TEXT", "b", "TEXT", "y"]),
    ("is:unread OR is:flagged", ["OR", "UNSEEN", "FLAGGED"]),
    ("or", ["TEXT", "or"]),  # only upper-case OR is the operator
    ('"OR"', ["TEXT", "OR"]),
    ("10:30", ["TEXT", "10:30"]),  # not an operator: starts with a digit
    ('"foo:bar"', ["TEXT", "foo:bar"]),
    ("in:INBOX", ["ALL"]),  # a folder filter alone: every message of those folders
    ("gmail:has:attachment", ["X-GM-RAW", "has:attachment"]),
    ('gmail:"from:alice has:attachment"', ["X-GM-RAW", "from:alice has:attachment"]),
    ("foo(bar", ["TEXT", "foo(bar"]),
    ("  spaced   out  ", ["TEXT", "spaced", "TEXT", "out"]),
])
def test_each_construct_gives_the_exact_search_keys(text, keys):
    query = parse(text)
    assert list(query.keys) == keys
    assert query.charset is None


def test_values_are_marked_and_keywords_are_not():
    """pool.Session quotes Values and sends keywords bare: the marking must be exact."""
    keys = parse('from:FROM subject:"a b" since:2024-01-01 larger:1k -is:read header:X-A:v').keys
    assert [type(k) is Value for k in keys] == [False, True, False, True, False, False, False, False, False,
                                                 False, True, True]


def test_non_ascii_terms_ask_for_charset_utf8():
    query = parse("Zürich from:alice")
    assert list(query.keys) == ["TEXT", "Zürich", "FROM", "alice"]
    assert query.charset == "UTF-8"
    assert parse("subject:日本").charset == "UTF-8"


def test_in_chooses_folders_and_minus_in_leaves_them_out():
    query = parse("in:Work -in:Work%2FOld invoice in:INBOX")  # %2F: a file name cannot hold "/"
    assert list(query.keys) == ["TEXT", "invoice"]
    assert query.folders == ("Work", "INBOX")
    assert query.excluded == ("Work/Old",)
    assert query.wants_folder("Work", "/")
    assert query.wants_folder("Work/Projects", "/")
    assert not query.wants_folder("Work/Old", "/")
    assert not query.wants_folder("Work/Old/2019", "/")
    assert not query.wants_folder("Workshop", "/")
    assert query.wants_folder("inbox", "/")
    assert not query.wants_folder("Sent", "/")


def test_no_in_searches_every_folder():
    assert parse("x").wants_folder("anything/deep", "/")


def test_is_under():
    assert is_under("INBOX.Sub", "inbox", ".")
    assert is_under("A/B", "A/", "/")
    assert not is_under("AB", "A", "/")
    assert is_under("Solo", "Solo", None)
    assert not is_under("Solo/x", "Solo", None)


def test_gmail_needs_the_gmail_extension():
    assert parse("gmail:label:work").needs == {"X-GM-EXT-1"}
    assert parse("from:x").needs == frozenset()


@pytest.mark.parametrize("text, says", [
    ("", "empty"),
    ("   ", "empty"),
    ('"unbalanced', "unbalanced double quote"),
    ('subject:"a b"c', "closing quote"),
    ("foo:bar", "unknown operator 'foo:'"),
    ("since:2024-13-01", "no such date"),
    ("since:yesterday", "YYYY-MM-DD"),
    ("on:2023-02-29", "no such date"),
    ("larger:big", "sizes are"),
    ("larger:10T", "sizes are"),
    ("is:sleepy", "is: takes one of"),
    ("OR a", "OR needs a term on each side"),
    ("a OR", "OR needs a term on each side"),
    ("a OR OR b", "OR needs a term on each side"),
    ("in:x OR y", "cannot be one side of OR"),
    ("y OR in:x", "cannot be one side of OR"),
    ("in:", "needs a folder name"),
    ("from:", "needs a value"),
    ("header:Subject", "header:NAME:VALUE"),
    ("header::x", "header:NAME:VALUE"),
    ("-", "must be followed by a term"),
    ('""', "empty phrase"),
    ("line\nbreak", "control characters"),
    ("tab\there", "control characters"),
    ("gmail:", "needs Gmail search syntax"),
])
def test_unparsable_queries_say_what_is_wrong(text, says):
    with pytest.raises(InvalidQuery) as caught:
        parse(text)
    assert says in str(caught.value)
