"""Credentials: when the OAuth2 token command runs (lifetime, refusals), and
the command's failures as one clear message."""

from __future__ import annotations

import threading
import time

import pytest

from imapfs.config import Account, Options, find_credentials
from imapfs.credentials import RERUN_REFUSED_AFTER, Credentials, first_output_line
from imapfs.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Helper:
    """A token command: prints tokens[i] on its i-th run (the last one from then on)."""

    def __init__(self, *tokens: str, fail_from: int | None = None) -> None:
        self.tokens = list(tokens)
        self.runs = 0
        self.fail_from = fail_from

    def __call__(self, command: str) -> str:
        self.runs += 1
        if self.fail_from is not None and self.runs >= self.fail_from:
            raise ConfigError("oauth2_token_command failed with exit status 1: offline")
        return self.tokens[min(self.runs, len(self.tokens)) - 1]


def oauth(helper: Helper, clock: Clock, lifetime: float = 3000.0) -> Credentials:
    return Credentials(token_command="helper", token_lifetime=lifetime, clock=clock, run=helper)


def test_a_token_is_reused_until_its_lifetime_is_over():
    clock, helper = Clock(), Helper("t1", "t2")
    credentials = oauth(helper, clock, lifetime=100)
    assert credentials.secret() == "t1"
    clock.now += 99
    assert credentials.secret() == "t1"
    assert helper.runs == 1
    clock.now += 1
    assert credentials.secret() == "t2"
    assert helper.runs == 2
    clock.now += 99  # the lifetime counts from the renewal
    assert credentials.secret() == "t2" and helper.runs == 2


def test_a_failed_renewal_for_age_keeps_the_old_token(caplog):
    clock, helper = Clock(), Helper("t1", fail_from=2)
    credentials = oauth(helper, clock, lifetime=10)
    assert credentials.secret() == "t1"
    clock.now += 10
    assert credentials.secret() == "t1"
    assert "could not renew the OAuth2 token" in caplog.text and "t1" not in caplog.text


def test_a_refused_token_is_renewed_once_for_all_connections_refused_with_it():
    clock, helper = Clock(), Helper("t1", "t2")
    credentials = oauth(helper, clock)
    assert credentials.secret() == "t1"
    assert credentials.renew_after_refusal("t1") == "t2"
    # A second connection refused with t1 meanwhile gets t2 without another run.
    assert credentials.renew_after_refusal("t1") == "t2"
    assert helper.runs == 2


def test_a_command_printing_the_refused_token_again_gives_none_and_is_not_rerun_at_once():
    clock, helper = Clock(), Helper("t1")
    credentials = oauth(helper, clock)
    credentials.secret()
    assert credentials.renew_after_refusal("t1") is None
    assert credentials.renew_after_refusal("t1") is None
    assert helper.runs == 2  # the second refusal, moments later, did not run it
    clock.now += RERUN_REFUSED_AFTER
    assert credentials.renew_after_refusal("t1") is None
    assert helper.runs == 3


def test_concurrent_refusals_run_the_command_once():
    started = threading.Event()

    def slow_helper(command: str) -> str:
        if started.is_set():
            time.sleep(0.2)
            return "t2"
        started.set()
        return "t1"

    credentials = Credentials(token_command="helper", run=slow_helper)
    credentials.secret()
    results: list[str | None] = []
    threads = [threading.Thread(target=lambda: results.append(credentials.renew_after_refusal("t1")))
               for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["t2"] * 5
    assert credentials.command_runs == 2


def test_passwords_are_never_renewed_and_never_in_repr():
    credentials = Credentials.password("hunter2")
    assert credentials.secret() == "hunter2"
    assert credentials.renew_after_refusal("hunter2") is None
    assert not credentials.oauth2
    assert "hunter2" not in repr(credentials)


def test_first_output_line_of_a_real_shell_command():
    assert first_output_line("printf ' tok\\nsecond\\n'", "oauth2_token_command", "token", strip=True) == "tok"
    assert first_output_line("printf ' pass \\n'", "password_command", "password") == " pass "
    with pytest.raises(ConfigError, match=r"^oauth2_token_command failed with exit status 3: not authorised$"):
        first_output_line("echo secret-stdout; echo 'not authorised' >&2; exit 3", "oauth2_token_command", "token")
    # pizauth's "authorise first" line carries the client secret in the URL's query: not repeated.
    pizauth = ("echo 'ERROR - Token unavailable until authorised with URL https://login.example/authorize?"
               "client_id=abc&client_secret=s3cr3t' >&2; exit 1")
    with pytest.raises(ConfigError) as raised:
        first_output_line(pizauth, "oauth2_token_command", "token")
    assert str(raised.value).endswith("with URL https://login.example/authorize?...")
    with pytest.raises(ConfigError, match="printed no token"):
        first_output_line("echo '   '", "oauth2_token_command", "token", strip=True)
    with pytest.raises(ConfigError, match="did not finish within 1 s"):
        first_output_line("sleep 5", "oauth2_token_command", "token", timeout=1)


def test_find_credentials_runs_the_token_command_before_mounting(tmp_path):
    account = Account(user="alice", host="mail.example", port=993, implicit_tls=True)
    marker = tmp_path / "ran"
    credentials = find_credentials(account, Options(oauth2_token_command=f"touch {marker}; echo tok"),
                                   environ={"IMAPFS_PASSWORD": "ignored"})
    assert credentials.oauth2 and marker.exists() and credentials.secret() == "tok"
    with pytest.raises(ConfigError, match="either oauth2_token_command or password_command"):
        find_credentials(account, Options(oauth2_token_command="echo t", password_command="echo p"))
    with pytest.raises(ConfigError, match="exit status 1"):
        find_credentials(account, Options(oauth2_token_command="false"))
    password = find_credentials(account, Options(), environ={"IMAPFS_PASSWORD": "pw"})
    assert not password.oauth2 and password.secret() == "pw"
