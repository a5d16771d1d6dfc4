"""What imapfs logs in with: a password, or an OAuth2 access token that a
command prints, renewed as it ages or when the server refuses it.

The renewal rule (README, "Signing in with OAuth2"):

- ``oauth2_token_command`` runs once before the mount; the first line of
  its output is the token. Every new connection logs in with that token for
  ``oauth2_token_lifetime`` seconds after the command printed it (default 50
  minutes: Microsoft's and Google's access tokens live about an hour, and
  helpers such as oama and pizauth hand out a fresh one once the old one is
  near its end). The first login after that runs the command again.
- A login refused with the token in use runs the command again at once, and
  the login is retried once with what it printed, if that is a different
  token. Connections refused together run the command once between them.
- The command runs through the shell with the token coming back on its
  stdout only, never in anybody's argv; the token is kept in memory only,
  and no message imapfs logs or prints contains it.

Connections already logged in stay logged in when their token expires
(servers check a token at login); only new ones need a fresh token.

Pure apart from running the command; imports only the error tree.
"""

from __future__ import annotations

import logging
import re
import subprocess
import threading
import time
from collections.abc import Callable

from imapfs.errors import ConfigError

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 60.0
_URL_QUERY = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s?#]*)[?#]\S*", re.IGNORECASE)
#: A command that printed a token the server then refused is not run again
#: sooner than this for the same token (its helper has nothing newer yet).
RERUN_REFUSED_AFTER = 5.0


def first_output_line(command: str, option: str, what: str, *, strip: bool = False,
                      timeout: float = COMMAND_TIMEOUT) -> str:
    """Run a user's shell command and return the first line of its stdout
    (without surrounding white space if `strip`: tokens have none, passwords may).

    Its stdin is /dev/null (a mount has no terminal to ask on). The error
    messages name the option and quote the command's last line on stderr
    (where helpers say why they failed), never its stdout, and without URL
    query strings: pizauth's "authorise with URL ..." carries the client
    secret there, and a renewal's failure is logged.
    """
    try:
        done = subprocess.run(command, shell=True, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{option} did not finish within {timeout:.0f} s") from None
    except OSError as exc:
        raise ConfigError(f"{option} could not be started: {exc.strerror or exc}") from None
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()
        last = _URL_QUERY.sub(r"\1?...", said[-1].strip())[:200] if said else ""
        reason = f": {last}" if last else ""
        raise ConfigError(f"{option} failed with exit status {done.returncode}{reason}")
    lines = done.stdout.decode("utf-8", "replace").splitlines()
    line = (lines[0].strip() if strip else lines[0]) if lines else ""
    if not line:
        raise ConfigError(f"{option} printed no {what}")
    return line


class Credentials:
    """The secret for the next login, shared by every connection of a mount.

    ``secret()`` is the password or the current token; ``renew_after_refusal``
    is called with the token a server just refused and returns a different
    one to try, or None. Thread safe: ``_lock`` guards the token and its age,
    and is held while the command runs, so concurrent callers wait for one
    run instead of starting their own.
    """

    def __init__(self, *, password: str | None = None, token_command: str | None = None,
                 token_lifetime: float = 3000.0, clock: Callable[[], float] = time.monotonic,
                 run: Callable[[str], str] | None = None) -> None:
        if (password is None) == (token_command is None):
            raise ValueError("give a password or a token command")
        self._password = password
        self._command = token_command
        self._lifetime = token_lifetime
        self._clock = clock
        self._run = run or (lambda command: first_output_line(command, "oauth2_token_command", "token",
                                                                    strip=True))
        self._lock = threading.Lock()
        self._token: str | None = None
        self._token_since = 0.0  # clock() when the command printed _token
        self._refused_at: float | None = None  # clock() when a server last refused _token
        self.command_runs = 0

    @classmethod
    def password(cls, password: str) -> Credentials:
        return cls(password=password)

    @property
    def oauth2(self) -> bool:
        return self._command is not None

    def __repr__(self) -> str:  # never the secret, whatever prints this object
        return f"<Credentials {'oauth2_token_command' if self.oauth2 else 'password'}>"

    def secret(self) -> str:
        """The password, or a token no older than the lifetime (running the command if needed).

        When the command fails on a renewal for age, the old token is used:
        it may still be valid, and the server's answer will tell.
        """
        if self._password is not None:
            return self._password
        with self._lock:
            if self._token is None:
                self._fetch_locked()
            elif self._clock() - self._token_since >= self._lifetime:
                try:
                    self._fetch_locked()
                    log.info("OAuth2 token renewed (older than oauth2_token_lifetime=%.0f s)", self._lifetime)
                except ConfigError as exc:
                    log.warning("could not renew the OAuth2 token (%s); trying the old one", exc)
            assert self._token is not None
            return self._token

    def renew_after_refusal(self, refused: str) -> str | None:
        """A token other than `refused` to log in with, or None if there is none.

        Runs the command again unless another connection already did since
        `refused` was handed out, or it printed this same refused token
        moments ago.
        """
        if self._command is None:
            return None
        with self._lock:
            if self._token != refused:
                return self._token
            now = self._clock()
            if self._refused_at is not None and now - self._refused_at < RERUN_REFUSED_AFTER:
                return None
            self._refused_at = now
            self._fetch_locked()
            if self._token == refused:
                return None
            self._refused_at = None
            log.info("OAuth2 token refused by the server; oauth2_token_command printed a new one")
            return self._token

    def _fetch_locked(self) -> None:
        """Run the token command (``_lock`` held)."""
        assert self._command is not None
        self.command_runs += 1
        token = self._run(self._command)
        if token != self._token:
            self._refused_at = None
        self._token = token
        self._token_since = self._clock()
