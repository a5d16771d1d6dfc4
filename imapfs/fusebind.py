"""The binding to mfusepy and libfuse: what imapfs needs from FUSE that
mfusepy's FUSE class does not do by itself. Nothing here knows about mail.

- READDIRPLUS with full attributes. mfusepy hands libfuse only the mode and
  never sets FUSE_FILL_DIR_PLUS, and libfuse 3 passes attributes on to the
  kernel only in its offset mode; without both, `ls -l` on a folder of
  10,000 messages costs 10,000 LOOKUP round trips.
- READDIRPLUS always: the kernel's default ("auto") asks for it only for a
  directory's first chunk, so scans like grep -r fall back to a LOOKUP per
  file.
- One Python thread state per libfuse worker thread, kept for the thread's
  life. ctypes otherwise creates and destroys one around every callback,
  about a third of the cost of a FUSE request that Python answers.

Operations passed to ImapFUSE provide ``dir_snapshot(path, fh, offset,
plus)``: the directory's entries, as names or (name, stat dict, 0). An
operations object whose ``kernel_opens`` is true answers open with ENOSYS;
ImapFUSE turns it off on a kernel without zero-message opens.
"""

from __future__ import annotations

import ctypes
import os
import select
import threading
from typing import Any

import mfusepy as fuse

FUSE_READDIR_PLUS = 1
FUSE_CAP_READDIRPLUS_AUTO = 1 << 14
FUSE_CAP_NO_OPEN_SUPPORT = 1 << 17
FUSE_FILL_DIR_PLUS = 2

_PyGILState_Ensure = ctypes.pythonapi.PyGILState_Ensure
_PyGILState_Ensure.restype = ctypes.c_int
_PyGILState_Ensure.argtypes = []
_thread_state = threading.local()
# Only where libfuse's worker threads live as long as the mount: libfuse 3.12+
# caps them (max_threads, 10 by default) and imapfs keeps up to 10 idle
# (max_idle_threads), so none ever exits. Older libfuse ends idle workers and
# starts new ones in bursts: each would leave its kept thread state behind.
KEEP_THREAD_STATES = (fuse.fuse_version_major, fuse.fuse_version_minor) >= (3, 12)


def keep_thread_state() -> None:
    """Make the calling foreign thread's Python thread state outlive this callback.

    A ctypes callback on a thread Python did not start wraps the call in
    PyGILState_Ensure/Release, which creates a thread state and deletes it
    again (with its thread-locals and frame stack) when the count drops to
    zero. One Ensure never released keeps it alive for the thread's life
    (see KEEP_THREAD_STATES for when that is bounded). The threading.local
    lookup is itself only stable once the state is kept, which makes it the
    "done already" test.
    """
    if not getattr(_thread_state, "kept", False):
        _PyGILState_Ensure()
        _thread_state.kept = True


