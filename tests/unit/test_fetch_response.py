"""The fast FETCH parser says what imapclient's parser says, or declines."""

import random

import pytest
from imapclient.response_parser import parse_fetch_response

from imapfs.fetch_response import _parse_one, _split, parse_responses

HEADER = b"Subject: =?UTF-8?B?w6k=?=\r\nMessage-ID: <a@b>\r\n\r\n"

UNDERSTOOD = {
    "metadata": [(b'1 (UID 1 FLAGS (\\Seen $Forwarded) RFC822.SIZE 1534 INTERNALDATE "05-Mar-2024 14:32:00 +0000" '
                  b'BODY[HEADER.FIELDS (SUBJECT MESSAGE-ID)] {%d}' % len(HEADER), HEADER), b")"],
    "other order, padded day, negative zone": [
        (b'2 (RFC822.SIZE 10 UID 7 FLAGS () INTERNALDATE " 5-Mar-2024 01:02:03 -0730" '
         b"BODY[HEADER.FIELDS (SUBJECT MESSAGE-ID)] {2}", b"\r\n"), b")"],
    "lower-case section": [b'3 (UID 8 BODY[header.fields (subject)] "x")'],
    "whole body": [(b"3 (UID 9 BODY[] {5}", b"hello"), b")"],
    "partial body": [(b"4 (UID 10 BODY[]<131072> {3}", b"abc"), b")"],
    "flags and modseq": [b"5 (UID 11 FLAGS (\\Deleted \\Recent) MODSEQ (12345))"],
    "NIL body": [b"6 (UID 12 BODY[] NIL)"],
    "empty quoted body": [b'7 (UID 13 BODY[] "")'],
    "literal mid-response": [(b"8 (UID 14 BODY[] {3}", b"x)z"), b" FLAGS (\\Seen))"],
    "no UID (unsolicited)": [b"9 (FLAGS (\\Seen))"],
    "empty literal": [(b"13 (UID 23 BODY[] {0}", b""), b")"],
    "zero": [b"15 (UID 24 RFC822.SIZE 0 MODSEQ (0))"],
}

DECLINED = {
    "escaped quote": [b'1 (UID 1 BODY[] "a\\"b")'],
    "unknown item": [b"1 (UID 1 ENVELOPE NIL)"],
    "numeric keyword": [b"1 (UID 1 FLAGS (\\Seen 1234))"],
    "NIL flag": [b"1 (UID 1 FLAGS (NIL))"],
    "flag imapclient splits": [b"1 (UID 1 FLAGS (\\Seen a%b))"],
    "control character in a flag": [b"1 (UID 1 FLAGS (a\x01b))"],
    "two spaces between flags": [b"1 (UID 1 FLAGS (a  b))"],
    "leading zero": [b"1 (UID 1 RFC822.SIZE 0123)"],
    "leading zero modseq": [b"1 (UID 1 MODSEQ (0123))"],
    "two-digit-era year": [b'1 (UID 1 INTERNALDATE "17-Jul-0050 01:02:03 +0000")'],
    "bad date": [b'1 (UID 1 INTERNALDATE "yesterday")'],
    "bad month": [b'1 (UID 1 INTERNALDATE "05-Foo-2024 14:32:00 +0000")'],
    "literal length mismatch": [(b"1 (UID 1 BODY[] {9}", b"short"), b")"],
    "truncated": [b"1 (UID 1 FLAGS (\\Seen)"],
    "trailing garbage": [b"1 (UID 1) x"],
    "not a response": [b"hello"],
}


def imapclient_alone(response):
    """imapclient's reading of one response (it keys by sequence number)."""
    (values,) = parse_fetch_response(list(response), False, False).values()
    return values


@pytest.mark.parametrize("response", UNDERSTOOD.values(), ids=UNDERSTOOD.keys())
def test_understood_responses_parse_exactly_as_imapclient_does(response):
    fast = _parse_one(list(response))
    assert fast is not None
    assert fast == imapclient_alone(response)
    assert parse_responses(list(response)) == [fast]


