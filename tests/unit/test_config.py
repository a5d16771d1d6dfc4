import os

import pytest

from imapfs.cli import parse_arguments
from imapfs.config import Options, find_password, parse_options, parse_url
from imapfs.errors import ConfigError


def test_url_forms():
    a = parse_url("imaps://alice@example.com")
    assert (a.user, a.host, a.port, a.implicit_tls) == ("alice", "example.com", 993, True)
    b = parse_url("imap://bob%40corp.example@mail.example:1143")
    assert (b.user, b.host, b.port, b.implicit_tls) == ("bob@corp.example", "mail.example", 1143, False)
    c = parse_url("imaps://carol@corp.example@[::1]:9993")
    assert (c.user, c.host, c.port) == ("carol@corp.example", "::1", 9993)


@pytest.mark.parametrize("url", ["http://a@b", "imaps://host-only", "imaps://a:pw@b", "imaps://a@b:99999",
                                 "imaps://a@"])
def test_bad_urls_are_refused_with_a_reason(url):
    with pytest.raises(ConfigError):
        parse_url(url)


def test_options_parse_and_pass_through():
    options, fuse_opts = parse_options(["ro,connections=8,ca_file=/x/ca.pem", "nosuid,nodev,rw,_netdev,noauto"])
    assert options.ro and options.connections == 8 and options.ca_file == "/x/ca.pem"
    assert fuse_opts == {"nosuid": True, "nodev": True}


@pytest.mark.parametrize("spec", ["bogus", "connections=0", "connections=many", "delete=shred", "ca_file"])
def test_bad_options_are_errors(spec):
    with pytest.raises(ConfigError):
        parse_options([spec])


def test_every_option_has_help():
    rows = Options.describe()
    assert {r[0] for r in rows} >= {"ro", "ca_file", "password_command", "insecure_plaintext", "connections",
                                    "debug", "allow_other"}
    assert all(r[2] for r in rows)


def test_password_sources_in_order(tmp_path):
    account = parse_url("imaps://alice@mail.example")
    netrc = tmp_path / "netrc"
    netrc.write_text("machine mail.example login alice password from-netrc\n")
    os.chmod(netrc, 0o600)
    cmd = Options(password_command="echo from-command")
    assert find_password(account, cmd, environ={"IMAPFS_PASSWORD": "from-env"}, netrc_file=str(netrc)) == "from-env"
    assert find_password(account, cmd, environ={}, netrc_file=str(netrc)) == "from-command"
    assert find_password(account, Options(), environ={}, netrc_file=str(netrc)) == "from-netrc"
    with pytest.raises(ConfigError, match="no password"):
        find_password(account, Options(), environ={}, netrc_file=str(tmp_path / "none"), interactive=False)
    with pytest.raises(ConfigError, match="exit status"):
        find_password(account, Options(password_command="false"), environ={}, interactive=False)


def test_arguments_in_fstab_order():
    args = parse_arguments(["imaps://a@b", "/mnt", "-o", "rw,nosuid", "-oro"])
    assert args.positional == ["imaps://a@b", "/mnt"] and args.option_specs == ["rw,nosuid", "ro"]
    with pytest.raises(ConfigError):
        parse_arguments(["--bogus"])
