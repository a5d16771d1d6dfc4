"""The search language of ``.search/QUERY/``, turned into IMAP SEARCH keys.

Pure: no I/O, nothing of the package but its errors, so every construct is
unit-tested against the exact keys it produces. A query is one path
component (it cannot hold "/" or NUL), typed by people in a shell:

    from:alice since:2024-01-01 invoice        three keys, all must match
    "quarterly report" -is:read                 a phrase, and NOT SEEN -> UNSEEN
    subject:offer OR subject:invoice            OR binds two terms
    header:List-Id:dev in:Work                  only Work and its subfolders

Terms (values are substrings, case-insensitive, as the server matches them):

    WORD, "a phrase"        TEXT (headers and body)
    from: to: cc: bcc: subject: body:    FROM TO CC BCC SUBJECT BODY
    header:NAME:VALUE       HEADER NAME VALUE (an empty VALUE: has the field)
    since: before: on:      SINCE BEFORE ON, YYYY-MM-DD (the INTERNALDATE, as
                            the file names show it; SINCE includes the day)
    larger: smaller:        LARGER SMALLER, bytes, or with k/M/G (x1024)
    is:unread|read|flagged|answered|draft (and seen, unseen, unflagged,
                            unanswered, undraft)
    in:FOLDER               a folder filter, not a SEARCH key: FOLDER and its
                            subfolders (repeatable; -in: leaves them out). FOLDER
                            as the server names it; since a file name cannot hold
                            "/", write %2F for it: in:Work%2FProjects
    gmail:RAW               X-GM-RAW RAW, Gmail's own syntax (servers with X-GM-EXT-1)
    -TERM                   NOT TERM (-is:read is UNSEEN, not NOT SEEN)
    A OR B                  OR A B; binds tighter than the implicit AND

Why strings are marked (``Value``): a value such as ``foo(bar`` or ``{5}``
sent as an atom would break the command, or announce a literal and hang it;
pool.Session sends every Value quoted, or as a literal when it is not
ASCII, and never a keyword quoted. Values holding control characters are
refused: no quoting rule of IMAP carries a newline in a quoted string, and
a query with one is a mistake.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from imapfs.errors import InvalidQuery


class Value(str):
    """A string argument of a search key (never a keyword): sent quoted, or as a literal."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Value({str.__repr__(self)})"


@dataclass(frozen=True)
class Query:
    """What a query asks: SEARCH keys (imapclient's criteria form), their
    charset, and which folders to search."""

    text: str
    keys: tuple[str, ...]
    charset: str | None = None  # "UTF-8" when a value is not ASCII
    folders: tuple[str, ...] = ()  # in:  (empty: every folder)
    excluded: tuple[str, ...] = ()  # -in:
    needs: frozenset[str] = field(default_factory=frozenset)  # capabilities the keys need (X-GM-EXT-1)

    def wants_folder(self, name: str, delimiter: str | None) -> bool:
        """Whether a folder is searched: under some in: (or no in: at all) and under no -in:."""
        def under(filter_name: str) -> bool:
            return is_under(name, filter_name, delimiter)
        if self.folders and not any(under(f) for f in self.folders):
            return False
        return not any(under(f) for f in self.excluded)


def is_under(name: str, filter_name: str, delimiter: str | None) -> bool:
    """name is filter_name or one of its subfolders (INBOX in any case, as IMAP has it)."""
    def norm(folder: str) -> str:
        head, sep, rest = folder.partition(delimiter) if delimiter else (folder, "", "")
        return ("INBOX" if head.upper() == "INBOX" else head) + sep + rest
    name, filter_name = norm(name), norm(filter_name.rstrip(delimiter or "") or filter_name)
    return name == filter_name or bool(delimiter) and name.startswith(filter_name + delimiter)


