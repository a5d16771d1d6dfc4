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

- On libfuse 3.12+, the mount's main loop run as fuse_main_real runs it,
  but with one step between the loop's end and fuse_destroy: every
  KernelCache stops (waiting for a call in progress). fuse_destroy frees
  the node table fuse_invalidate_path walks, and fuse_main_real gives the
  filesystem no word before it does (destroy() comes after).

Operations passed to ImapFUSE provide ``dir_snapshot(path, fh, offset,
plus)``: the directory's entries, as names or (name, stat dict, 0). An
operations object whose ``kernel_opens`` is true answers open with ENOSYS;
ImapFUSE turns it off on a kernel without zero-message opens.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import threading
import weakref
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
# The main loop run here (see _main_stopping_kernel_caches_first): the calls it
# needs exist from libfuse 3.12 on, under these names whatever the default version.
_MAIN_CALLS = ("fuse_new_31", "fuse_mount", "fuse_daemonize", "fuse_get_session", "fuse_set_signal_handlers",
               "fuse_remove_signal_handlers", "fuse_loop", "fuse_loop_mt_312", "fuse_loop_cfg_create",
               "fuse_loop_cfg_destroy", "fuse_loop_cfg_set_clone_fd", "fuse_loop_cfg_set_idle_threads",
               "fuse_loop_cfg_set_max_threads", "fuse_unmount", "fuse_destroy", "fuse_opt_free_args")
OWN_MAIN_LOOP = KEEP_THREAD_STATES and fuse.fuse_version_major == 3 and all(
    hasattr(fuse._libfuse, name) for name in _MAIN_CALLS)
# Options fuse_main_real's command line parser takes for the loop; fuse_new refuses them.
_LOOP_OPTIONS = (b"max_idle_threads", b"max_threads", b"clone_fd")
# How long the end of the loop waits for an invalidation in progress (one
# blocked in the kernel, on a page a reader holds while its READ goes
# unanswered now that the loop has ended, would otherwise wait forever).
STOP_WAIT_SECONDS = 5.0
log = logging.getLogger(__name__)
_kernel_caches: weakref.WeakSet[KernelCache] = weakref.WeakSet()


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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not OWN_MAIN_LOOP:
            super().__init__(*args, **kwargs)
            return
        # mfusepy calls fuse_main_real through its module global.
        original = fuse.fuse_main_real
        fuse.fuse_main_real = _main_stopping_kernel_caches_first
        try:
            super().__init__(*args, **kwargs)
        finally:
            fuse.fuse_main_real = original

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
        fill_flags = FUSE_FILL_DIR_PLUS if plus else 0
        # One stat buffer for all entries: the filler copies it into the
        # reply at once, so nothing per entry outlives this call.
        st = fuse.c_stat()
        for index in range(offset, len(items)):
            item = items[index]
            name, attrs = (item, None) if isinstance(item, str) else (item[0], item[1])
            stat_arg = None
            if isinstance(attrs, dict):
                ctypes.memset(ctypes.byref(st), 0, ctypes.sizeof(st))
                if plus:
                    fill_stat(st, attrs)
                else:
                    st.st_mode = attrs["st_mode"]
                stat_arg = st
            if filler(buf, name.encode(self.encoding, self.errors), stat_arg, index + 1,
                      fill_flags if stat_arg is not None else 0) != 0:
                break
        return 0


class _FuseArgs(ctypes.Structure):
    _fields_ = [("argc", ctypes.c_int), ("argv", ctypes.POINTER(ctypes.c_char_p)), ("allocated", ctypes.c_int)]


def _split_options(text: bytes) -> list[bytes]:
    """'a,b=c\\,d' -> [b'a', b'b=c\\,d']: libfuse's -o syntax, escapes kept."""
    items, current, escaped = [], bytearray(), False
    for byte in text:
        if escaped:
            current.append(byte)
            escaped = False
        elif byte == ord("\\"):
            current.append(byte)
            escaped = True
        elif byte == ord(","):
            items.append(bytes(current))
            current = bytearray()
        else:
            current.append(byte)
    items.append(bytes(current))
    return [item for item in items if item]


