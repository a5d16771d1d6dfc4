"""The imapfs command: parse the URL and -o options, set up logging, check
the account, daemonise once the mount is ready, and run FUSE.

    imapfs [-f] [-o OPT[,OPT...]] imaps://USER@HOST[:PORT] MOUNTPOINT

sshfs-style, so mount(8) can call it from /etc/fstab as type fuse.imapfs
(mount passes the options after the positional arguments).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import logging.handlers
import os
import sys
import textwrap
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from imapfs import __version__
from imapfs.cache import DiskCache
from imapfs.config import Account, Options, find_credentials, parse_options, parse_url
from imapfs.credentials import Credentials
from imapfs.errors import ConfigError, ImapFSError, ServerUnavailable

if TYPE_CHECKING:
    from imapfs.pool import Session

log = logging.getLogger("imapfs")

USAGE = "usage: imapfs [-f] [-o OPT[,OPT...]] imaps://USER@HOST[:PORT] MOUNTPOINT"
EXIT_USAGE = 2
EXIT_FAILURE = 1
READY_TIMEOUT = 60.0


@dataclass
class Arguments:
    foreground: bool = False
    fuse_debug: bool = False
    option_specs: list[str] = field(default_factory=list)
    positional: list[str] = field(default_factory=list)
    help: bool = False
    version: bool = False


def parse_arguments(argv: list[str]) -> Arguments:
    """sshfs-style arguments: flags and -o may come before or after the positionals."""
    args = Arguments()
    items = iter(argv)
    for item in items:
        if item in ("-h", "--help"):
            args.help = True
        elif item in ("-V", "--version"):
            args.version = True
        elif item == "-f":
            args.foreground = True
        elif item == "-d":
            args.foreground = args.fuse_debug = True
        elif item == "-o":
            value = next(items, None)
            if value is None:
                raise ConfigError("-o needs an argument")
            args.option_specs.append(value)
        elif item.startswith("-o"):
            args.option_specs.append(item[2:])
        elif item == "--":
            args.positional.extend(items)
        elif item.startswith("-") and item != "-":
            raise ConfigError(f"unknown flag '{item}'")
        else:
            args.positional.append(item)
    return args


def help_text() -> str:
    rows = "\n".join(f"    -o {name:<22} {text} (default: {default})"
                     for name, default, text in Options.describe())
    return textwrap.dedent(f"""\
        {USAGE}

        Mount an IMAP account as a directory tree: folders are directories,
        messages are .eml files.

        URL:
            imaps://USER@HOST[:PORT]  implicit TLS (default port 993)
            imap://USER@HOST[:PORT]   STARTTLS, required (default port 143)

        Password, first found: $IMAPFS_PASSWORD, -o password_command=CMD,
        ~/.netrc (machine HOST login USER password ...), a prompt on the terminal.
        OAuth2 instead: -o oauth2_token_command=CMD prints an access token (oama,
        pizauth, mutt_oauth2.py); imapfs runs it again when the token is refused
        or older than oauth2_token_lifetime.

        Connections: at most `connections` (4) plus one for IDLE. Servers cap them
        per user (Dovecot 10 per user and IP, Gmail 15); when one refuses more,
        imapfs waits for a connection it has instead of failing.

        Flags:
            -f                        stay in the foreground
            -d                        foreground with FUSE debug output
            -o OPT[,OPT...]           options, below
            -h, --help / -V, --version

        Options:
        """) + rows + textwrap.dedent("""

        Searching on the server (.search is hidden: looked up, never listed):
            ls "MOUNT/.search/from:alice since:2024-01-01 invoice"
            word "a phrase" from: to: cc: bcc: subject: body: header:NAME:VALUE
            since: before: on:YYYY-MM-DD  larger: smaller:N[k|M|G]
            is:unread|read|flagged|answered|draft  in:FOLDER (%2F for /)
            -TERM (NOT)  A OR B  gmail:RAW (X-GM-EXT-1 servers); see the README.

        FUSE mount options such as allow_root, default_permissions, nosuid,
        nodev, noatime, auto_unmount pass through; fstab-only options (rw,
        defaults, noauto, user, _netdev, nofail, x-*) are accepted and ignored.

        /etc/fstab:
            imaps://alice@imap.example.com  /home/alice/Mail  fuse.imapfs  noauto,user,_netdev  0  0
        """)


def setup_logging(options: Options, foreground: bool) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if options.log_file:
        handler: logging.Handler = logging.FileHandler(options.log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    elif foreground:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("imapfs: %(levelname)s: %(message)s"))
    elif os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(address="/dev/log")
        handler.setFormatter(logging.Formatter("imapfs[%(process)d]: %(levelname)s: %(message)s"))
    else:
        handler = logging.NullHandler()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if options.debug else logging.INFO)
    if not options.debug:
        # imapclient logs every command at DEBUG; without -o debug keep it quiet.
        for noisy in ("imapclient", "mfusepy", "fuse"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str, code: int = EXIT_FAILURE) -> int:
    print(f"imapfs: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    one_malloc_arena()
    try:
        args = parse_arguments(argv)
        if args.help:
            print(help_text())
            return 0
        if args.version:
            print(f"imapfs {__version__}")
            return 0
        options, fuse_options = parse_options(args.option_specs)
        if len(args.positional) != 2:
            return fail(f"expected a URL and a mount point\n{USAGE}", EXIT_USAGE)
        account = parse_url(args.positional[0])
        mountpoint = os.path.abspath(args.positional[1])
        if not os.path.isdir(mountpoint):
            return fail(f"mount point {mountpoint} does not exist or is not a directory", EXIT_USAGE)
        check_ca_file(options)
        # Offline, no login happens: asking for a password would only be in the way.
        credentials = Credentials.password("") if options.offline else find_credentials(account, options)
    except ConfigError as exc:
        return fail(str(exc), EXIT_USAGE)
    except (KeyboardInterrupt, EOFError):
        return fail("interrupted", EXIT_FAILURE)

    setup_logging(options, foreground=True)
    try:
        if not options.offline:
            check_account(account, credentials, options)
    except ServerUnavailable as exc:
        if not DiskCache.exists(options.cache_directory(account)):
            return fail(str(exc))
        log.warning("%s; mounting with what the persistent cache holds, and trying the server again later", exc)
    except ImapFSError as exc:
        return fail(str(exc))

    if args.foreground:
        return run_mount(account, credentials, options, fuse_options, mountpoint, args.fuse_debug, None)
    return daemonize_and_mount(account, credentials, options, fuse_options, mountpoint)


def check_account(account: Account, credentials: Credentials, options: Options) -> None:
    """Log in once before mounting, so a wrong password, a refused token or a
    bad certificate is reported here, as one line, instead of as EIO on every
    file later."""
    from imapfs.pool import connect

    session = connect(account, credentials, options)
    session.logout()


def check_ca_file(options: Options) -> None:
    """A ca_file that is missing, a directory or not PEM: one line (ConfigError), before asking for a password."""
    from imapfs.pool import make_ssl_context

    make_ssl_context(options.ca_file)


def daemonize_and_mount(account: Account, credentials: Credentials, options: Options, fuse_options: dict,
                        mountpoint: str) -> int:
    """Fork; the parent returns 0 only once the child reports the mount ready.

    The child tells the parent through a pipe from FUSE's init callback,
    which runs when the kernel has accepted the mount. Forking happens
    before any thread or socket exists (the account check closed its own).
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(write_fd)
        return wait_for_child(pid, read_fd, mountpoint)
    # child
    os.close(read_fd)
    os.setsid()
    setup_logging(options, foreground=False)
    code = EXIT_FAILURE
    try:
        code = run_mount(account, credentials, options, fuse_options, mountpoint, False, write_fd)
    finally:
        os._exit(code)


