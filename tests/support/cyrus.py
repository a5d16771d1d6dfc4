"""A real, throwaway Cyrus IMAP 3.6 on loopback with implicit TLS, for tests.

Why this server: Cyrus is the other large free IMAP server, with its own
mailbox store and its own idea of namespaces: with Debian's defaults
(``altnamespace: no``, ``unixhierarchysep: no``) every personal folder lives
under "INBOX." and a folder made at the top level is refused; upstream's
3.x defaults (``altnamespace: yes``, ``unixhierarchysep: yes``) put folders
beside INBOX, separated by "/", and list other users' and shared namespaces
too. ``separator`` and ``altnamespace`` choose between them.

Where it comes from: Debian's cyrus-imapd conflicts with dovecot-imapd, so
scripts/setup (``unpack_cyrus``) unpacks cyrus-common and cyrus-imapd with
``dpkg -x`` into /var/cache/imapfs/cyrus (``$IMAPFS_CYRUS_ROOT``), and the
binaries run from there with ``LD_LIBRARY_PATH`` on that tree's library
directory (libcyrus*.so).

How it is isolated, as tests/support/dovecot.py does: config (imapd.conf,
cyrus.conf), TLS material, the SASL password db, mail partition, state and
log under one base dir; every program gets ``-C imapd.conf`` (the master does
not pass its own on: cyrus.conf gives it to imapd) and reads nothing from
/etc/imapd.conf.
The master listens on 127.0.0.1 only, on a free port, with implicit TLS
(``imapd -s``), and runs in its own session so ``stop()`` ends every process
it forked. The certificate is one of the test CA's (``make_tls``; pass the
Dovecot's tls_dir to share its CA, so one ca_file verifies both), copied
here for the mail user, who reads it at each connection.

Which user: the packages' maintainer scripts would create a ``cyrus`` user;
since they are only unpacked, nothing does. The master starts as root (to
bind and to switch users) and runs everything as ``nobody`` (Cyrus's
``cyrus_user``; Cyrus refuses to serve mail as root), as the test imap4d
does, so the tests need no account of their own on the machine. Everything
the server writes is under the base dir, owned by nobody.

Users: SASL auxprop with a sasldb of the base dir's own (``saslpasswd2``
from sasl2-bin, realm ``servername``), PLAIN/LOGIN over TLS.
``autocreate_quota: 0`` creates the user's INBOX at the first login, so no
administrator has to; no other folder exists until a client makes it.

The log: Cyrus logs through syslog(3) only, to /dev/log, which this machine
may not have and which belongs to the whole machine anyway. So the master
runs in a mount namespace of its own (``unshare --mount``) whose /dev is a
small tmpfs holding the usual device nodes (bound from the real /dev) and a
``log`` symlink to a datagram socket of this object's, where a thread
writes each line to cyrus.log. What the master prints (``-D``) goes there
too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

from tests.support.dovecot import _free_ports, _make_traversable, make_tls
from tests.support.servers import LoopbackServer

CYRUS_ROOT = Path(os.environ.get("IMAPFS_CYRUS_ROOT", "/var/cache/imapfs/cyrus"))
CYRUS_BIN_DIR = CYRUS_ROOT / "usr/lib/cyrus/bin"
SASLPASSWD_BIN = shutil.which("saslpasswd2") or "/usr/sbin/saslpasswd2"
UNSHARE_BIN = shutil.which("unshare") or "/usr/bin/unshare"
MAIL_USER = "nobody"
REALM = "localhost"
START_TIMEOUT = 20.0
#: AF_UNIX paths must fit in sun_path (108 bytes); longer base dirs get a short one in /tmp.
_MAX_SOCKET_PATH_LEN = 100

#: Run by ``unshare --mount`` as root: a private /dev whose ``log`` is our socket, then the master.
_PRIVATE_DEV_SCRIPT = r"""
set -e
dev=$1 log=$2
shift 2
mount -t tmpfs -o mode=0755,size=64k imapfs-cyrus-dev "$dev"
for node in null zero full random urandom tty; do
    : > "$dev/$node"
    mount --bind "/dev/$node" "$dev/$node"