TEXT_FIELDS = {"from": "FROM", "to": "TO", "cc": "CC", "bcc": "BCC", "subject": "SUBJECT", "body": "BODY"}
DATE_FIELDS = {"since": "SINCE", "before": "BEFORE", "on": "ON"}
SIZE_FIELDS = {"larger": "LARGER", "smaller": "SMALLER"}
# is:STATE -> (key, the key of its negation)
STATES = {
    "unread": ("UNSEEN", "SEEN"), "unseen": ("UNSEEN", "SEEN"),
    "read": ("SEEN", "UNSEEN"), "seen": ("SEEN", "UNSEEN"),
    "flagged": ("FLAGGED", "UNFLAGGED"), "starred": ("FLAGGED", "UNFLAGGED"),
    "unflagged": ("UNFLAGGED", "FLAGGED"),
    "answered": ("ANSWERED", "UNANSWERED"), "replied": ("ANSWERED", "UNANSWERED"),
    "unanswered": ("UNANSWERED", "ANSWERED"),
    "draft": ("DRAFT", "UNDRAFT"), "undraft": ("UNDRAFT", "DRAFT"),
}
SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
GMAIL_CAPABILITY = "X-GM-EXT-1"

_OPERATOR = re.compile(r"([A-Za-z][A-Za-z0-9_-]*):(.*)", re.DOTALL)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SLASH = re.compile("%2F", re.IGNORECASE)


@dataclass
class _Token:
    text: str  # the value, quotes removed
    negated: bool
    quoted: bool  # the whole term was a "phrase": never an operator
    raw: str  # as written, for messages


def _tokens(text: str) -> list[_Token]:
    """Split on whitespace outside double quotes; a quote may start a term
    ("a phrase") or follow an operator (subject:"a phrase"). No escapes:
    a phrase runs to the next double quote."""
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        start = i
        negated = text[i] == "-"
        if negated:
            i += 1
        pieces: list[str] = []
        quoted_whole = i < n and text[i] == '"'
        while i < n and not text[i].isspace():
            if text[i] == '"':
                end = text.find('"', i + 1)
                if end < 0:
                    raise InvalidQuery(f"unbalanced double quote in {text[i:]!r}")
                pieces.append(text[i + 1:end])
                i = end + 1
                if i < n and not text[i].isspace():
                    raise InvalidQuery(f"a closing quote must end the term: {text[start:]!r}")
            else:
                pieces.append(text[i])
                i += 1
        token = "".join(pieces)
        raw = text[start:i]
        if negated and not token and not quoted_whole:
            raise InvalidQuery("'-' must be followed by a term (write \"-\" to search for a dash)")
        tokens.append(_Token(token, negated, quoted_whole, raw))
    return tokens


def parse(text: str) -> Query:
    """The Query a query string asks for, or InvalidQuery saying what is wrong with it."""
    if _CONTROL.search(text):
        raise InvalidQuery("a query cannot hold control characters (newline, tab, ...)")
    tokens = _tokens(text)
    if not tokens:
        raise InvalidQuery("empty query")
    folders: list[str] = []
    excluded: list[str] = []
    needs: set[str] = set()
    # Each term: its keys (a term is one SEARCH key, possibly with arguments), or None for in:.
    terms: list[list[str] | str] = []  # "OR" marks an OR between the neighbouring terms
    for token in tokens:
        if token.text == "OR" and not token.quoted and not token.negated:
            terms.append("OR")
            continue
        keys = _term(token, needs)
        if keys is None:
            (excluded if token.negated else folders).append(_SLASH.sub("/", token.text[len("in:"):]))
            if terms and terms[-1] == "OR":
                raise InvalidQuery(f"{token.raw!r} chooses folders; it cannot be one side of OR")
            terms.append([])  # placeholder, so "in:x OR y" is caught below
            continue
        terms.append(keys)
    keys = _combine(terms)
    values = [k for k in keys if isinstance(k, Value)]
    charset = "UTF-8" if any(not v.isascii() for v in values) else None
    return Query(text=text, keys=tuple(keys) or ("ALL",), charset=charset, folders=tuple(folders),
                 excluded=tuple(excluded), needs=frozenset(needs))