class ImapFUSE(fuse.FUSE):
    """mfusepy's FUSE, answering READDIRPLUS with full attributes.

    mfusepy passes only the mode to libfuse's filler and never sets
    FUSE_FILL_DIR_PLUS, so the kernel follows every readdir with one
    LOOKUP per entry: 10,000 extra round trips for `ls -l` on a big
    folder. libfuse 3 takes the attributes and answers those itself.
    """

    def _wrapper(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        if KEEP_THREAD_STATES:
            keep_thread_state()
        return super()._wrapper(func, *args, **kwargs)

    def init_fuse_3(self, conn: Any, config: Any) -> None:
        if conn:
            conn.contents.want &= ~FUSE_CAP_READDIRPLUS_AUTO
            if not conn.contents.capable & FUSE_CAP_NO_OPEN_SUPPORT and getattr(self.operations, "kernel_opens",
                                                                                False):
                # A kernel this old would fail every open answered ENOSYS.
                self.operations.kernel_opens = False
        super().init_fuse_3(conn, config)

    def readdir_fuse_3(self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any,
                       flags: int) -> int:
        # Entries carry offsets (index + 1): libfuse 3 only passes READDIRPLUS
        # attributes on to the kernel in its offset mode; in the other mode it
        # sends them with node id 0, which the kernel ignores.
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        plus = bool(flags & FUSE_READDIR_PLUS)
        try:
            items = self.operations.dir_snapshot(decoded, fip.contents.fh, offset, plus)
        except fuse.FuseOSError as exc:
            return -exc.errno
        prepared = self._prepare(items, plus)
        fill_flags = FUSE_FILL_DIR_PLUS if plus else 0
        for index in range(offset, len(prepared)):
            name, stat_arg = prepared[index]
            if filler(buf, name, stat_arg, index + 1, fill_flags if stat_arg is not None else 0) != 0:
                break
        return 0

    def _prepare(self, items: list[Any], plus: bool) -> list[tuple[bytes, Any]]:
        """Encoded names and filled stat buffers for entries, remembered for
        the last entries list seen (the same list comes back while unchanged)."""
        last = getattr(self, "_prepared", None)
        if last is not None and last[0] is items and last[1] == plus:
            return last[2]
        prepared: list[tuple[bytes, Any]] = []
        for item in items:
            name, attrs = (item, None) if isinstance(item, str) else (item[0], item[1])
            st = None
            if isinstance(attrs, dict):
                st = fuse.c_stat()
                if plus:
                    fill_stat(st, attrs)
                else:
                    st.st_mode = attrs["st_mode"]
            prepared.append((name.encode(self.encoding, self.errors), st))
        self._prepared = (items, plus, prepared)
        return prepared


def fill_stat(st: Any, attrs: dict[str, Any]) -> None:
    """mfusepy.set_st_attrs for the keys imapfs's stat dicts have, without its
    per-key lookups: a READDIRPLUS of 10,000 messages fills 10,000 of these."""
    st.st_mode = attrs["st_mode"]
    st.st_nlink = attrs["st_nlink"]
    st.st_uid = attrs["st_uid"]
    st.st_gid = attrs["st_gid"]
    st.st_size = attrs["st_size"]
    if "st_blocks" in attrs:
        st.st_blocks = attrs["st_blocks"]
        st.st_blksize = attrs["st_blksize"]
    for name, spec in (("st_mtime", st.st_mtimespec), ("st_ctime", st.st_ctimespec), ("st_atime", st.st_atimespec)):
        spec.tv_sec, spec.tv_nsec = divmod(attrs[name], 1_000_000_000)


class KernelCache:
    """Tells the kernel to forget what it cached for a path (libfuse 3's
    fuse_invalidate_path), and stays away from libfuse once it shuts down.

    fuse_invalidate_path walks libfuse's node table, and at unmount
    fuse_main frees that table in fuse_destroy *before* it calls the
    filesystem's destroy(), so close() (from destroy) alone comes too late.
    Before every call, three signs of a shutdown are checked, the earliest
    first: the kernel has severed the connection (poll on /dev/fuse reports
    an error: true from the moment of the unmount, long before libfuse
    notices), the session's "exited" flag (a signal, or libfuse having
    noticed; reset when its loop returns), and its /dev/fuse fd (-1 once
    fuse_unmount ran, just before fuse_destroy; and checked to still be
    /dev/fuse, because fuse_unmount closes it before marking it -1 and the
    number may be reused meanwhile). The first sign seen stops it for good.
    The session itself lives until after destroy(), and close() waits for
    a call in progress.
    """

    def __init__(self, fuse_handle: int) -> None:
        lib = fuse._libfuse
        lib.fuse_get_session.restype = ctypes.c_void_p
        lib.fuse_get_session.argtypes = [ctypes.c_void_p]
        lib.fuse_session_exited.restype = ctypes.c_int
        lib.fuse_session_exited.argtypes = [ctypes.c_void_p]
        lib.fuse_session_fd.restype = ctypes.c_int
        lib.fuse_session_fd.argtypes = [ctypes.c_void_p]
        self._lib = lib
        self._fuse: ctypes.c_void_p | None = ctypes.c_void_p(fuse_handle)
        self._session = ctypes.c_void_p(lib.fuse_get_session(self._fuse))
        self._lock = threading.Lock()
        # The /dev/fuse device: an fd number reused by a socket after
        # fuse_unmount closed it (before it marks the fd gone) is not it.
        try:
            self._device: int | None = os.fstat(lib.fuse_session_fd(self._session)).st_rdev
        except OSError:
            self._device = None  # not seen: skip that one check rather than fail the mount

    @staticmethod
    def available() -> bool:
        lib = fuse._libfuse
        return all(hasattr(lib, name) for name in ("fuse_invalidate_path", "fuse_get_session", "fuse_session_exited",
                                                   "fuse_session_fd"))

    def forget(self, paths: list[str]) -> None:
        """Only from threads that serve no FUSE request: the kernel may wait
        on a request in that directory before it applies the notice."""
        with self._lock:
            for path in paths:
                if self._fuse is None:
                    return
                if self._shutting_down():
                    self._fuse = None
                    return
                self._lib.fuse_invalidate_path(self._fuse, path.encode("utf-8", "surrogateescape"))

    def _shutting_down(self) -> bool:
        if self._lib.fuse_session_exited(self._session):
            return True
        fd = self._lib.fuse_session_fd(self._session)
        if fd < 0:
            return True
        try:
            if self._device is not None and os.fstat(fd).st_rdev != self._device:
                return True
        except OSError:
            return True
        poller = select.poll()
        poller.register(fd, 0)  # no events asked: only POLLERR/POLLHUP/POLLNVAL can come back
        return bool(poller.poll(0))

    def close(self) -> None:
        with self._lock:
            self._fuse = None

