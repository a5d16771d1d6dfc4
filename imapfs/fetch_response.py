"""A fast parser for the UID FETCH responses imapfs's own commands get back.

imapclient's ``parse_fetch_response`` is a general IMAP lexer written in
pure Python; profiling a cold ``ls -l`` of 10,000 messages put a third of
imapfs's time in it. imapfs asks for a handful of items (UID, FLAGS,
RFC822.SIZE, INTERNALDATE, MODSEQ, BODY[...] whole, partial or header
fields), and servers answer them in a regular shape, which a few regular
expressions read much faster.

``parse_fetch`` returns exactly what ``parse_fetch_response(data, False,
False)`` returns (unit tests compare the two on the same bytes), or None as
soon as anything falls outside that shape: a quoted string with escapes,
an item it does not know, a flag imapclient would turn into a number. The
caller then hands the whole response to imapclient. So the fast path can
be wrong only by declining, never by misreading.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from imapclient.fixed_offset import FixedOffset

_START = re.compile(rb"(\d+) \(")
# Known items only; section and origin are kept in the key, as imapclient does.
_ITEM = re.compile(rb"(UID|RFC822\.SIZE|FLAGS|INTERNALDATE|MODSEQ|BODY\[[^\]\"{}]*\](?:<\d+>)?) ")
_NUMBER = re.compile(rb"\d+")
_FLAG_LIST = re.compile(rb"\(([^()\"{}\[\]]*)\)")
_QUOTED = re.compile(rb'"([^"\\\r\n]*)"')
_MODSEQ = re.compile(rb"\((\d+)\)")
_LITERAL = re.compile(rb"\{(\d+)\}")
_INTERNALDATE = re.compile(rb" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)")
_MONTHS = {name: number for number, name in enumerate(
    (b"JAN", b"FEB", b"MAR", b"APR", b"MAY", b"JUN", b"JUL", b"AUG", b"SEP", b"OCT", b"NOV", b"DEC"), start=1)}
_ZONES: dict[bytes, FixedOffset] = {}


def parse_fetch(data: list[Any]) -> dict[int, dict[bytes, Any]] | None:
    """{sequence number: {item: value}} from imaplib's untagged FETCH data, or None if not understood.

    imaplib hands each response over as bytes, or, where it carries
    literals, as (text up to "{n}", literal) tuples followed by the text
    after the last literal.
    """
    parsed: dict[int, dict[bytes, Any]] = {}
    count = len(data)
    index = 0
    while index < count:
        text, literal = _piece(data[index])
        index += 1
        if text is None:
            return None
        match = _START.match(text)
        if match is None:
            return None
        seq = int(match.group(1))
        values: dict[bytes, Any] = {b"SEQ": seq}
        pos = match.end()
        while True:
            match = _ITEM.match(text, pos)
            if match is None:
                return None
            name, pos = match.group(1), match.end()
            if name == b"UID" or name == b"RFC822.SIZE":
                match = _NUMBER.match(text, pos)
                if match is None:
                    return None
                value: Any = int(match.group())
            elif name == b"FLAGS":
                match = _FLAG_LIST.match(text, pos)
                if match is None:
                    return None
                value = tuple(match.group(1).split())
                if any(flag.isdigit() or flag.upper() == b"NIL" for flag in value):
                    return None  # imapclient would make these a number or None
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
            else:  # BODY[...]: a literal, a quoted string or NIL
                match = _LITERAL.match(text, pos)
                if match is not None:
                    if match.end() != len(text) or literal is None or len(literal) != int(match.group(1)):
                        return None
                    value = literal
                    if index >= count:
                        return None
                    text, literal = _piece(data[index])
                    index += 1
                    if text is None:
                        return None
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
            if pos + 1 == len(text) and text.endswith(b")") and literal is None:
                break
            return None
        parsed.setdefault(seq, {}).update(values)
    return parsed


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
    if month is None:
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
