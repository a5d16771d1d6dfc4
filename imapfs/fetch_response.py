"""A fast parser for the UID FETCH responses imapfs's own commands get back.

imapclient's ``parse_fetch_response`` is a general IMAP lexer written in
pure Python; profiling a cold ``ls -l`` of 10,000 messages put a third of
imapfs's time in it. imapfs asks for a handful of items (UID, FLAGS,
RFC822.SIZE, INTERNALDATE, MODSEQ, BODY[...] whole, partial or header
fields), and servers answer them in a regular shape, which a few regular
expressions read much faster.

``parse_responses`` cuts imaplib's data into its untagged responses and
returns one dict per response: what ``parse_fetch_response`` (with
normalise_times and uid_is_key off) makes of that response alone. The fast
path declines anything outside that regular shape (a quoted string with
escapes, an item it does not know, a flag or number imapclient would read
differently), and imapclient's parser then reads that response. So the
fast path can be wrong only by declining, never by misreading; unit tests
compare both parsers on the same bytes.

Responses are kept apart, not merged by sequence number as imapclient
does: with several FETCH commands in flight, an EXPUNGE between them gives
two different messages the same number, and merging would lose one.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from imapclient.fixed_offset import FixedOffset
from imapclient.response_parser import parse_fetch_response

_START = re.compile(rb"([1-9]\d*) \(")
# Known items only; section and origin are kept in the key, as imapclient does.
_ITEM = re.compile(rb"(UID|RFC822\.SIZE|FLAGS|INTERNALDATE|MODSEQ|BODY\[[^\]\"{}]*\](?:<(?:0|[1-9]\d*)>)?) ")
_NUMBER = re.compile(rb"0|[1-9]\d*")  # leading zeros: imapclient keeps those as bytes
_FLAG_LIST = re.compile(rb"\(([^()]*)\)")
# A flag atom as imapclient's lexer reads it whole; anything else is declined.
_FLAG = re.compile(rb"\\?[A-Za-z0-9$_.:+\-/&!#'@^~]+")
_QUOTED = re.compile(rb'"([^"\\\r\n]*)"')
_MODSEQ = re.compile(rb"\((0|[1-9]\d*)\)")
_LITERAL = re.compile(rb"\{(\d+)\}")
_INTERNALDATE = re.compile(rb" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)")
_MONTHS = {name: number for number, name in enumerate(
    (b"JAN", b"FEB", b"MAR", b"APR", b"MAY", b"JUN", b"JUL", b"AUG", b"SEP", b"OCT", b"NOV", b"DEC"), start=1)}
_ZONES: dict[bytes, FixedOffset] = {}


def parse_responses(data: list[Any]) -> list[dict[bytes, Any]]:
    """One {item: value} dict per untagged FETCH response in imaplib's data
    (which holds each response as bytes, or, where it carries literals, as
    (text up to "{n}", literal) tuples followed by the text after the last
    literal). Each dict also has b"SEQ", the message sequence number."""
    if data == [None]:
        return []
    parsed = []
    for response in _split(data):
        values = _parse_one(response)
        if values is None:
            by_seq = parse_fetch_response(response, False, False)
            parsed.extend(by_seq.values())
        else:
            parsed.append(values)
    return parsed


def _split(data: list[Any]) -> list[list[Any]]:
    responses: list[list[Any]] = []
    current: list[Any] = []
    for item in data:
        current.append(item)
        if not isinstance(item, tuple):  # the text after the last literal ends a response
            responses.append(current)
            current = []
    if current:
        responses.append(current)  # malformed: let imapclient's parser say so
    return responses


def _parse_one(response: list[Any]) -> dict[bytes, Any] | None:
    pieces = [_piece(item) for item in response]
    if any(text is None for text, _ in pieces):
        return None
    text, literal = pieces[0]
    assert text is not None
    next_piece = 1
    match = _START.match(text)
    if match is None:
        return None
    values: dict[bytes, Any] = {b"SEQ": int(match.group(1))}
    pos = match.end()
    while True:
        match = _ITEM.match(text, pos)
        if match is None:
            return None
        name, pos = match.group(1), match.end()
        value: Any
        if name == b"UID" or name == b"RFC822.SIZE":
            match = _NUMBER.match(text, pos)
            if match is None:
                return None
            value = int(match.group())
        elif name == b"FLAGS":
            match = _FLAG_LIST.match(text, pos)
            if match is None:
                return None
            inside = match.group(1)
            value = tuple(inside.split(b" ")) if inside else ()
            if not all(_FLAG.fullmatch(flag) and not flag.isdigit() and flag.upper() != b"NIL" for flag in value):
                return None  # imapclient would split these, or make them a number or None
        elif name == b"INTERNALDATE":
            match = _QUOTED.match(text, pos)
            if match is None:
                return None
            value = _internaldate(match.group(1))
            if value is None:
                return None
        elif name == b"MODSEQ":
            match = _MODSEQ.match(text, pos)
            if match is None:
                return None
            value = (int(match.group(1)),)
        else:  # BODY[...]: a literal, a quoted string or NIL; imapclient upper-cases the key
            name = name.upper()
            match = _LITERAL.match(text, pos)
            if match is not None:
                if match.end() != len(text) or literal is None or len(literal) != int(match.group(1)):
                    return None
                value = literal
                if next_piece >= len(pieces):
                    return None
                text, literal = pieces[next_piece]
                assert text is not None
                next_piece += 1
                pos = 0
                match = None
            elif text.startswith(b"NIL", pos):
                value, pos = None, pos + 3
            else:
                match = _QUOTED.match(text, pos)
                if match is None:
                    return None
                value = match.group(1)
        if match is not None:
            pos = match.end()
        values[name] = value
        if text.startswith(b" ", pos):
            pos += 1
            continue
        if pos + 1 == len(text) and text.endswith(b")") and literal is None and next_piece == len(pieces):
            return values
        return None


def _piece(item: Any) -> tuple[bytes | None, bytes | None]:
    if isinstance(item, bytes):
        return item, None
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], bytes) and isinstance(item[1], bytes):
        return item[0], item[1]
    return None, None


def _internaldate(text: bytes) -> dt.datetime | None:
    match = _INTERNALDATE.fullmatch(text)
    if match is None:
        return None
    day, month_name, year, hour, minute, second, sign, zone_hours, zone_minutes = match.groups()
    month = _MONTHS.get(month_name.upper())
    if month is None or int(year) < 1900:  # imapclient reads odd years its own way
        return None
    zone_key = sign + zone_hours + zone_minutes
    zone = _ZONES.get(zone_key)
    if zone is None:
        minutes = int(zone_hours) * 60 + int(zone_minutes)
        zone = FixedOffset(-minutes if sign == b"-" else minutes)
        _ZONES[zone_key] = zone
    try:
        return dt.datetime(int(year), month, int(day), int(hour), int(minute), int(second), tzinfo=zone)
    except ValueError:
        return None
