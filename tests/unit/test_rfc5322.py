import datetime as dt

import pytest

from imapfs import rfc5322


@pytest.mark.parametrize("data", [
    b"Subject: x\r\n\r\nbody",
    b"From: a@b\nTo: c@d\n\nunix line endings",
    b"Subject: only a header",
    b"X-Folded: a\r\n  b\r\nSubject: y\r\n\r\n\x00binary body is fine",
    b"Subject: broken mime\r\nContent-Type: multipart/mixed; boundary=\r\n\r\n--nope",
    # One broken line after valid fields: real archives hold these, and servers store them.
    b"Subject: x\r\nthis line is no field\r\n\r\nbody",
    b"From: a@b\nTo: c@d,\ne@f\nSubject: wrapped without indentation\n\nbody\n",
])
def test_mail_is_accepted(data):
    assert rfc5322.looks_like_message(data) is None


@pytest.mark.parametrize("data", [
    b"",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    bytes(range(256)) * 4,
    b"just some text\nnot mail\n",
    b"Subj\x00ect: x\r\n\r\n",
    b"Subject: x\r\nbroken\x00line\r\n\r\nbody",
    b"not a field\r\nSubject: x\r\n\r\nbody",
    # An mbox envelope line: imapfs.filing drops it; what is appended never begins with one.
    b"From alice@example.org Tue Mar  5 14:32:00 2024\nSubject: x\n\nbody\n",
    b"PK\x03\x04zipdata",
])
def test_non_mail_is_refused(data):
    assert rfc5322.looks_like_message(data)


def test_internaldate_from_date_header():
    when = rfc5322.internaldate_from_headers(b"Date: Tue, 5 Mar 2024 14:32:00 +0100\r\n\r\nDate: no")
    assert when == dt.datetime(2024, 3, 5, 13, 32, tzinfo=dt.timezone.utc)
    assert rfc5322.internaldate_from_headers(b"Subject: x\r\n\r\n") is None
    assert rfc5322.internaldate_from_headers(b"Date: yesterday-ish\r\n\r\n") is None
    assert rfc5322.internaldate_from_headers(b"Subject: x\r\n\r\nDate: Tue, 5 Mar 2024 14:32:00 +0100") is None


def test_flags_from_maildir_names():
    assert rfc5322.flags_from_filename("1700000000.M1P2.host:2,FRS") == ("\\Flagged", "\\Answered", "\\Seen")
    assert rfc5322.flags_from_filename("1700000000.M1P2.host:2,DT") == ("\\Draft",)
    assert rfc5322.flags_from_filename("plain.eml") == ()
    assert rfc5322.flags_from_filename("x:2,") == ()


def test_flag_list_parsing():
    assert rfc5322.parse_flag_list("\\Seen \\Flagged $Label1") == ("\\Seen", "\\Flagged", "$Label1")
    assert rfc5322.parse_flag_list("") == ()
    assert rfc5322.parse_flag_list("\\Seen (bad)") is None


@pytest.mark.parametrize("written", [
    b"F", b"From", b"From ", b"From alice@example.org Tue Mar  5 14:3",
    b"From alice@example.org Tue Mar  5 14:32:00 2024\n",
    b"From alice@example.org Tue Mar  5 14:32:00 2024\nSubj",
    b"From alice@example.org Tue Mar  5 14:32:00 2024\nSubject: x\nbroken line\n",
    b"Subject: x\nbroken line\n",
])
def test_what_may_still_become_mail_is_not_refused_while_written(written):
    assert rfc5322.header_problem(written, more_to_come=True) is None


@pytest.mark.parametrize("written", [
    b"hi\n", b"From alice@example.org Tue Mar  5 14:32:00 2024\nhello there\n",
    b"\x89PNG\r\n", b"From x Tue Mar  5 14:32:00 2024\nSub\x00ject: x\n",
])
def test_what_cannot_be_mail_is_refused_at_the_first_write_that_shows_it(written):
    assert rfc5322.header_problem(written, more_to_come=True)


def test_envelope_line_is_told_from_the_from_field():
    assert rfc5322.is_envelope_line(b"From 0123abcd Mon Sep 17 00:00:00 2001")
    assert not rfc5322.is_envelope_line(b"From: alice@example.org")
    assert not rfc5322.is_envelope_line(b"From : alice@example.org")  # obsolete syntax, still a field
    assert rfc5322.header_problem(b"From alice Tue Mar  5 14:32:00 2024\n", more_to_come=False)


def test_header_defects_counts_broken_lines_only():
    assert rfc5322.header_defects(b"Subject: x\r\n folded\r\nbroken\r\n\r\nnot: header\r\n") == 1
    assert rfc5322.header_defects(b"Subject: x\r\n\r\nbroken body line\r\n") == 0
