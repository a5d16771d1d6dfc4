"""The imapfs exception tree.

Every layer below fs.py raises these, never errno values; fs.py maps them to
errno in one place (``fs.errno_for``). Library errors (imaplib, socket, ssl)
are translated once, in pool.py, with ``raise ... from exc``.

    ImapFSError
    ├── ConfigError              bad URL or -o option (never reaches FUSE)
    ├── ConnectError             could not get a usable IMAP session
    │   ├── CertificateError     TLS certificate verification failed
    │   ├── AuthenticationError  the server refused the login
    │   └── ServerUnavailable    connection refused, timed out, DNS, dropped
    │       ├── WriteUncertain   dropped after a write was sent whole: done or not, nobody knows
    │       ├── ConnectionLimit  the server refused one more connection for this user
    │       └── DroppedAfterLogin  the login was accepted, the connection dropped before any answer
    ├── ProtocolError            the server answered NO/BAD or something unparsable
    │   └── QuotaError           the server refused a write for quota (OVERQUOTA)
    ├── NotFound                 no such folder or message
    │   └── StaleMessage         the folder's UIDVALIDITY changed under a handle
    ├── AlreadyExists            folder or message name taken
    ├── NotEmpty                 folder still holds messages or children
    ├── InvalidMessage           bytes written are not an RFC 5322 message
    ├── InvalidName              no folder can have this name (a level holding the delimiter)
    ├── InvalidQuery             a .search query that cannot be parsed, or that the server refuses
    ├── ReadOnly                 the mount (or the object) does not accept writes
    ├── Busy                     another program is writing that file
    ├── Refused                  imapfs will not do this, to keep mail safe
    ├── NotPermitted             the server does not allow this name or change (its NO, or its NAMESPACE)
    └── NotSupported             the operation has no meaning for mail
        └── NotMail              a tool's own dot-file or dot-directory (.DS_Store, .notmuch): never stored
"""

from __future__ import annotations


class ImapFSError(Exception):
    """Base of every error imapfs raises on purpose."""


class ConfigError(ImapFSError):
    """A URL or option the user gave cannot be used."""


class ConnectError(ImapFSError):
    """No usable IMAP session could be established."""


class CertificateError(ConnectError):
    """The server's TLS certificate failed verification."""


class AuthenticationError(ConnectError):
    """The server refused the user name or password."""


class ServerUnavailable(ConnectError):
    """The server cannot be reached, or the connection dropped."""


class WriteUncertain(ServerUnavailable):
    """The connection failed after a write was sent completely, before the
    server's answer: it may or may not have been carried out. Never retried."""


class ConnectionLimit(ServerUnavailable):
    """The server refused a login because the user has as many connections as it allows
    (Dovecot's mail_max_userip_connections, Gmail's 15): use one already open."""


class DroppedAfterLogin(ServerUnavailable):
    """The server accepted the login, then dropped the connection before it answered a command."""


class ProtocolError(ImapFSError):
    """The server answered NO/BAD, or something imapfs cannot parse."""


class QuotaError(ProtocolError):
    """The server refused a write because the mailbox is over quota."""


class NotFound(ImapFSError):
    """No such folder or message."""


class FolderGone(NotFound):
    """The folder itself does not exist on the server (its EXAMINE said so),
    not merely a message in it."""


class StaleMessage(NotFound):
    """The folder was recreated (UIDVALIDITY changed) since the object was looked up."""


class AlreadyExists(ImapFSError):
    """The target name is already taken."""


class NotEmpty(ImapFSError):
    """A folder still holds messages or child folders."""


class InvalidMessage(ImapFSError):
    """Bytes given as a message are not an RFC 5322 message."""


class InvalidName(ImapFSError):
    """A directory name that no IMAP folder name can express on this server."""


class InvalidQuery(ImapFSError):
    """A search query (``.search/QUERY``) that cannot be parsed, or that this server cannot run."""


class ReadOnly(ImapFSError):
    """The mount, or the object, does not accept writes."""


class Busy(ImapFSError):
    """Another program is writing that file right now."""


class Refused(ImapFSError):
    """imapfs will not do this: it could lose or destroy mail."""


class NotPermitted(ImapFSError):
    """The server does not allow this change here: it refused a CREATE, or its
    NAMESPACE says it keeps new folders elsewhere. Not an I/O error: the
    same request will fail the same way, and the message says what would work."""


class NotSupported(ImapFSError):
    """The operation has no meaning for mail."""


class NotMail(NotSupported):
    """A name tools use for their own state (.DS_Store, .notmuch, .Trash-1001):
    filed, it would become a junk message or folder on the server, seen by
    every mail client of the account."""
