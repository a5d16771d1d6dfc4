"""Command-line configuration: the account URL, every -o option, and where
the password or OAuth2 token comes from.

Each tunable is one field of the frozen ``Options`` dataclass, with its
default and its help text next to it (``imapfs --help`` prints them), so an
option cannot exist without documentation. Pure apart from the credential
sources, which read the environment, run a command, read ~/.netrc or prompt.
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import netrc
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from imapfs.credentials import Credentials, first_output_line
from imapfs.errors import ConfigError

PASSWORD_ENV = "IMAPFS_PASSWORD"


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class Options:
    """Every -o option imapfs understands (besides plain FUSE mount options)."""

    ro: bool = _opt(False, "read-only mount: every write fails with EROFS")
    fast_open: bool = _opt(True, "with ro: the kernel opens, reads (from its page cache) and closes messages "
                           "without asking imapfs, so a warm grep -r runs at near-local speed; a message whose "
                           "size the server understates still reads whole to a reader that reads to the end "
                           "(cat, grep, cp), but one that reads only the size stat gave may stop there once")
    ca_file: str | None = _opt(None, "PEM file of CA certificates to trust instead of the system store")
    password_command: str | None = _opt(None, "shell command whose first output line is the password")
    oauth2_token_command: str | None = _opt(None, "shell command whose first output line is an OAuth2 access "
                                            "token: log in with OAUTHBEARER or XOAUTH2 instead of a password; "
                                            "run again when the token ages or is refused")
    oauth2_token_lifetime: float = _opt(3000.0, "seconds a token from oauth2_token_command is used for new "
                                        "logins before the command is run again (it also runs again at "
                                        "once when a login is refused)", minimum=1)
    insecure_plaintext: bool = _opt(False, "allow imap:// without STARTTLS (password sent in clear)")
    connections: int = _opt(4, "maximum IMAP connections for file operations, plus one that watches with "
                            "IDLE; 4+1 leave half of Dovecot's default 10 per user and IP, and two thirds of "
                            "Gmail's 15, to other clients; when the server refuses one for a connection "
                            "limit, imapfs makes do with those it has", minimum=1)
    debug: bool = _opt(False, "log IMAP commands and FUSE calls (passwords and tokens are never logged)")
    allow_other: bool = _opt(False, "let other users read the mount (needs user_allow_other); only the user "
                             "who mounted it may change mail")
    log_file: str | None = _opt(None, "write the log here (default: stderr in -f, syslog otherwise)")
    timeout: float = _opt(20.0, "seconds before an unanswered IMAP command counts as a dead connection",
                          minimum=1)
    retry_for: float = _opt(20.0, "seconds a read keeps retrying on fresh connections before it fails (EIO)",
                            minimum=0)
    idle: bool = _opt(True, "watch the folder in use with IMAP IDLE, so its changes show at once")
    poll_interval: float = _opt(10.0, "seconds between checks (STATUS) of the other folders listed so far",
                                minimum=1)
    listing_ttl: float = _opt(10.0, "seconds a folder listing is trusted before it is revalidated", minimum=0)
    folders_ttl: float = _opt(30.0, "seconds the folder list is trusted before it is fetched again", minimum=0)
    fetch_batch: int = _opt(500, "UIDs per metadata FETCH command while listing", minimum=1)
    body_cache_mb: int = _opt(256, "memory for cached message bodies, in MiB", minimum=0)
    header_cache_folders: int = _opt(256, "folder listings kept in the header cache", minimum=1)
    attr_timeout: float = _opt(30.0, "seconds the kernel may cache file attributes (changes seen by the "
                               "watcher are pushed to the kernel at once with libfuse 3)", minimum=0)
    entry_timeout: float = _opt(30.0, "seconds the kernel may cache name lookups", minimum=0)
    negative_timeout: float = _opt(2.0, "seconds the kernel may cache 'no such file'", minimum=0)
    maildir: bool = _opt(False, "lay every folder out as a Maildir (cur/, new/, tmp/ beside its subfolders), "
                         "for mutt, neomutt, notmuch, mblaze, mu and aerc")
    spool_dir: str | None = _opt(None, "directory where a file being copied in waits for its APPEND, in an "
                                 "already deleted file that nothing leaves behind (default: $TMPDIR, else "
                                 "/var/tmp, which is on disk where /tmp may be memory)")
    cache_dir: str | None = _opt(None, "directory of the persistent cache (folder listings and message "
                                 "bodies kept across mounts, for instant remounts and offline reading), one "
                                 "subdirectory per account, private to the user; 'none' turns it off (unset: "
                                 "$XDG_CACHE_HOME/imapfs, else ~/.cache/imapfs)")
    disk_cache_mb: int = _opt(1024, "disk space for message bodies in the persistent cache, in MiB; the least "
                              "recently read are dropped beyond it (listings come on top: about 200 bytes "
                              "per message)", minimum=0)
    offline: bool = _opt(False, "mount without contacting the server: what the persistent cache holds lists and "
                         "reads, anything else fails (EIO) at once; the mount is read-only")
    delete: str = _opt("trash", "what rm does: 'trash' moves to Trash, 'expunge' deletes at once",
                       choices=("trash", "expunge"))

    @property
    def spool_directory(self) -> str:
        return self.spool_dir or os.environ.get("TMPDIR") or "/var/tmp"

    def cache_directory(self, account: Account, environ: dict[str, str] | None = None) -> str | None:
        """The account's own directory under cache_dir, or None with cache_dir=none.

        The name is readable (user@host_port) plus a hash of the exact
        account, so that names the escaping folds together stay apart."""
        if self.cache_dir is not None and self.cache_dir.lower() in {"none", "off", "no", ""}:
            return None
        environ = os.environ if environ is None else environ
        base = self.cache_dir
        if base is None:
            xdg = environ.get("XDG_CACHE_HOME", "")
            # The XDG spec: a relative $XDG_CACHE_HOME is invalid and ignored.
            base = os.path.join(xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache"),
                                "imapfs")
        exact = f"{account.user}@{account.host}:{account.port}"
        readable = re.sub(r"[^A-Za-z0-9._@+-]", "_", f"{account.user}@{account.host}_{account.port}")[:80]
        return os.path.join(os.path.expanduser(base),
                            f"{readable}-{hashlib.sha256(exact.encode()).hexdigest()[:8]}")

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(name, default, help) for every option, for --help."""
        rows = []
        for f in dataclasses.fields(cls):
            default = {False: "off", True: "on", None: "-"}.get(f.default, str(f.default)) \
                if isinstance(f.default, (bool, type(None))) else str(f.default)
            rows.append((f.name, default, f.metadata["help"]))
        return rows


