import datetime as dt

import pytest

from imapfs import rfc5322


@pytest.mark.parametrize("data", [
    b"Subject: x\r\n\r\nbody",
    b"From: a@b\nTo: c@d\n\nunix line endings",
    b"Subject: only a header",
    b"X-Folded: a\r\n  b\r\nSubject: y\r\n\r\n\x00binary body is fine",
    b"Subject: broken mime\r\nContent-Type: multipart/mixed; boundary=\r\n\r\n--nope",
])
def test_mail_is_accepted(data):
    assert rfc5322.looks_like_message(data) is None


@pytest.mark.parametrize("data", [
    b"",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    bytes(range(256)) * 4,
    b"just some text\nnot mail\n",
    b"Subject: x\r\nthis line is no field\r\n\r\nbody",
    b"Subj\x00ect: x\r\n\r\n",
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