def _combine(terms: list[list[str] | str]) -> list[str]:
    """Terms side by side AND (IMAP's default), "A OR B OR C" as OR A OR B C."""
    keys: list[str] = []
    i = 0
    while i < len(terms):
        term = terms[i]
        if term == "OR":
            raise InvalidQuery("OR needs a term on each side")
        group = [term]
        while i + 1 < len(terms) and terms[i + 1] == "OR":
            if i + 2 >= len(terms) or terms[i + 2] == "OR":
                raise InvalidQuery("OR needs a term on each side")
            group.append(terms[i + 2])
            i += 2
        if len(group) > 1 and any(not g for g in group):
            raise InvalidQuery("in: chooses folders; it cannot be one side of OR")
        for g in group[:-1]:
            keys.append("OR")
            keys.extend(g)  # type: ignore[arg-type]
        keys.extend(group[-1])  # type: ignore[arg-type]
        i += 1
    return keys


def _term(token: _Token, needs: set[str]) -> list[str] | None:
    """One term's SEARCH key with its arguments, NOT applied; None for in:."""
    match = None if token.quoted else _OPERATOR.fullmatch(token.text)
    if match is None:
        if not token.text:
            raise InvalidQuery('an empty phrase ("") matches nothing in particular; leave it out')
        return _not(token, ["TEXT", Value(token.text)])
    name, value = match.group(1).lower(), match.group(2)
    if name in TEXT_FIELDS:
        if not value:
            raise InvalidQuery(f"{token.raw!r}: {name}: needs a value")
        return _not(token, [TEXT_FIELDS[name], Value(value)])
    if name == "header":
        field_name, colon, field_value = value.partition(":")
        if not colon or not field_name or not re.fullmatch(r"[!-9;-~]+", field_name):
            raise InvalidQuery(f"{token.raw!r}: write header:NAME:VALUE (NAME a header field name)")
        return _not(token, ["HEADER", Value(field_name), Value(field_value)])
    if name in DATE_FIELDS:
        return _not(token, [DATE_FIELDS[name], _date(value, token.raw)])
    if name in SIZE_FIELDS:
        return _not(token, [SIZE_FIELDS[name], str(_size(value, token.raw))])
    if name == "is":
        state = STATES.get(value.lower())
        if state is None:
            raise InvalidQuery(f"{token.raw!r}: is: takes one of {', '.join(sorted(STATES))}")
        return [state[1] if token.negated else state[0]]
    if name == "in":
        if not value:
            raise InvalidQuery(f"{token.raw!r}: in: needs a folder name")
        return None
    if name == "gmail":
        if not value:
            raise InvalidQuery(f"{token.raw!r}: gmail: needs Gmail search syntax")
        needs.add(GMAIL_CAPABILITY)
        return _not(token, ["X-GM-RAW", Value(value)])
    raise InvalidQuery(f"unknown operator {name + ':'!r} in {token.raw!r}; to search for the text, "
                       f"quote it: \"{token.text}\"")


def _not(token: _Token, keys: list[str]) -> list[str]:
    return ["NOT", *keys] if token.negated else keys


def _date(value: str, raw: str) -> str:
    """YYYY-MM-DD as IMAP's date (1-Feb-2024), independent of the locale."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise InvalidQuery(f"{raw!r}: dates are YYYY-MM-DD")
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidQuery(f"{raw!r}: no such date") from None
    return f"{day.day:02d}-{MONTHS[day.month - 1]}-{day.year:04d}"


def _size(value: str, raw: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
    if match is None:
        raise InvalidQuery(f"{raw!r}: sizes are a number of bytes, optionally with k, M or G")
    return int(match.group(1)) * SIZE_UNITS[match.group(2).lower()]