# Mount options that belong to FUSE or the kernel, passed through untouched.
FUSE_PASSTHROUGH = frozenset(
    {"allow_root", "default_permissions", "nosuid", "nodev", "noexec", "suid", "dev", "exec",
     "noatime", "atime", "relatime", "nodiratime", "auto_unmount", "fsname", "subtype", "max_read",
     "uid", "gid", "umask"}
)
# Options /etc/fstab and mount(8) may hand us that mean nothing to a FUSE filesystem.
IGNORED_MOUNT_OPTIONS = frozenset({"rw", "defaults", "auto", "noauto", "user", "users", "nouser", "_netdev",
                                   "nofail", "async", "sync", "nonempty", "big_writes"})


def parse_options(specs: list[str]) -> tuple[Options, dict[str, Any]]:
    """Turn the -o arguments into Options plus the FUSE options to pass on.

    Unknown options are an error, not silently ignored: a typo in an option
    name would otherwise go unnoticed until it matters.
    """
    fields = {f.name: f for f in dataclasses.fields(Options)}
    values: dict[str, Any] = {}
    fuse_opts: dict[str, Any] = {}
    for spec in specs:
        for item in _split_options(spec):
            name, has_value, raw = item.partition("=")
            name = name.strip()
            if not name:
                continue
            if name in fields:
                values[name] = _convert(fields[name], raw if has_value else None)
            elif name in FUSE_PASSTHROUGH:
                fuse_opts[name] = raw if has_value else True
            elif name in IGNORED_MOUNT_OPTIONS or name.startswith(("x-", "comment=")):
                continue
            else:
                raise ConfigError(f"unknown option '{name}' (see imapfs --help)")
    return Options(**values), fuse_opts


def _split_options(spec: str) -> list[str]:
    r"""Split "a,b=c,d" on commas; a backslash escapes a comma inside a value."""
    items, current, escaped = [], [], False
    for ch in spec:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    items.append("".join(current))
    return items


