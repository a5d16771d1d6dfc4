"""A tiny filesystem on imapfs's FUSE binding whose own thread tells the
kernel to forget its files, nonstop: ``python -m tests.support.hammer_fs MOUNTPOINT``.

Used to show that unmounting while imapfs.fusebind.KernelCache is busy
never crashes: libfuse frees the node table that fuse_invalidate_path walks
before it calls the filesystem's destroy(). Prints "ready" once mounted.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import threading
import time

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

import mfusepy  # noqa: E402  (after FUSE_LIBRARY_NAME: mfusepy loads libfuse on import)

from imapfs.fusebind import ImapFUSE, KernelCache  # noqa: E402

NAMES = [f"file{i:04}" for i in range(500)]


class DelayedKernelCache(KernelCache):
    """KernelCache as a busy machine runs it: the thread may be preempted
    between finding libfuse alive and calling into it (HAMMER_DELAY_MS)."""

    delay = float(os.environ.get("HAMMER_DELAY_MS", "0")) / 1000

    def _shutting_down(self) -> bool:
        gone = super()._shutting_down()
        if not gone and self.delay:
            time.sleep(self.delay)
        return gone


class HammerFS:
    use_ns = True

    def __init__(self) -> None:
        self.cache: DelayedKernelCache | None = None
        self.now = time.time_ns()

    def init(self, path: str) -> None:
        context = mfusepy._libfuse.fuse_get_context()
        self.cache = DelayedKernelCache(context.contents.fuse)
        threading.Thread(target=self.hammer, daemon=True).start()
        print("ready", flush=True)

    def hammer(self) -> None:
        paths = ["/d/" + name for name in NAMES]
        assert self.cache is not None
        while True:
            self.cache.forget(paths)

    def destroy(self, path: str) -> None:
        if self.cache is not None:
            self.cache.close()

    def getattr(self, path: str, fh: object = None) -> dict[str, int]:
        common = {"st_uid": os.getuid(), "st_gid": os.getgid(), "st_mtime": self.now, "st_ctime": self.now,
                  "st_atime": self.now}
        if path in ("/", "/d"):
            return {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2, "st_size": 0, **common}
        if path.startswith("/d/") and path[3:] in NAMES:
            return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": 3, **common}
        raise mfusepy.FuseOSError(errno.ENOENT)

    def dir_snapshot(self, path: str, fh: int, offset: int, plus: bool) -> list[object]:
        if path == "/":
            return [".", "..", ("d", self.getattr("/d"), 0)]
        return [".", "..", *((name, self.getattr("/d/" + name), 0) for name in NAMES)]

    def readdir(self, path: str, fh: int) -> list[str]:
        return [entry if isinstance(entry, str) else entry[0] for entry in self.dir_snapshot(path, fh, 0, False)]

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return b"abc"[offset:offset + size]


if __name__ == "__main__":
    ImapFUSE(HammerFS(), sys.argv[1], foreground=True, attr_timeout=30, entry_timeout=30, max_idle_threads=10)