def _main_stopping_kernel_caches_first(argc: int, argv: Any, operations: Any, operations_size: int,
                                        user_data: Any) -> int:
    """libfuse 3.14's fuse_main_real, step for step, for the arguments
    mfusepy passes (progname, -f/-s/-d, -o OPTIONS, mountpoint), with every
    KernelCache stopped after the loop ends and before fuse_destroy frees
    the node table (see KernelCache). Returns what fuse_main_real would."""
    lib = fuse._libfuse
    lib.fuse_new_31.restype = ctypes.c_void_p
    lib.fuse_get_session.restype = ctypes.c_void_p
    lib.fuse_get_session.argtypes = [ctypes.c_void_p]
    lib.fuse_loop_cfg_create.restype = ctypes.c_void_p
    for name in ("fuse_mount", "fuse_loop", "fuse_loop_mt_312", "fuse_unmount", "fuse_destroy"):
        getattr(lib, name).argtypes = [ctypes.c_void_p] + ([ctypes.c_char_p] if name == "fuse_mount" else
                                                           [ctypes.c_void_p] if name == "fuse_loop_mt_312" else [])
    for name in ("fuse_set_signal_handlers", "fuse_remove_signal_handlers", "fuse_loop_cfg_destroy"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    for name in ("fuse_loop_cfg_set_clone_fd", "fuse_loop_cfg_set_idle_threads", "fuse_loop_cfg_set_max_threads"):
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_uint]

    given = [argv[i] for i in range(argc)]
    kept, options, loop = [given[0]], [], {}
    foreground = single_thread = False
    mountpoint = None
    position = 1
    while position < len(given):
        arg = given[position]
        if arg == b"-f":
            foreground = True
        elif arg == b"-s":
            single_thread = True
        elif arg == b"-d":
            kept.append(arg)  # fuse_new takes it too
        elif arg == b"-o" and position + 1 < len(given):
            position += 1
            options.extend(_split_options(given[position]))
        elif arg.startswith(b"-o"):
            options.extend(_split_options(arg[2:]))
        else:
            mountpoint = arg
        position += 1
    for option in options:
        name, _, value = option.partition(b"=")
        if name in _LOOP_OPTIONS:
            loop[name] = int(value) if value else 1
    options = [option for option in options if option.partition(b"=")[0] not in _LOOP_OPTIONS]
    if options:
        kept += [b"-o", b",".join(options)]
    if mountpoint is None:
        return 2
    c_argv = (ctypes.c_char_p * (len(kept) + 1))(*kept, None)
    args = _FuseArgs(len(kept), c_argv, 0)
    handle = lib.fuse_new_31(ctypes.byref(args), operations, ctypes.c_size_t(operations_size), user_data)
    if not handle:
        lib.fuse_opt_free_args(ctypes.byref(args))
        return 3
    config = None
    result = 0
    try:
        if lib.fuse_mount(handle, mountpoint) != 0:
            return 4
        try:
            session = lib.fuse_get_session(handle)
            if lib.fuse_daemonize(1 if foreground else 0) != 0:
                return 5
            if lib.fuse_set_signal_handlers(session) != 0:
                return 6
            if single_thread:
                result = lib.fuse_loop(handle)
            else:
                config = lib.fuse_loop_cfg_create()
                if not config:
                    return 7
                lib.fuse_loop_cfg_set_clone_fd(config, loop.get(b"clone_fd", 0))
                if b"max_idle_threads" in loop:
                    lib.fuse_loop_cfg_set_idle_threads(config, loop[b"max_idle_threads"])
                if b"max_threads" in loop:
                    lib.fuse_loop_cfg_set_max_threads(config, loop[b"max_threads"])
                result = lib.fuse_loop_mt_312(handle, config)
            # The loop has ended and its workers are joined: from here on
            # libfuse tears down, and nothing may walk its node table.
            for cache in list(_kernel_caches):
                cache.stop(STOP_WAIT_SECONDS)
            lib.fuse_remove_signal_handlers(session)
            return 1 if result else 0
        finally:
            for cache in list(_kernel_caches):
                cache.stop(0)
            lib.fuse_unmount(handle)
    finally:
        lib.fuse_destroy(handle)
        if config:
            lib.fuse_loop_cfg_destroy(config)
        lib.fuse_opt_free_args(ctypes.byref(args))


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

    Checks alone leave a race: a thread preempted between a check and its
    call (a busy machine, the GIL) walks the table after fuse_destroy freed
    it. So on libfuse 3.12+ ImapFUSE runs the main loop itself and calls
    stop() on every KernelCache between the loop's end and fuse_destroy;
    each call holds the lock from its check to its end, so stop() waits
    for it, and none starts after.
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
        self._stopping = False  # set (without the lock) by stop(): no new call starts
        self._session = ctypes.c_void_p(lib.fuse_get_session(self._fuse))
        self._lock = threading.Lock()
        # The /dev/fuse device: an fd number reused by a socket after
        # fuse_unmount closed it (before it marks the fd gone) is not it.
        try:
            self._device: int | None = os.fstat(lib.fuse_session_fd(self._session)).st_rdev
        except OSError:
            self._device = None  # not seen: skip that one check rather than fail the mount
        _kernel_caches.add(self)

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
                if self._fuse is None or self._stopping:
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

    def stop(self, wait: float) -> None:
        """No call into libfuse from now on; wait up to `wait` seconds for
        one in progress (the main loop calls this before fuse_destroy)."""
        self._stopping = True
        if self._lock.acquire(timeout=wait):
            self._fuse = None
            self._lock.release()
        elif wait:
            log.warning("a kernel cache invalidation did not finish within %.0f s of the unmount", wait)

    def close(self) -> None:
        with self._lock:
            self._fuse = None

