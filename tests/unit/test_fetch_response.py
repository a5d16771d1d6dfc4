"""The fast FETCH parser says what imapclient's parser says, or declines."""

import pytest
from imapclient.response_parser import parse_fetch_response

from imapfs.fetch_response import parse_fetch

HEADER = b"Subject: =?UTF-8?B?w6k=?=\r\nMessage-ID: <a@b>\r\n\r\n"

UNDERSTOOD = {
    "metadata": [(b'1 (UID 1 FLAGS (\\Seen $Forwarded) RFC822.SIZE 1534 INTERNALDATE "05-Mar-2024 14:32:00 +0000" '
                  b'BODY[HEADER.FIELDS (SUBJECT MESSAGE-ID)] {%d}' % len(HEADER), HEADER), b")"],
    "other order, padded day, negative zone": [
        (b'2 (RFC822.SIZE 10 UID 7 FLAGS () INTERNALDATE " 5-Mar-2024 01:02:03 -0730" '
         b"BODY[HEADER.FIELDS (SUBJECT MESSAGE-ID)] {2}", b"\r\n"), b")"],
    "whole body": [(b"3 (UID 9 BODY[] {5}", b"hello"), b")"],
    "partial body": [(b"4 (UID 10 BODY[]<131072> {3}", b"abc"), b")"],
    "flags and modseq": [b"5 (UID 11 FLAGS (\\Deleted \\Recent) MODSEQ (12345))"],
    "NIL body": [b"6 (UID 12 BODY[] NIL)"],
    "empty quoted body": [b'7 (UID 13 BODY[] "")'],
    "literal mid-response": [(b"8 (UID 14 BODY[] {3}", b"x)z"), b" FLAGS (\\Seen))"],
    "no UID (unsolicited)": [b"9 (FLAGS (\\Seen))"],
    "several responses": [b"10 (UID 20 FLAGS ())", (b"11 (UID 21 BODY[] {4}", b"{1}\n"), b")",
                          b"12 (UID 22 RFC822.SIZE 0)"],
    "empty literal": [(b"13 (UID 23 BODY[] {0}", b""), b")"],
    "same sequence twice": [b"14 (UID 30 FLAGS (\\Seen))", b"14 (MODSEQ (9))"],
}

DECLINED = {
    "escaped quote": [b'1 (UID 1 BODY[] "a\\"b")'],
    "unknown item": [b"1 (UID 1 ENVELOPE NIL)"],
    "numeric keyword": [b"1 (UID 1 FLAGS (\\Seen 1234))"],
    "NIL flag": [b"1 (UID 1 FLAGS (NIL))"],
    "bad date": [b'1 (UID 1 INTERNALDATE "yesterday")'],
    "bad month": [b'1 (UID 1 INTERNALDATE "05-Foo-2024 14:32:00 +0000")'],
    "literal length mismatch": [(b"1 (UID 1 BODY[] {9}", b"short"), b")"],
    "truncated": [b"1 (UID 1 FLAGS (\\Seen)"],
    "trailing garbage": [b"1 (UID 1) x"],
    "not a response": [b"hello"],
}


@pytest.mark.parametrize("data", UNDERSTOOD.values(), ids=UNDERSTOOD.keys())
def test_understood_responses_parse_exactly_as_imapclient_does(data):
    fast = parse_fetch(list(data))
    assert fast is not None
    assert fast == dict(parse_fetch_response(list(data), False, False))


@pytest.mark.parametrize("data", DECLINED.values(), ids=DECLINED.keys())
def test_anything_else_is_declined(data):
    assert parse_fetch(list(data)) is None


def test_times_are_the_same_instant_and_offset():
    data = [b'1 (UID 1 INTERNALDATE "31-Dec-2023 23:59:59 -0130")']
    fast = parse_fetch(data)[1][b"INTERNALDATE"]
    slow = parse_fetch_response(data, False, False)[1][b"INTERNALDATE"]
    assert fast == slow and fast.utcoffset() == slow.utcoffset()
