"""imapfs: mount an IMAP mail account as a directory tree."""

__version__ = "0.1.0"
