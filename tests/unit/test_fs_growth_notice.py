"""Read-only mounts (kernel_opens): a READ of a message found longer than
the size the kernel holds is answered only once the kernel has taken the
notice for the very path being read (so the reader's next read(2) asks for
the size again), in every layout, whoever found the size."""

from __future__ import annotations

import threading
import types

import pytest

from imapfs.config import Options
from imapfs.fs import ImapFS
from imapfs.store import MailStore
from imapfs.views.folders import FoldersView
from imapfs.views.maildir import MaildirView
from imapfs.views.root import CompositeRoot
from tests.unit.fakes import FakePool, FakeServer


class FakeKernel:
    """KernelCache stand-in: records the paths the forgetter invalidates."""

    def __init__(self) -> None:
        self.told: list[str] = []

    def forget(self, paths: list[str]) -> None:
        self.told.extend(paths)

    def close(self) -> None:
        pass


def mounted_ro(view_cls, tmp_path, kernel=None):
    """A read-only mount of one message the server says is 40 bytes; returns
    (fs, the fake kernel, the message). The store is fs.store, the UID 1."""
    server = FakeServer()
    real = b"Subject: liar\r\n\r\n" + b"the real body, longer than said\r\n" * 20
    server.add("INBOX", real, reported_size=40)
    store = MailStore(FakePool(server), Options(listing_ttl=3600))
    fs = ImapFS(store, CompositeRoot(view_cls(store, spool_dir=str(tmp_path))), read_only=True, kernel_opens=True)
    kernel = kernel or FakeKernel()
    # what init() does once libfuse is up
    fs._kernel_cache = kernel
    fs._forgetter = threading.Thread(target=fs._forget_loop, daemon=True)
    fs._forgetter.start()
    store.on_names_changed = fs.names_changed
    store.on_size_corrected = fs.size_corrected
    return fs, kernel, real


@pytest.mark.parametrize("view_cls, directory", [(FoldersView, "/INBOX"), (MaildirView, "/INBOX/new")],
                         ids=["folders", "maildir"])
def test_the_growing_read_returns_once_its_own_file_was_invalidated(tmp_path, view_cls, directory):
    fs, kernel, real = mounted_ro(view_cls, tmp_path)
    try:
        names = [e if isinstance(e, str) else e[0] for e in fs.readdir_entries(directory, 0, True)]
        (name,) = [n for n in names if n not in (".", "..")]
        path = f"{directory}/{name}"
        data = fs.read(path, 4096, 0, types.SimpleNamespace(fh=0))  # a READ the kernel sent of its own
        assert data == real
        told_when_answered = list(kernel.told)
        # The premise of _await_notice: by the time this READ is answered, the
        # kernel's attributes of the file being read are invalid.
        assert path in told_when_answered, told_when_answered
    finally:
        fs._forget_queue.put(None)


class BusyKernel(FakeKernel):
    """The forgetter is still busy for a moment with an earlier notice (a
    recreated folder's thousands of names, or a page another READ holds)."""

    def __init__(self) -> None:
        super().__init__()
        self.busy = threading.Event()

    def forget(self, paths: list[str]) -> None:
        if paths == ["/busy"]:
            self.busy.wait(5)
        super().forget(paths)


@pytest.mark.parametrize("learnt_by", ["the READ", "read-ahead"])
def test_a_size_learnt_by_read_ahead_is_also_in_the_kernel_before_the_read_answers(tmp_path, learnt_by):
    kernel = BusyKernel()
    fs, _, real = mounted_ro(FoldersView, tmp_path, kernel)
    store, uid = fs.store, 1
    try:
        names = [e if isinstance(e, str) else e[0] for e in fs.readdir_entries("/INBOX", 0, True)]
        (name,) = [n for n in names if n not in (".", "..")]
        path = f"/INBOX/{name}"
        listing = store.listing("INBOX")
        fs._forget_queue.put((0.0, ["/busy"]))
        threading.Timer(0.05, kernel.busy.set).start()  # busy for 50 ms
        if learnt_by == "read-ahead":
            # The background window (imapfs-readahead thread) fetched this
            # body, learnt its real size and queued the notice; the kernel's
            # READ (which waited for that fetch: readahead.wait_for) comes now.
            key = ("INBOX", listing.uidvalidity, uid)
            fetcher = threading.Thread(target=store.fetch_bodies, args=("INBOX", listing.uidvalidity, [key]))
            fetcher.start()
            fetcher.join()
        data = fs.read(path, 4096, 0, types.SimpleNamespace(fh=0))
        assert data == real
        assert path in kernel.told, f"answered before the kernel heard of the new size ({learnt_by})"
    finally:
        kernel.busy.set()
        fs._forget_queue.put(None)