def wait_for_child(pid: int, read_fd: int, mountpoint: str) -> int:
    import select

    with os.fdopen(read_fd, "rb") as pipe:
        ready, _, _ = select.select([pipe], [], [], READY_TIMEOUT)
        message = pipe.read() if ready else b""
    if message.startswith(b"ok"):
        return 0
    if not ready:
        return fail(f"the mount at {mountpoint} did not become ready within {READY_TIMEOUT:.0f} s")
    _, status = os.waitpid(pid, 0)
    reason = message.decode("utf-8", "replace").strip()
    return fail(reason or f"mounting {mountpoint} failed (exit status {os.waitstatus_to_exitcode(status)})")


def one_malloc_arena() -> None:
    """glibc gives each thread that allocates its own malloc arena (up to 8
    per CPU); with libfuse's worker threads, the pool's and read-ahead's, a
    mount's memory is spread over many half-empty arenas. Python allocates
    under its GIL anyway, so one arena costs no contention here and holds
    a 100,000-message listing in about 10 MB less (scripts/bench row 14).
    Called before any thread starts; elsewhere than glibc, nothing."""
    import ctypes
    import ctypes.util

    m_arena_max = -8  # glibc's malloc.h
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(m_arena_max, 1)


def prefer_libfuse3() -> None:
    """mfusepy loads libfuse 2 when both are installed; ask for 3, which can
    tell the kernel about changes (fuse_invalidate_path). libfuse 2 still works."""
    from ctypes.util import find_library

    if "FUSE_LIBRARY_NAME" not in os.environ and find_library("fuse3"):
        os.environ["FUSE_LIBRARY_NAME"] = "fuse3"