@pytest.mark.parametrize("response", DECLINED.values(), ids=DECLINED.keys())
def test_anything_else_is_declined(response):
    assert _parse_one(list(response)) is None


def test_declined_responses_are_read_by_imapclient_instead():
    response = DECLINED["escaped quote"]
    assert parse_responses(list(response)) == [imapclient_alone(response)]


def test_responses_are_cut_apart_and_never_merged_by_sequence_number():
    # Two pipelined FETCHes with an EXPUNGE between them: message 600 is
    # first UID 1000, then UID 2000. Both must survive.
    data = [b"600 (UID 1000 FLAGS ())", (b"601 (UID 1001 BODY[] {4}", b"{1}\n"), b")", b"600 (UID 2000 FLAGS ())"]
    assert [len(r) for r in _split(data)] == [1, 2, 1]
    assert [values[b"UID"] for values in parse_responses(data)] == [1000, 1001, 2000]
    assert parse_responses([None]) == []


def test_times_are_the_same_instant_and_offset():
    response = [b'1 (UID 1 INTERNALDATE "31-Dec-2023 23:59:59 -0130")']
    fast = _parse_one(response)[b"INTERNALDATE"]
    slow = imapclient_alone(response)[b"INTERNALDATE"]
    assert fast == slow and fast.utcoffset() == slow.utcoffset()


def test_random_responses_never_disagree_with_imapclient():
    # Whenever the fast path answers, its answer is imapclient's.
    rng = random.Random(1234)
    atoms = [b"\\Seen", b"\\Flagged", b"$Label1", b"Junk", b"a%b", b"x*", b"1", b"NIL", b"k.e-y_+", b"\\*", b"a]b"]
    answered = 0
    for _ in range(3000):
        items = []
        if rng.random() < 0.9:
            items.append(b"UID %d" % rng.choice([1, 7, 4294967295, 0]))
        if rng.random() < 0.6:
            items.append(b"FLAGS (" + b" ".join(rng.sample(atoms, rng.randint(0, 3))) + b")")
        if rng.random() < 0.5:
            items.append(b"RFC822.SIZE " + rng.choice([b"0", b"12", b"012", b"99999999"]))
        if rng.random() < 0.5:
            items.append(b'INTERNALDATE "' + rng.choice([b"05-Mar-2024 14:32:00 +0000", b" 1-jan-1999 00:00:00 -1200",
                                                         b"31-Feb-2024 10:00:00 +0000", b"05-Mar-0099 14:32:00 +0000"])
                         + b'"')
        if rng.random() < 0.3:
            items.append(b"MODSEQ (" + rng.choice([b"1", b"0", b"007", b"18446744073709551615"]) + b")")
        body = None
        if rng.random() < 0.5:
            section = rng.choice([b"BODY[]", b"BODY[]<0>", b"BODY[HEADER.FIELDS (SUBJECT)]", b"body[text]"])
            form = rng.choice(["literal", "quoted", "nil"])
            if form == "literal":
                body = bytes(rng.choice(b"ab )(\r\n{}\"\\") for _ in range(rng.randint(0, 12)))
                items.append(section + b" {%d}" % len(body))
            elif form == "quoted":
                items.append(section + b' "' + rng.choice([b"", b"abc", b"a b", b"a\\\"b"]) + b'"')
            else:
                items.append(section + b" NIL")
        rng.shuffle(items)
        if not items:
            continue
        literal_at = next((i for i, item in enumerate(items) if item.endswith(b"}")), None)
        seq = b"%d" % rng.randint(1, 5000)
        if literal_at is None:
            response = [seq + b" (" + b" ".join(items) + b")"]
        else:
            head = seq + b" (" + b" ".join(items[:literal_at + 1])
            tail = b"".join(b" " + item for item in items[literal_at + 1:]) + b")"
            response = [(head, body), tail]
        fast = _parse_one(response)
        if fast is None:
            continue
        answered += 1
        assert fast == imapclient_alone(response), response
    assert answered > 500  # the fast path is not just declining everything
