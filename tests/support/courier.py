"""A real, throwaway Courier-IMAP on loopback with implicit TLS, for tests.

Why this server: Courier keeps every personal folder under "INBOX." (its
NAMESPACE says so: a folder outside it cannot be made), stores Maildir++,
and is a third IMAP implementation of its own (Double Precision's), with
UIDPLUS but without MOVE.

How it is run without being installed: Debian's courier-imap conflicts with
dovecot-imapd (both provide imap-server), so scripts/setup (unpack_courier)
unpacks its .debs with ``dpkg -x`` into COURIER_DIR (``/var/cache/imapfs/courier``
unless $IMAPFS_COURIER_DIR says otherwise), and the server runs from there.
Its programs have paths compiled in that do not exist on this machine:
``/etc/courier`` (authdaemonrc, the userdb), ``/usr/lib/courier-authlib``
(the authentication modules), ``/run/courier/authdaemon`` (the socket between
imaplogin and authdaemond). So it runs in a mount namespace of its own
(``unshare -m``), where a read-only overlay lays this server's ``etc`` (a
``courier`` directory only) over ``/etc`` and the unpacked ``usr/lib`` over
``/usr/lib``, and this server's ``run`` directory is bind-mounted over ``/run``.
An overlay and not a bind mount for the first two, because a bind mount needs
its mount point to exist, and making ``/etc/courier`` would write to the real
/etc. Nothing outside the base dir is written; the mounts end with the server.

How it is isolated, as tests/support/imap4d.py does: config, TLS material,
users, mail and log under one base dir; couriertcpd listens on 127.0.0.1 only,
on a free port, in its own session so ``stop()`` ends every process. TLS is
Courier's own: couriertcpd runs couriertls (GnuTLS) in front of imaplogin on
every connection, as Debian's imapd-ssl does, with a certificate of the test
CA (``make_tls``; pass the Dovecot's tls_dir to share its CA, so one ca_file
verifies both). The settings are Debian's own (its ``/etc/courier/imapd`` and
``imapd-ssl``, read from the unpacked package) but for address, port, limits,
certificate and the TLS session cache.

Users: courier-authlib's authdaemond with only the userdb module, whose
database (``etc/courier/userdb.dat``, the crypt(3) hash in
``userdbshadow.dat``) is written here with Courier's own makedatprog. It
maps ``alice@example.test`` to the system uid ``nobody``, so the test user
needs no account on the machine and no PAM. couriertcpd and authdaemond run
as root, and imaplogin switches to that uid after the login.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
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

from tests.support.dovecot import OPENSSL_BIN, _free_ports, _make_traversable, _stop_session, make_tls

COURIER_DIR = Path(os.environ.get("IMAPFS_COURIER_DIR", "/var/cache/imapfs/courier"))
UNSHARE_BIN = shutil.which("unshare") or "/usr/bin/unshare"
MAIL_USER = "nobody"
START_TIMEOUT = 15.0

#: Where the unpacked package keeps what is run here.
_COURIERTCPD = "usr/sbin/couriertcpd"
_COURIERTLS = "usr/bin/couriertls"
_IMAPD = "usr/bin/imapd"
_IMAPLOGIN = "usr/lib/courier/courier/imaplogin"
_AUTHDAEMOND = "usr/lib/courier/courier-authlib/authdaemond"
_MAKEDAT = "usr/lib/courier/courier-authlib/makedatprog"


class CourierError(RuntimeError):
    """Courier could not be started or driven; the message carries the log tail."""


class Courier:
    """One Courier-IMAP with one user (``alice@example.test``), Maildir++, implicit TLS."""

    host: str = "127.0.0.1"

    def __init__(self, base_dir: Path | None = None, *, tls_dir: Path | None = None,
                 local_part: str = "alice", domain: str = "example.test", password: str = "secret pass") -> None:
        self._owns_base_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="imapfs-courier-")).absolute()
        self.user = f"{local_part}@{domain}"
        self.local_part = local_part
        self.domain = domain
        self.password = password
        self.tls_dir = Path(tls_dir) if tls_dir else self.base_dir / "tls"
        self.ca_file = self.tls_dir / "ca.pem"
        self.etc_dir = self.base_dir / "etc"  # laid over /etc in the server's namespace
        self.config_dir = self.etc_dir / "courier"
        self.run_dir = self.base_dir / "run"  # bind-mounted over /run there
        self.home = self.base_dir / "mail" / local_part
        self.maildir = self.home / "Maildir"
        self.start_script = self.base_dir / "start.sh"
        self.log_file = self.base_dir / "courier.log"
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
            raise CourierError("the test Courier needs root: it mounts in a namespace of its own, "
                               "and imaplogin switches to the mail user after login")
        missing = [path for path in (_COURIERTCPD, _COURIERTLS, _IMAPD, _IMAPLOGIN, _AUTHDAEMOND, _MAKEDAT)
                   if not os.access(COURIER_DIR / path, os.X_OK)]
        if missing:
            raise CourierError(f"{COURIER_DIR / missing[0]} not found: run scripts/setup (unpack_courier)")
        self._prepare()
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                [UNSHARE_BIN, "--mount", "--propagation", "private", "/bin/sh", str(self.start_script)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self._environment(),
                cwd="/", start_new_session=True)
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

    def __enter__(self) -> Courier:
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
        for char in ":,":  # they would split the overlay's lowerdir option
            if char in str(self.base_dir):
                raise CourierError(f"the base dir may not contain {char!r}: {self.base_dir}")
        mail = pwd.getpwnam(MAIL_USER)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o755)
        _make_traversable(self.base_dir)  # the mail user must reach its home
        make_tls(self.tls_dir)
        self.config_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "courier" / "authdaemon").mkdir(parents=True, exist_ok=True)
        for sub in ("cur", "new", "tmp"):
            (self.maildir / sub).mkdir(parents=True, exist_ok=True)
        for directory in (self.home, *self.home.rglob("*")):
            if directory.is_dir() and directory.stat().st_uid != mail.pw_uid:
                os.chown(directory, mail.pw_uid, mail.pw_gid)
        # couriertls wants key and certificate in one file that no one else may read.
        pem = self.config_dir / "imapd.pem"
        pem.write_bytes((self.tls_dir / "server.key").read_bytes() + (self.tls_dir / "server.pem").read_bytes())
        pem.chmod(0o600)
        (self.config_dir / "authdaemonrc").write_text(
            "# Generated by tests/support/courier.py for a throwaway test server.\n"
            'authmodulelist="authuserdb"\n'
            "daemons=2\n"
            "authdaemonvar=/run/courier/authdaemon\n"
            "DEBUG_LOGIN=0\n"
            'DEFAULTOPTIONS=""\n')
        self._write_userdb(mail)
        if not self.port:
            self.port = _free_ports(1)[0]
        self.start_script.write_text(self._script_text())

    def _write_userdb(self, mail: pwd.struct_passwd) -> None:
        """userdb.dat and userdbshadow.dat as Courier's makeuserdb would write them."""
        hashed = subprocess.run([OPENSSL_BIN, "passwd", "-6", "-stdin"], input=self.password, text=True,
                                capture_output=True, check=True, timeout=30).stdout.strip()
        fields = f"uid={mail.pw_uid}|gid={mail.pw_gid}|home={self.home}|mail={self.maildir}|_="
        for name, text, mode in (("userdb", f"{self.user}\t{fields}\n", 0o644),
                                 ("userdbshadow", f"{self.user}\tsystempw={hashed}\n", 0o600)):
            done = subprocess.run(
                [str(COURIER_DIR / _MAKEDAT), "-", str(self.config_dir / f"{name}.tmp"),
                 str(self.config_dir / f"{name}.dat")],
                input=text + ".\n", text=True, capture_output=True, timeout=30, check=False)
            if done.returncode != 0:
                raise CourierError(f"makedatprog could not write {name}.dat: {done.stderr.strip()}")
            (self.config_dir / f"{name}.dat").chmod(mode)

    def _environment(self) -> dict[str, str]:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
        # The test supervisor finds what a run left behind by this variable.
        if "IMAPFS_TEST_RUN" in os.environ:
            env["IMAPFS_TEST_RUN"] = os.environ["IMAPFS_TEST_RUN"]
        return env

    def _script_text(self) -> str:
        q = shlex.quote
        root = COURIER_DIR
        settings = {
            # Debian's values but for these: no connection limit a test run could reach,
            "MAXDAEMONS": "100",
            "MAXPERIP": "100",
            # TLS from the first byte, with the test CA's certificate,
            "IMAP_TLS": "1",
            "TLS_CERTFILE": "/etc/courier/imapd.pem",
            # and neither of the files Debian's init script makes for TLS.
            "TLS_DHPARAMS": "",
            "TLS_CACHEFILE": "",
        }
        assignments = "\n".join(f"{name}={q(value)}" for name, value in settings.items())
        return f"""\
# Generated by tests/support/courier.py for a throwaway test server; run by
# `unshare --mount`, so these mounts are this server's alone.
set -e  # not -u: Debian's imapd-ssl reads $TLS_PROTOCOL, unset by default
mount -t overlay imapfs-courier-etc -o ro,lowerdir={q(f"{self.etc_dir}:/etc")} /etc
mount -t overlay imapfs-courier-lib -o ro,lowerdir={q(f"{root / 'usr/lib'}:/usr/lib")} /usr/lib
mount --bind {q(str(self.run_dir))} /run
set -a
. {q(str(root / 'etc/courier/imapd'))}
. {q(str(root / 'etc/courier/imapd-ssl'))}
{assignments}
set +a
{q(str(root / _AUTHDAEMOND))} &
exec {q(str(root / _COURIERTCPD))} -address={self.host} -maxprocs="$MAXDAEMONS" -maxperip="$MAXPERIP" \\
    $TCPDOPTS -stderr={q(str(self.log_file))} {self.port} \\
    {q(str(root / _COURIERTLS))} -server -tcpd \\
    {q(str(root / _IMAPLOGIN))} {q(str(root / _IMAPD))} "$MAILDIRPATH"
"""

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        context = ssl.create_default_context(cafile=str(self.ca_file))
        socket_file = self.run_dir / "courier" / "authdaemon" / "socket"
        last: Exception | str | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise CourierError(f"Courier exited with status {self._proc.returncode}\n{self.log_text()[-3000:]}")
            if not socket_file.exists():
                last = f"no {socket_file} yet (authdaemond)"
                time.sleep(0.1)
                continue
            try:
                with socket.create_connection((self.host, self.port), timeout=2.0) as raw, \
                        context.wrap_socket(raw, server_hostname=self.host) as sock:
                    if sock.recv(200).startswith(b"* OK"):
                        break
            except OSError as exc:
                last = exc
            time.sleep(0.1)
        else:
            raise CourierError(f"Courier did not greet on {self.host}:{self.port} within {START_TIMEOUT:.0f} s "
                               f"({last})\n{self.log_text()[-3000:]}")
        try:  # and the user can log in: authdaemond and the userdb work
            self.client(timeout=10.0).logout()
        except Exception as exc:
            raise CourierError(f"Courier greets, but {self.user} cannot log in ({exc})\n"
                               f"{self.log_text()[-3000:]}") from exc