def _convert(f: dataclasses.Field, raw: str | None) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    name = f.name
    if kind == "bool":
        if raw is None or raw.lower() in {"1", "yes", "true", "on"}:
            return True
        if raw.lower() in {"0", "no", "false", "off"}:
            return False
        raise ConfigError(f"option {name} takes no value or yes/no, not '{raw}'")
    if raw is None or raw == "":
        raise ConfigError(f"option {name} needs a value ({name}=...)")
    if kind in {"int", "float"}:
        try:
            value: Any = int(raw) if kind == "int" else float(raw)
        except ValueError:
            raise ConfigError(f"option {name} needs a number, not '{raw}'") from None
        minimum = f.metadata.get("minimum")
        if minimum is not None and value < minimum:
            raise ConfigError(f"option {name} must be at least {minimum}")
        return value
    choices = f.metadata.get("choices")
    if choices and raw not in choices:
        raise ConfigError(f"option {name} must be one of {', '.join(choices)}")
    return raw


@dataclass(frozen=True)
class Account:
    """Where to connect and as whom, from imaps://USER@HOST[:PORT]."""

    user: str
    host: str
    port: int
    implicit_tls: bool  # imaps://; otherwise STARTTLS (or plaintext if allowed)

    @property
    def display(self) -> str:
        return f"{'imaps' if self.implicit_tls else 'imap'}://{self.user}@{self.host}:{self.port}"


def parse_url(url: str) -> Account:
    """Parse imaps://USER@HOST[:PORT] or imap://USER@HOST[:PORT].

    The user may itself contain '@' (user@example.com@imap.example.com) or be
    percent-encoded; a password in the URL is refused, since URLs end up in
    shell history and process lists.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in {"imap", "imaps"}:
        raise ConfigError(f"'{url}' is not an imaps://USER@HOST[:PORT] or imap://USER@HOST[:PORT] URL")
    rest = rest.rstrip("/")
    userinfo, at, hostport = rest.rpartition("@")
    if not at or not userinfo:
        raise ConfigError(f"'{url}' names no user: use {scheme}://USER@HOST")
    if ":" in userinfo:
        raise ConfigError("passwords do not belong in the URL; use IMAPFS_PASSWORD, "
                          "-o password_command=..., ~/.netrc or the prompt")
    implicit = scheme.lower() == "imaps"
    port = 993 if implicit else 143
    if hostport.startswith("["):
        host, _, tail = hostport[1:].partition("]")
        if tail.startswith(":"):
            port = _port(tail[1:], url)
    else:
        host, colon, port_text = hostport.partition(":")
        if colon:
            port = _port(port_text, url)
    if not host:
        raise ConfigError(f"'{url}' names no host")
    return Account(user=unquote(userinfo), host=host, port=port, implicit_tls=implicit)


def _port(text: str, url: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"'{url}' has an invalid port '{text}'")
    return int(text)


def find_password(account: Account, options: Options, *, environ: dict[str, str] | None = None,
                  netrc_file: str | None = None, interactive: bool | None = None) -> str:
    """The password, from the first source that has one:
    $IMAPFS_PASSWORD, -o password_command, ~/.netrc, a prompt on the terminal.
    Never from the command line, which any local user can read in ps.
    """
    environ = os.environ if environ is None else environ
    if environ.get(PASSWORD_ENV):
        return environ[PASSWORD_ENV]
    if options.password_command:
        return first_output_line(options.password_command, "password_command", "password")
    path = netrc_file or os.path.join(os.path.expanduser("~"), ".netrc")
    if os.path.exists(path):
        try:
            entry = netrc.netrc(path).authenticators(account.host)
        except (netrc.NetrcParseError, OSError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
        if entry and entry[2] and entry[0] in (account.user, None, ""):
            return entry[2]
    if interactive is None:
        interactive = sys.stdin.isatty()
    if interactive:
        return getpass.getpass(f"Password for {account.user}@{account.host}: ")
    raise ConfigError(f"no password for {account.user}@{account.host}: set {PASSWORD_ENV}, "
                      "-o password_command=..., or a ~/.netrc entry")


def find_credentials(account: Account, options: Options, **password_sources: Any) -> Credentials:
    """OAuth2 when -o oauth2_token_command is given (its command runs now, so a
    failing helper is reported before mounting); otherwise the password, from
    the sources find_password tries."""
    if options.oauth2_token_command:
        if options.password_command:
            raise ConfigError("give either oauth2_token_command or password_command, not both")
        credentials = Credentials(token_command=options.oauth2_token_command,
                                  token_lifetime=options.oauth2_token_lifetime)
        credentials.secret()
        return credentials
    return Credentials.password(find_password(account, options, **password_sources))
