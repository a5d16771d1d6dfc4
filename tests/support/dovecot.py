"""A real, throwaway Dovecot IMAP server on loopback, for integration tests and the demo.

Why a real server and not a fake: the bugs worth catching in imapfs live in the
conversation with a real IMAP server (literal sizes, modified UTF-7 folder names,
UIDVALIDITY, APPENDUID, IDLE, connection drops, TLS verification). Dovecot is the
reference implementation most providers resemble, and Debian ships it.

How it is isolated: everything (config, TLS material, mail, logs, sockets, state)
lives under one base directory; Dovecot is started with ``-c`` on a config written
here that includes nothing from /etc/dovecot, listens on 127.0.0.1 only, on free
ports, and runs in its own session so ``stop()`` can account for every process.

Why root: Dovecot's master must start as root to chroot the login processes and
switch to the unprivileged ``dovenull`` (login) and ``dovecot`` (auth, stats, mail)
users; its login and mail processes refuse to run as root. The mail is owned by the
``dovecot`` user, which is also why that user (and not e.g. ``mail``) is the mail uid:
it is in the ``dovecot`` group that may write the stats-writer socket.

Also a CLI (see ``main``)::

    python -m tests.support.dovecot --dir DIR [--seed demo] [--detach]
    python -m tests.support.dovecot --stop --dir DIR
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import imapclient
from imapclient.exceptions import LoginError

DOVECOT_BIN = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVEADM_BIN = shutil.which("doveadm") or "/usr/bin/doveadm"
OPENSSL_BIN = shutil.which("openssl") or "/usr/bin/openssl"

#: Unprivileged users created by Debian's dovecot-core package.
LOGIN_USER = "dovenull"
INTERNAL_USER = "dovecot"

#: Unix sockets live under base_dir (e.g. ``login/imap-urlauth``), and a socket path
#: must fit in sun_path (108 bytes); longer base dirs get a short run dir in /tmp.
_MAX_RUN_DIR_LEN = 70

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class DovecotError(RuntimeError):
    """Dovecot could not be started, stopped or driven; the message carries the log tail."""


class Dovecot:
    """One Dovecot instance with one user, on free loopback ports, with its own CA.

    ``start()``/``stop()`` may be repeated (``restart()``): ports, certificates and
    mail survive, so tests can check reconnection to "the same server". A base dir
    created here (``base_dir=None``) is deleted by ``__exit__``; a given one is kept,
    which is how the CLI persists a demo account across runs.

    The dovecot users must be able to traverse every parent of the base dir; start()
    adds o+x where missing. Avoid pytest's tmp_path for it: each new pytest session
    resets /tmp/pytest-of-$USER to 0700, which breaks a server still running there
    ("Temporary authentication failure" and "missing +x perm" in the log).
    """

    host: str = "127.0.0.1"

    def __init__(
        self,
        base_dir: Path | None = None,
        user: str = "alice",
        password: str = "secret pass",
        *,
        imaps_port: int = 0,
        imap_port: int = 0,
        max_user_connections: int = 100,
        trash_mailbox: str = "Trash",
        namespace_prefix: str = "",
        separator: str = "/",
        oauth2_introspection_url: str | None = None,
        oauth2_mechanisms: tuple[str, ...] = ("oauthbearer", "xoauth2"),
        fts: str | None = None,
    ) -> None:
        # passwd-file is colon separated: these characters would corrupt the user db.
        for value, what in ((user, "user"), (password, "password")):
            if any(ch in value for ch in ":\n\r\0"):
                raise ValueError(f"{what} must not contain ':' or line breaks")
        if not user or "/" in user:
            raise ValueError("user must be a non-empty name without '/'")
        self._owns_base_dir = base_dir is None
        if base_dir is None:
            base_dir = Path(tempfile.mkdtemp(prefix="imapfs-dovecot-"))
        self.base_dir = Path(base_dir).absolute()
        self.user = user
        self.password = password
        #: 0 means "pick a free port at the first start()"; then fixed for restarts.
        self.imaps_port = imaps_port
        self.imap_port = imap_port
        #: Dovecot's mail_max_userip_connections (its own default is 10).
        self.max_user_connections = max_user_connections
        #: The mailbox with the \\Trash special-use attribute (e.g. "P/Trash", as INBOX.Trash on Courier).
        self.trash_mailbox = trash_mailbox
        #: The personal namespace: ``namespace_prefix="INBOX.", separator="."`` makes the
        #: server keep every folder under INBOX. and refuse other names, as Courier and
        #: Cyrus (Debian's defaults) do. Mailbox names in its config are relative to the
        #: prefix: trash_mailbox "Trash" is then INBOX.Trash.
        self.namespace_prefix = namespace_prefix
        self.separator = separator
        #: When set, logins with OAUTHBEARER/XOAUTH2 are checked by Dovecot's oauth2 passdb,
        #: which POSTs the token to this URL (see tests/support/oauth2.py); the password
        #: passdb keeps serving PLAIN/LOGIN, so password logins work as before.
        self.oauth2_introspection_url = oauth2_introspection_url
        #: The SASL mechanisms offered for tokens (e.g. only xoauth2, as some providers do).
        self.oauth2_mechanisms = oauth2_mechanisms
        #: A full-text search backend ("xapian": Debian's dovecot-fts-xapian) indexing mail as
        #: it arrives, so SEARCH BODY/TEXT answer from an index as a provider's server does.
        #: None (the default): Dovecot reads every message for such searches.
        self.fts = fts

        self.tls_dir = self.base_dir / "tls"
        self.ca_file = self.tls_dir / "ca.pem"
        self.other_ca_file = self.tls_dir / "other-ca.pem"
        self.config_file = self.base_dir / "dovecot.conf"
        self.users_file = self.base_dir / "users"
        self.oauth2_file = self.base_dir / "dovecot-oauth2.conf.ext"
        self.mail_dir = self.base_dir / "mail"
        self.home_dir = self.base_dir / "home"
        self.state_dir = self.base_dir / "state"
        self.log_file = self.base_dir / "dovecot.log"
        self.master_output_file = self.base_dir / "master.out"
        self.run_dir = run_dir_for(self.base_dir)
        self._proc: subprocess.Popen[bytes] | None = None

    # ---------------------------------------------------------------- properties

    @property
    def url(self) -> str:
        return f"imaps://{self.user}@{self.host}:{self.imaps_port}"

    @property
    def starttls_url(self) -> str:
        return f"imap://{self.user}@{self.host}:{self.imap_port}"

    @property
    def pid(self) -> int | None:
        """The master's pid while it runs."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        return None

    @property
    def running(self) -> bool:
        return self.pid is not None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the master and return once both ports answer; raise DovecotError otherwise."""
        if self.running:
            raise DovecotError(f"Dovecot in {self.base_dir} is already running (pid {self.pid})")
        if os.geteuid() != 0:
            raise DovecotError("the test Dovecot needs root: its master switches to dovenull/dovecot users")
        for binary in (DOVECOT_BIN, DOVEADM_BIN, OPENSSL_BIN):
            if not os.access(binary, os.X_OK):
                raise DovecotError(f"{binary} not found: run scripts/setup (dovecot-imapd, openssl)")
        self._prepare()
        with open(self.master_output_file, "ab") as out:
            # -F keeps the master our child (a pid we own, no pid-file races); a new
            # session lets stop() find every process it forked, even orphans.
            self._proc = subprocess.Popen(
                [DOVECOT_BIN, "-F", "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_until_ready()
        except BaseException:
            with contextlib.suppress(DovecotError):
                self.stop()
            raise

    def stop(self) -> None:
        """Stop the master and every process of its session; bounded, raises if something survives."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _stop_session(proc.pid, proc)

    def restart(self) -> None:
        """Stop and start again on the same ports with the same mail (UIDVALIDITY is kept)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop, and delete the base dir if this object created it (mail and all)."""
        self.stop()
        if self.run_dir != self.base_dir / "run":  # the short socket dir in /tmp holds nothing to keep
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if self._owns_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> Dovecot:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---------------------------------------------------------------- driving it

    def kick(self) -> None:
        """Drop all of the user's IMAP connections server-side (``doveadm kick``).

        Returns once doveadm has signalled the processes; the client sockets close
        a moment later, so a caller checking for the drop should poll.
        """
        result = subprocess.run(
            [DOVEADM_BIN, "-c", str(self.config_file), "kick", self.user],
            capture_output=True,
            text=True,
            timeout=STOP_TIMEOUT,
            check=False,
        )
        # doveadm exits 68 (EX_NOUSER) when the user had no connection: nothing to drop is fine.
        if result.returncode not in (0, 68):
            raise DovecotError(
                f"doveadm kick failed ({result.returncode}): {result.stdout}{result.stderr}\n{self._log_tail()}"
            )

    def connections(self) -> int:
        """How many IMAP connections the user has now, as Dovecot counts them for its limit."""
        result = subprocess.run(
            [DOVEADM_BIN, "-c", str(self.config_file), "who", "-1", self.user],
            capture_output=True,
            text=True,
            timeout=STOP_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise DovecotError(f"doveadm who failed ({result.returncode}): {result.stdout}{result.stderr}")
        return sum(1 for line in result.stdout.splitlines()[1:] if line.split()[:1] == [self.user])

    def ssl_context(self, ca_file: Path | None = None) -> ssl.SSLContext:
        """A verifying client context that trusts only ``ca_file`` (default: this server's CA)."""
        return ssl.create_default_context(cafile=str(ca_file or self.ca_file))

    def client(self, timeout: float = 30.0) -> imapclient.IMAPClient:
        """A new client, logged in over verified TLS; the caller logs out (or uses ``with``)."""
        client = imapclient.IMAPClient(
            self.host, port=self.imaps_port, ssl=True, ssl_context=self.ssl_context(), timeout=timeout
        )
        try:
            client.login(self.user, self.password)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                client.shutdown()
            if isinstance(exc, LoginError):
                # Our own credentials: a refusal is a server problem, and its reason is in the log.
                raise DovecotError(f"login as {self.user} failed: {exc}\n{self._log_tail()}") from exc
            raise
        return client

    def append(
        self,
        folder: str,
        message: bytes,
        flags: Iterable[bytes | str] = (),
        msg_time: datetime.datetime | None = None,
    ) -> int:
        """Append one message and return its UID (from the APPENDUID response code)."""
        with self.client() as client:
            return _append(client, folder, message, flags, msg_time)

    def create_folder(self, name: str) -> None:
        """Create and subscribe a folder.

        ``name`` is unicode with '/' separators; imapclient sends it as modified UTF-7.
        Creating "a/b" without "a" leaves "a" a \\Noselect placeholder, as on most servers.
        """
        with self.client() as client:
            client.create_folder(name)
            client.subscribe_folder(name)

    def delete_folder(self, name: str) -> None:
        """Delete a folder; per IMAP DELETE, its subfolders (if any) stay."""
        with self.client() as client:
            client.delete_folder(name)

    def log_text(self) -> str:
        """The Dovecot log plus anything the master printed before its log process ran."""
        parts = []
        for path in (self.master_output_file, self.log_file):
            with contextlib.suppress(FileNotFoundError):
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    def seed_demo(self) -> int:
        """Create the demo folders and messages (see corpus.demo_messages); returns the count."""
        from .corpus import demo_folders, demo_messages

        with self.client() as client:
            existing = {name for _flags, _delim, name in client.list_folders()}
            for name in demo_folders():
                if name not in existing:
                    client.create_folder(name)
                client.subscribe_folder(name)
            messages = demo_messages()
            for msg in messages:
                _append(client, msg.folder, msg.raw, msg.flags, msg.date)
        return len(messages)

    # ---------------------------------------------------------------- internals

    def _prepare(self) -> None:
        """Create dirs, TLS material, the user db and the config; pick ports on first start."""
        mail_pw = pwd.getpwnam(INTERNAL_USER)
        pwd.getpwnam(LOGIN_USER)  # fail early (KeyError) if the package's users are missing
        uid, gid = mail_pw.pw_uid, mail_pw.pw_gid

        self.base_dir.mkdir(parents=True, exist_ok=True)
        # mkdtemp makes 0700: the dovecot users must traverse to the mail and sockets.
        self.base_dir.chmod(0o755)
        _make_traversable(self.base_dir.parent)
        self.state_dir.mkdir(mode=0o755, exist_ok=True)
        self.run_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        _make_traversable(self.run_dir.parent)
        for path in (self.mail_dir, self.home_dir, *([self.base_dir / "index"] if self.fts else [])):
            path.mkdir(mode=0o750, exist_ok=True)
            os.chown(path, uid, gid)

        self._make_tls()

        home = self.home_dir / self.user
        home.mkdir(mode=0o700, exist_ok=True)
        os.chown(home, uid, gid)
        # Read by the auth process, which runs as the dovecot user.
        self.users_file.write_text(f"{self.user}:{{PLAIN}}{self.password}:{uid}:{gid}::{home}::\n")
        os.chown(self.users_file, 0, gid)
        self.users_file.chmod(0o640)

        if self.oauth2_introspection_url:
            self.oauth2_file.write_text(self._oauth2_text())
            os.chown(self.oauth2_file, 0, gid)
            self.oauth2_file.chmod(0o640)

        if not self.imaps_port or not self.imap_port:
            free = iter(port for port in _free_ports(3) if port not in (self.imaps_port, self.imap_port))
            self.imaps_port = self.imaps_port or next(free)
            self.imap_port = self.imap_port or next(free)
        self.config_file.write_text(self._config_text(uid))

    def _make_tls(self) -> None:
        make_tls(self.tls_dir)

    def _config_text(self, mail_uid: int) -> str:
        tls = self.tls_dir
        return f"""\
# Generated by tests/support/dovecot.py for a throwaway test server.
# Self-contained on purpose: nothing under /etc/dovecot is included.
protocols = imap
listen = 127.0.0.1
base_dir = {self.run_dir}
state_dir = {self.state_dir}
log_path = {self.log_file}
info_log_path = {self.log_file}
debug_log_path = {self.log_file}
auth_verbose = yes

default_login_user = {LOGIN_USER}
default_internal_user = {INTERNAL_USER}
default_internal_group = {INTERNAL_USER}
first_valid_uid = {mail_uid}
last_valid_uid = 0

# TLS is implicit on the imaps listener; the plain listener offers STARTTLS but
# also accepts plaintext LOGIN, for tests of imapfs's insecure_plaintext option.
ssl = yes
ssl_cert = <{tls / "server.pem"}
ssl_key = <{tls / "server.key"}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = plain login{self._oauth2_mechanisms_text(" ")}
# Wrong-password tests should not each wait the default 2 s.
auth_failure_delay = 0

passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%u {self.users_file}
}}
{self._oauth2_passdb_text()}userdb {{
  driver = passwd-file
  args = username_format=%u {self.users_file}
}}

# LAYOUT=fs: '/' is the hierarchy separator on disk too, so dots in names are plain characters.
mail_location = maildir:{self.mail_dir}/%u:LAYOUT=fs{self._index_location_text()}
mail_plugins ={self._fts_plugins_text()}
# A throwaway server: durability is not worth the fsync time.
mail_fsync = never

namespace inbox {{
  inbox = yes
  separator = {self.separator}
  prefix = {self.namespace_prefix}
  mailbox "{self.trash_mailbox}" {{
    special_use = \\Trash
    auto = subscribe
  }}
  mailbox Sent {{
    special_use = \\Sent
  }}
  mailbox Drafts {{
    special_use = \\Drafts
  }}
  mailbox Junk {{
    special_use = \\Junk
  }}
}}

{self._fts_text()}protocol imap {{
  # imapfs pools connections and tests mount many times: the default 10 is too few.
  mail_max_userip_connections = {self.max_user_connections}
}}

service imap-login {{
  inet_listener imap {{
    address = {self.host}
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    address = {self.host}
    port = {self.imaps_port}
    ssl = yes
  }}
  # One login process per connection, and it proxies TLS for the connection's
  # lifetime: allow more than the default 100 concurrent connections.
  process_limit = 500
}}
service imap {{
  process_limit = 500
}}
# anvil's auth penalty delays every login from an IP after a failed one, up to 15 s
# (auth_failure_delay does not cover it): one wrong-password test would slow the
# rest of the session. mode 0 on its socket is Dovecot's documented off switch.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""

    def _index_location_text(self) -> str:
        """With an fts index, Dovecot's index files live apart from the mail: the
        xapian plugin keeps its databases in a "xapian-indexes" directory of the
        index location, which in the mail root (LAYOUT=fs) LIST would show as a folder."""
        return f":INDEX={self.base_dir / 'index'}/%u" if self.fts else ""  # made by _prepare

    def _fts_plugins_text(self) -> str:
        if self.fts is None:
            return ""
        if self.fts != "xapian":
            raise ValueError(f"unknown fts backend {self.fts!r} (only 'xapian' is configured here)")
        return " fts fts_xapian"

    def _fts_text(self) -> str:
        if self.fts is None:
            return ""
        # fts_enforced: a SEARCH waits for the index rather than reading every message;
        # partial=3: substrings of 3 or more characters are found, as without an index.
        return """plugin {
  fts = xapian
  fts_xapian = partial=3 full=20 verbose=0
  fts_autoindex = yes
  fts_enforced = yes
}
service indexer-worker {
  vsz_limit = 2G
}

"""

    def _oauth2_passdb_text(self) -> str:
        if not self.oauth2_introspection_url:
            return ""
        return f"""passdb {{
  driver = oauth2
  mechanisms = {self._oauth2_mechanisms_text()}
  args = {self.oauth2_file}
}}
"""

    def _oauth2_mechanisms_text(self, prefix: str = "") -> str:
        return prefix + " ".join(self.oauth2_mechanisms) if self.oauth2_introspection_url else ""

    def _oauth2_text(self) -> str:
        # No tokeninfo_url: every login goes straight to introspection, and
        # Dovecot's auth cache is off (auth_cache_size defaults to 0), so the
        # endpoint's answer of the moment decides each login.
        return (
            f"introspection_mode = post\n"
            f"introspection_url = {self.oauth2_introspection_url}\n"
            "username_attribute = username\n"
            "username_format = %u\n"
            "active_attribute = active\n"
            "active_value = true\n"
            "force_introspection = yes\n"
            "timeout_msecs = 5000\n"
        )

    def _wait_until_ready(self) -> None:
        """Poll until the plain port greets and the TLS port accepts, or the master dies."""
        deadline = time.monotonic() + START_TIMEOUT
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise DovecotError(
                    f"Dovecot exited with status {self._proc.returncode} while starting\n{self._log_tail()}"
                )
            try:
                with socket.create_connection((self.host, self.imap_port), timeout=1.0) as sock:
                    greeting = sock.recv(200)
                if not greeting.startswith(b"* OK"):
                    raise DovecotError(f"unexpected greeting on port {self.imap_port}: {greeting!r}")
                with socket.create_connection((self.host, self.imaps_port), timeout=1.0):
                    return
            except OSError as exc:
                last_error = exc
            time.sleep(0.05)
        raise DovecotError(
            f"Dovecot did not accept connections on {self.host}:{self.imap_port}/{self.imaps_port} "
            f"within {START_TIMEOUT:.0f} s ({last_error})\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 40) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return f"--- last {len(tail)} lines of the Dovecot log ({self.log_file}) ---\n" + "\n".join(tail)


# -------------------------------------------------------------------- helpers


def run_dir_for(base_dir: Path) -> Path:
    """Dovecot's base_dir (sockets, master.pid) for a server dir; deterministic so --stop finds it."""
    run_dir = Path(base_dir).absolute() / "run"
    if len(str(run_dir)) <= _MAX_RUN_DIR_LEN:
        return run_dir
    digest = hashlib.sha256(str(run_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"imapfs-dovecot-run-{digest}"


def _append(
    client: imapclient.IMAPClient,
    folder: str,
    message: bytes,
    flags: Iterable[bytes | str],
    msg_time: datetime.datetime | None,
) -> int:
    response = client.append(folder, message, flags=tuple(flags), msg_time=msg_time)
    match = re.search(rb"APPENDUID \d+ (\d+)", response if isinstance(response, bytes) else response.encode())
    if not match:
        raise DovecotError(f"APPEND to {folder!r} gave no APPENDUID: {response!r}")
    return int(match.group(1))


def make_tls(tls_dir: Path) -> None:
    """In tls_dir: a CA (ca.pem), a server cert for 127.0.0.1/localhost signed by it
    (server.pem, server.key), and an unrelated CA (other-ca.pem); kept if already there.
    Shared with the other test servers (imap4d.py), so one CA can verify them all."""
    tls_dir.mkdir(mode=0o755, exist_ok=True)
    ca_file, other_ca_file = tls_dir / "ca.pem", tls_dir / "other-ca.pem"
    server_cert, server_key = tls_dir / "server.pem", tls_dir / "server.key"
    if ca_file.exists() and server_cert.exists() and other_ca_file.exists():
        return
    _make_ca(tls_dir / "ca.key", ca_file, "imapfs test CA")
    _make_ca(tls_dir / "other-ca.key", other_ca_file, "imapfs unrelated CA")
    csr = tls_dir / "server.csr"
    ext = tls_dir / "server.ext"
    ext.write_text(
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature, keyEncipherment\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n"
        # Python 3.13's default context is X509-strict: it insists on the key identifiers.
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid, issuer\n"
    )
    _openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", server_key, "-out", csr,
        "-subj", "/CN=127.0.0.1",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca_file, "-CAkey", tls_dir / "ca.key",
        "-CAcreateserial", "-CAserial", tls_dir / "ca.srl", "-days", "3650", "-sha256",
        "-extfile", ext, "-out", server_cert,
    )  # fmt: skip
    for key in tls_dir.glob("*.key"):
        key.chmod(0o600)
    for pem in tls_dir.glob("*.pem"):
        pem.chmod(0o644)


def _openssl(*args: str | Path) -> None:
    result = subprocess.run([OPENSSL_BIN, *map(str, args)], capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise DovecotError(f"openssl {args[0]} failed: {result.stderr}")


def _make_ca(key: Path, cert: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "3650",
        "-sha256", "-subj", f"/CN={name}",
        "-addext", "basicConstraints = critical, CA:TRUE",
        "-addext", "keyUsage = critical, keyCertSign, cRLSign",
    )  # fmt: skip


def _free_ports(count: int) -> list[int]:
    """Ports the kernel says are free now; held open together so they are distinct."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _make_traversable(path: Path) -> None:
    """Add search (o+x) permission to ``path`` and its parents, so dovecot users can reach the mail.

    Only the execute bit, never read: a 0700 parent becomes 0701.
    """
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, session id) of a process, or None if it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data.rsplit(")", 1)[1].split()
    return fields[0], int(fields[3])


def _alive(pid: int) -> bool:
    info = _proc_stat(pid)
    return info is not None and info[0] not in ("Z", "X")


def _session_members(sid: int) -> list[int]:
    """Live processes of session ``sid``: the master and whatever it forked, orphans included."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            info = _proc_stat(int(entry.name))
            if info is not None and info[1] == sid and info[0] not in ("Z", "X"):
                pids.append(int(entry.name))
    return pids


def _wait_gone(pids: Iterable[int], proc: subprocess.Popen[bytes] | None, timeout: float) -> list[int]:
    """Wait until none of ``pids`` is alive (reaping ``proc`` if it is ours); return survivors."""
    deadline = time.monotonic() + timeout
    pids = list(pids)
    while True:
        if proc is not None:
            proc.poll()
        pids = [pid for pid in pids if _alive(pid)]
        if not pids or time.monotonic() >= deadline:
            return pids
        time.sleep(0.05)


def _signal(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _stop_session(master_pid: int, proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the master (it stops its children), then kill whatever of its session is left."""
    _signal([master_pid], signal.SIGTERM)
    if _wait_gone([master_pid], proc, STOP_TIMEOUT):
        _signal(_session_members(master_pid), signal.SIGKILL)
    # The master was started as a session leader, so its session id is its pid.
    leftovers = _session_members(master_pid)
    if leftovers:
        _signal(leftovers, signal.SIGTERM)
        leftovers = _wait_gone(leftovers, proc, 2.0)
        _signal(leftovers, signal.SIGKILL)
        leftovers = _wait_gone(leftovers, proc, 2.0)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)
    if leftovers or _alive(master_pid):
        raise DovecotError(f"Dovecot processes survived SIGKILL: {leftovers or [master_pid]}")


def running_master_pid(base_dir: Path) -> int | None:
    """The pid of the Dovecot master serving ``base_dir``, if one runs (checks it is really ours)."""
    base_dir = Path(base_dir).absolute()
    try:
        pid = int((run_dir_for(base_dir) / "master.pid").read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return None
    if not _alive(pid) or str(base_dir / "dovecot.conf").encode() not in cmdline:
        return None  # a stale pid file, possibly naming an unrelated process by now
    return pid


def stop_dir(base_dir: Path) -> bool:
    """Stop a (detached) Dovecot started on ``base_dir``; False if none was running."""
    pid = running_master_pid(base_dir)
    if pid is None:
        return False
    _stop_session(pid, None)
    return True


# -------------------------------------------------------------------- CLI

_STATE_FILE = "state.json"
_SEEDED_MARKER = ".seeded-demo"


def _info(server: Dovecot, pid: int | None) -> dict[str, object]:
    return {
        "url": server.url,
        "starttls_url": server.starttls_url,
        "ca_file": str(server.ca_file),
        "user": server.user,
        "password": server.password,
        "pid": pid,
        "imaps_port": server.imaps_port,
        "imap_port": server.imap_port,
        "dir": str(server.base_dir),
        "log": str(server.log_file),
    }


def _load_state(base_dir: Path) -> dict[str, object]:
    try:
        state = json.loads((base_dir / _STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def main(argv: list[str] | None = None) -> int:
    """Run a Dovecot in ``--dir`` until SIGTERM/SIGINT, or ``--detach``; ``--stop`` stops a detached one.

    The same dir keeps its user, password, ports (when still free), CA and mail
    across runs, so a demo mount or a mail client configured once keeps working.
    """
    parser = argparse.ArgumentParser(prog="python -m tests.support.dovecot", description=main.__doc__)
    parser.add_argument("--dir", required=True, type=Path, help="server directory (created if missing)")
    parser.add_argument("--seed", choices=["demo"], help="add demo folders and mail (once per dir)")
    parser.add_argument("--detach", action="store_true", help="leave Dovecot running and exit")
    parser.add_argument("--stop", action="store_true", help="stop the Dovecot running in --dir")
    parser.add_argument("--user", help="user name (default: alice, or the dir's previous one)")
    parser.add_argument("--password", help="password (default: 'secret pass', or the dir's previous one)")
    args = parser.parse_args(argv)
    base_dir: Path = args.dir.absolute()

    if args.stop:
        stopped = stop_dir(base_dir)
        print(json.dumps({"stopped": stopped, "dir": str(base_dir)}))
        if not stopped:
            print(f"no Dovecot running in {base_dir}", file=sys.stderr)
        return 0

    state = _load_state(base_dir)
    running_pid = running_master_pid(base_dir)
    if running_pid is not None:
        if args.detach and "url" in state:
            state["pid"] = running_pid
            print(json.dumps(state))
            return 0
        print(f"Dovecot already runs in {base_dir} (pid {running_pid}); use --stop first", file=sys.stderr)
        return 1

    user = args.user or str(state.get("user", "alice"))
    password = args.password or str(state.get("password", "secret pass"))
    ports = [state.get("imaps_port"), state.get("imap_port")]
    if not all(isinstance(port, int) and _port_is_free(port) for port in ports):
        ports = [0, 0]  # first run, or someone took a port meanwhile: clients must re-read the URL
    server = Dovecot(base_dir, user=user, password=password, imaps_port=int(ports[0]), imap_port=int(ports[1]))

    try:
        server.start()
        state_file = base_dir / _STATE_FILE
        state_file.write_text(json.dumps(_info(server, None), indent=2) + "\n")
        state_file.chmod(0o600)
        if args.seed == "demo" and not (base_dir / _SEEDED_MARKER).exists():
            count = server.seed_demo()
            (base_dir / _SEEDED_MARKER).write_text(f"{count}\n")
    except BaseException:
        server.stop()
        raise
    print(json.dumps(_info(server, server.pid)), flush=True)
    if args.detach:
        # Popen does not kill its child when we exit; the master keeps its own session.
        return 0

    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        while not stop_requested and server.running:
            time.sleep(0.2)
    finally:
        died = not server.running
        server.stop()
    if died:
        print(f"Dovecot exited unexpectedly; see {server.log_file}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