done
mkdir "$dev/shm"
mount --bind /dev/shm "$dev/shm"
ln -s /proc/self/fd "$dev/fd"
ln -s "$log" "$dev/log"
mount --move "$dev" /dev
exec "$@"
"""


class CyrusError(RuntimeError):
    """Cyrus could not be started or driven; the message carries the log tail."""


class Cyrus(LoopbackServer):
    """One Cyrus with one user (``alice``), INBOX made at first login, implicit TLS.

    ``separator`` "." is ``unixhierarchysep: no``, "/" is ``unixhierarchysep:
    yes``; ``altnamespace`` False (Debian's default) keeps personal folders
    under "INBOX" + separator, True (upstream's) beside INBOX.
    """

    error = CyrusError
    name = "the Cyrus master"

    def __init__(self, base_dir: Path | None = None, *, tls_dir: Path | None = None, separator: str = ".",
                 altnamespace: bool = False, user: str = "alice", password: str = "secret pass") -> None:
        if separator not in (".", "/"):
            raise ValueError("Cyrus's hierarchy separator is '.' or '/'")
        self._owns_base_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="imapfs-cyrus-")).absolute()
        self.separator = separator
        self.altnamespace = altnamespace
        self.user = user
        self.password = password
        self.tls_dir = Path(tls_dir) if tls_dir else self.base_dir / "tls"
        self.ca_file = self.tls_dir / "ca.pem"
        self.own_tls_dir = self.base_dir / "cyrus-tls"  # the cert and key, readable by the mail user
        self.imapd_conf = self.base_dir / "imapd.conf"
        self.cyrus_conf = self.base_dir / "cyrus.conf"
        self.config_dir = self.base_dir / "config"
        self.partition = self.base_dir / "spool"
        self.run_dir = self.base_dir / "run"
        self.dev_dir = self.base_dir / "dev"  # mount point of the private /dev (see the module doc)
        self.sasldb = self.base_dir / "sasldb2"
        self.log_file = self.base_dir / "cyrus.log"
        self.syslog_socket = _socket_path(self.base_dir / "syslog.sock")
        self.port = 0
        self._syslog: _SyslogReceiver | None = None

    @property
    def url(self) -> str:
        return f"imaps://{self.user}@{self.host}:{self.port}"

    @property
    def folder_prefix(self) -> str:
        """Where the user's own folders go: "INBOX." / "INBOX/" without altnamespace, else ""."""
        return "" if self.altnamespace else "INBOX" + self.separator

    def start(self) -> None:
        if self.running:
            raise CyrusError(f"Cyrus in {self.base_dir} is already running (pid {self._proc.pid})")
        if os.geteuid() != 0:
            raise CyrusError("the test Cyrus needs root: its master binds, mounts a private /dev and "
                             f"switches to {MAIL_USER}")
        for binary in (CYRUS_BIN_DIR / "master", CYRUS_BIN_DIR / "imapd", Path(SASLPASSWD_BIN), Path(UNSHARE_BIN)):
            if not os.access(binary, os.X_OK):
                raise CyrusError(f"{binary} not found: run scripts/setup (it unpacks Cyrus into {CYRUS_ROOT} "
                                 "and installs sasl2-bin)")
        self._prepare()
        self._syslog = _SyslogReceiver(self.syslog_socket, self.log_file)
        env = dict(os.environ, LD_LIBRARY_PATH=str(_library_dir()))
        command = [UNSHARE_BIN, "--mount", "--propagation", "private", "--", "/bin/sh", "-c", _PRIVATE_DEV_SCRIPT,
                   "cyrus-dev", str(self.dev_dir), str(self.syslog_socket),
                   str(CYRUS_BIN_DIR / "master"), "-D", "-C", str(self.imapd_conf), "-M", str(self.cyrus_conf),
                   "-p", str(self.run_dir / "master.pid")]
        self._launch(command, START_TIMEOUT, env=env)  # unshare and sh exec: the pid is the master's

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            syslog, self._syslog = self._syslog, None
            if syslog is not None:
                syslog.close()

    def close(self) -> None:
        super().close()
        if self.syslog_socket.parent != self.base_dir:
            shutil.rmtree(self.syslog_socket.parent, ignore_errors=True)

    # ---------------------------------------------------------------- internals

    def _prepare(self) -> None:
        mail = pwd.getpwnam(MAIL_USER)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o755)
        _make_traversable(self.base_dir)  # the mail user reaches its files, the socket and the binaries
        make_tls(self.tls_dir)
        self.own_tls_dir.mkdir(mode=0o700, exist_ok=True)
        for name in ("server.pem", "server.key"):
            shutil.copyfile(self.tls_dir / name, self.own_tls_dir / name)
        for directory in (self.config_dir, self.config_dir / "db", self.config_dir / "socket", self.partition,
                          self.run_dir, self.run_dir / "socket", self.base_dir / "sieve"):
            directory.mkdir(mode=0o700, exist_ok=True)
        self.dev_dir.mkdir(mode=0o755, exist_ok=True)
        self.syslog_socket.parent.mkdir(mode=0o755, exist_ok=True)
        done = subprocess.run([SASLPASSWD_BIN, "-f", str(self.sasldb), "-u", REALM, "-p", "-c", self.user],
                              input=self.password.encode(), capture_output=True, timeout=30, check=False)
        if done.returncode != 0:
            raise CyrusError(f"saslpasswd2 failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
        for path in (self.own_tls_dir, self.config_dir, self.partition, self.run_dir, self.base_dir / "sieve",
                     self.sasldb):
            for sub in (path, *(path.rglob("*") if path.is_dir() else ())):
                os.chown(sub, mail.pw_uid, mail.pw_gid)
        if not self.port:
            self.port = _free_ports(1)[0]
        self.imapd_conf.write_text(self._imapd_conf_text())
        self.cyrus_conf.write_text(self._cyrus_conf_text())

    def _imapd_conf_text(self) -> str:
        run = self.run_dir
        return f"""\
# Generated by tests/support/cyrus.py for a throwaway test server.
configdirectory: {self.config_dir}
defaultpartition: default
partition-default: {self.partition}
proc_path: {run / 'proc'}
mboxname_lockpath: {run / 'lock'}
lmtpsocket: {run / 'socket' / 'lmtp'}
idlesocket: {run / 'socket' / 'idle'}
notifysocket: {run / 'socket' / 'notify'}
sievedir: {self.base_dir / 'sieve'}
cyrus_user: {MAIL_USER}
servername: {REALM}
altnamespace: {'yes' if self.altnamespace else 'no'}
unixhierarchysep: {'yes' if self.separator == '/' else 'no'}
autocreate_quota: 0
allowanonymouslogin: no
allowplaintext: yes
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: {self.sasldb}
sasl_mech_list: PLAIN LOGIN
tls_server_cert: {self.own_tls_dir / 'server.pem'}
tls_server_key: {self.own_tls_dir / 'server.key'}
syslog_prefix: imapfs-test
umask: 077
"""

    def _cyrus_conf_text(self) -> str:
        conf, binaries = self.imapd_conf, CYRUS_BIN_DIR
        return f"""\
# Generated by tests/support/cyrus.py for a throwaway test server.
START {{
  recover cmd="{binaries / 'ctl_cyrusdb'} -C {conf} -r"
}}
SERVICES {{
  imaps cmd="{binaries / 'imapd'} -C {conf} -s" listen="{self.host}:{self.port}" prefork=0 maxchild=100
}}
EVENTS {{
}}
DAEMON {{
  idled cmd="{binaries / 'idled'} -C {conf}"
}}
"""

    def _given_up(self) -> str | None:
        if "too many failures for service" in self.log_text():
            return "imapd failed to start (the master gave up on it)"
        return None


class _SyslogReceiver:
    """A datagram socket standing in for /dev/log: each message becomes one line of the log file."""

    def __init__(self, path: Path, log_file: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        path.chmod(0o666)  # the mail user's processes log too
        self._sock.settimeout(0.2)
        self._log_file = log_file
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cyrus-syslog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with open(self._log_file, "ab", buffering=0) as log:
            while not self._stopping.is_set():
                try:
                    data = self._sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                # "<priority>Mon DD HH:MM:SS tag[pid]: text": the priority is noise here.
                if data.startswith(b"<") and b">" in data[:5]:
                    data = data.split(b">", 1)[1]
                log.write(data.rstrip(b"\0\n") + b"\n")

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=2.0)
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()


def _socket_path(wanted: Path) -> Path:
    if len(str(wanted)) <= _MAX_SOCKET_PATH_LEN:
        return wanted
    digest = hashlib.sha256(str(wanted).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"imapfs-cyrus-{digest}" / "syslog.sock"


def _library_dir() -> Path:
    """The unpacked tree's directory of libcyrus*.so (multiarch: usr/lib/x86_64-linux-gnu on amd64)."""
    found = sorted(CYRUS_ROOT.glob("usr/lib/*/libcyrus.so.0"))
    if not found:
        raise CyrusError(f"no libcyrus.so.0 under {CYRUS_ROOT}: run scripts/setup")
    return found[0].parent