def run_mount(account: Account, credentials: Credentials, options: Options, fuse_options: dict, mountpoint: str,
              fuse_debug: bool, ready_fd: int | None) -> int:
    prefer_libfuse3()

    from imapfs.fs import ImapFS
    from imapfs.fusebind import ImapFUSE
    from imapfs.pool import ConnectionPool
    from imapfs.store import MailStore
    from imapfs.views.derived import MessageContent
    from imapfs.views.folders import FoldersView
    from imapfs.views.maildir import MaildirView
    from imapfs.views.parts import PartsView
    from imapfs.views.root import CompositeRoot
    from imapfs.views.search import SearchView
    from imapfs.views.text import TextView
    from imapfs.views.trash import TrashView, trash_dir_name
    from imapfs.watcher import Watcher

    def report_ready() -> None:
        log.info("mounted %s at %s", account.display, mountpoint)
        if ready_fd is not None:
            os.write(ready_fd, b"ok\n")
            os.close(ready_fd)
            redirect_stdio_to_devnull()

    if options.offline:
        # Nothing can be written without the server: say so at once (EROFS).
        options = dataclasses.replace(options, ro=True)
        pool = ConnectionPool(account, credentials, dataclasses.replace(options, retry_for=0),
                              connector=refuse_offline)
    else:
        pool = ConnectionPool(account, credentials, options)
    disk = DiskCache.open(options.cache_directory(account), options.disk_cache_mb * 1024 * 1024)
    store = MailStore(pool, options, disk=disk)
    watcher: Watcher | None = None

    def start() -> None:
        if not options.offline:
            # Every connection a scan will use, opened now in parallel: a grep -r
            # right after mounting would otherwise have its first reads wait for
            # read-ahead windows to finish their TLS handshakes and logins.
            pool.warm_up(options.connections)
            store.prefetch_folders()
            watcher.start()
        report_ready()

    # Zero-message opens need the kernel told when a name's pages go stale,
    # which only libfuse 3 can do (fuse_invalidate_path).
    kernel_opens = options.ro and options.fast_open and fuse_major_version() >= 3
    layout = MaildirView if options.maildir else FoldersView
    trash_name = trash_dir_name(os.getuid())  # the mount owner's: only the owner may change the mount
    content = MessageContent(store)  # shared: .parts/NAME/text is .text's rendering
    root = CompositeRoot(layout(store, spool_dir=options.spool_directory),
                         {trash_name: TrashView(store, trash_name),
                          ".text": TextView(store, content), ".parts": PartsView(store, content),
                          ".search": SearchView(store)})
    operations = ImapFS(store, root, read_only=options.ro, kernel_opens=kernel_opens, on_init=start,
                        on_destroy=lambda: watcher.stop())
    watcher = Watcher(account, credentials, options, pool, listings=store.cached_listings,
                      folders=store.cached_folders,
                      folder_changed=operations.folder_changed, folders_changed=operations.folders_changed)
    store.on_folder_used = watcher.folder_used
    kernel_options = dict(fuse_options)
    if options.ro:
        kernel_options["ro"] = True
    if options.allow_other:
        kernel_options["allow_other"] = True
    kernel_options.setdefault("fsname", account.display)
    kernel_options.setdefault("subtype", "imapfs")
    if fuse_major_version() >= 3:
        # libfuse 3.14 warns "Ignoring invalid max threads value 4294967295"
        # when this is left unset (libfuse issue #1003).
        kernel_options.setdefault("max_idle_threads", 10)
    try:
        ImapFUSE(operations, mountpoint, raw_fi=True, foreground=True, debug=fuse_debug,
                     attr_timeout=options.attr_timeout, entry_timeout=options.entry_timeout,
                     negative_timeout=options.negative_timeout, **kernel_options)
    except RuntimeError as exc:
        if operations.initialized:
            # libfuse 3 reports the signal that ended a working mount as an
            # error code; the mount did its job and is cleanly gone.
            log.info("unmounted %s (%s)", mountpoint, exc)
            return 0
        message = f"could not mount at {mountpoint} (libfuse error {exc}); is it already mounted or in use?"
        if ready_fd is not None:
            os.write(ready_fd, message.encode())
            os.close(ready_fd)
            return EXIT_FAILURE
        return fail(message)
    finally:
        pool.close()
        if disk is not None:
            disk.close()
    log.info("unmounted %s", mountpoint)
    return 0


def refuse_offline(*_: object) -> Session:
    """The connector of an -o offline mount: no connection, at once."""
    raise ServerUnavailable("mounted with -o offline: only what the persistent cache holds is available")


def fuse_major_version() -> int:
    import mfusepy

    return int(mfusepy.fuse_version_major)


def redirect_stdio_to_devnull() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)
