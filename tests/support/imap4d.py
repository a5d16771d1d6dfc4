"""A real, throwaway GNU Mailutils imap4d on loopback with implicit TLS, for tests.

Why this server: it offers neither MOVE nor UIDPLUS, so it is where imapfs's
careful move and delete (UID COPY, then a plain EXPUNGE only when nothing
else is marked \\Deleted) meet a real implementation. Debian's
mailutils-imap4d installs beside Dovecot.

How it is isolated, as tests/support/dovecot.py does: config, TLS material,
passwords, mail and log under one base dir; ``imap4d --config-file`` reads
nothing else (``--config-file`` implies ``--no-config``); it listens on
127.0.0.1 only, on a free port, in its own session so ``stop()`` ends every
process it forked. TLS is implicit (``tls-mode connection``) with a
certificate of the test CA (``make_tls``; pass the Dovecot's tls_dir to share
its CA, so one ca_file verifies both).

Users: imap4d's virtdomain authorization reads a passwd-like file per mail
domain (``passwd-dir/DOMAIN``, crypt(3) hashes) and logs in ``alice@DOMAIN``
as the system uid given there: ``nobody``, so the test user needs no account
on the machine and no PAM. The master runs as root to switch to it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import imapclient

from tests.support.dovecot import OPENSSL_BIN, _free_ports, _stop_session, make_tls

IMAP4D_BIN = shutil.which("imap4d") or "/usr/sbin/imap4d"
MAIL_USER = "nobody"
START_TIMEOUT = 15.0


class Imap4dError(RuntimeError):
    """imap4d could not be started or driven; the message carries the log tail."""


class Imap4d:
    """One imap4d with one user (``alice@example.test``), Maildir folders, implicit TLS."""

    host: str = "127.0.0.1"

    def __init__(self, base_dir: Path | None = None, *, tls_dir: Path | None = None,
                 local_part: str = "alice", domain: str = "example.test", password: str = "secret pass") -> None:
        self._owns_base_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="imapfs-imap4d-")).absolute()
        self.user = f"{local_part}@{domain}"
        self.local_part = local_part
        self.domain = domain
        self.password = password
        self.tls_dir = Path(tls_dir) if tls_dir else self.base_dir / "tls"
        self.ca_file = self.tls_dir / "ca.pem"
        self.config_file = self.base_dir / "imap4d.conf"
        self.passwd_dir = self.base_dir / "passwd"
        self.home = self.base_dir / "mail" / local_part
        self.spool = self.base_dir / "spool"
        self.log_file = self.base_dir / "imap4d.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"imaps://{quote(self.user, safe='')}@{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if os.geteuid() != 0:
            raise Imap4dError("the test imap4d needs root: it switches to the mail user after login")
        if not os.access(IMAP4D_BIN, os.X_OK):
            raise Imap4dError(f"{IMAP4D_BIN} not found: run scripts/setup (mailutils-imap4d)")
        self._prepare()
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                [IMAP4D_BIN, f"--config-file={self.config_file}", "--daemon", "--foreground"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _stop_session(proc.pid, proc)

    def close(self) -> None:
        self.stop()
        if self._owns_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> Imap4d:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def client(self, timeout: float = 30.0) -> imapclient.IMAPClient:
        """A new client logged in over verified TLS; the caller logs out."""
        client = imapclient.IMAPClient(self.host, port=self.port, ssl=True,
                                       ssl_context=ssl.create_default_context(cafile=str(self.ca_file)),
                                       timeout=timeout)
        try:
            client.login(self.user, self.password)
        except BaseException:
            with contextlib.suppress(Exception):
                client.shutdown()
            raise
        return client

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    # ---------------------------------------------------------------- internals

    def _prepare(self) -> None:
        mail = pwd.getpwnam(MAIL_USER)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o755)
        for parent in self.base_dir.parents:  # the mail user must reach its home
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod((mode & 0o7777) | 0o001)
        make_tls(self.tls_dir)
        self.passwd_dir.mkdir(mode=0o755, exist_ok=True)
        self.spool.mkdir(mode=0o1777, exist_ok=True)
        self.spool.chmod(0o1777)
        self.home.mkdir(parents=True, exist_ok=True)
        os.chown(self.home, mail.pw_uid, mail.pw_gid)
        hashed = subprocess.run([OPENSSL_BIN, "passwd", "-6", "-stdin"], input=self.password, text=True,
                                capture_output=True, check=True, timeout=30).stdout.strip()
        (self.passwd_dir / self.domain).write_text(
            f"{self.local_part}:{hashed}:{mail.pw_uid}:{mail.pw_gid}:Test user:{self.home}:/bin/false\n")
        if not self.port:
            self.port = _free_ports(1)[0]
        self.config_file.write_text(self._config_text())

    def _config_text(self) -> str:
        tls = self.tls_dir
        return f"""\
# Generated by tests/support/imap4d.py for a throwaway test server.
logging {{ syslog no; }}
auth {{
  authorization virtdomain;
  authentication generic;
}}
virtdomain {{ passwd-dir "{self.passwd_dir}"; }}
mailbox {{
  mailbox-type maildir;
  mail-spool "{self.spool}";
}}
namespace personal {{
  prefix "" {{
    directory "$home";
    delimiter "/";
  }}
}}
# The key is 0600 root and the test CA's dir is shared: the file checks only get in the way.
tls-file-checks {{
  key-file none;
  cert-file none;
  ca-file none;
}}
tcp-wrappers {{ enable no; }}
max-children 100;
server {self.host}:{self.port} {{
  tls-mode connection;
  tls {{
    ssl-certificate-file "{tls / 'server.pem'}";
    ssl-key-file "{tls / 'server.key'}";
  }}
}}
"""

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        context = ssl.create_default_context(cafile=str(self.ca_file))
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise Imap4dError(f"imap4d exited with status {self._proc.returncode}\n{self.log_text()[-3000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=2.0) as raw, \
                        context.wrap_socket(raw, server_hostname=self.host) as sock:
                    if sock.recv(200).startswith(b"* OK"):
                        return
            except OSError as exc:
                last = exc
            time.sleep(0.1)
        raise Imap4dError(f"imap4d did not greet on {self.host}:{self.port} within {START_TIMEOUT:.0f} s "
                          f"({last})\n{self.log_text()[-3000:]}")
