"""ImapFS (without a mount) over folders whose names no directory can hold as they are."""

from __future__ import annotations

import errno

import mfusepy
import pytest

from imapfs import names
from imapfs.config import Options
from imapfs.fs import ImapFS
from imapfs.store import MailStore
from imapfs.views.folders import FoldersView
from imapfs.views.root import CompositeRoot
from tests.unit.fakes import FakePool, FakeServer

RAW = names.RAW_AMPERSAND
# name as pool.Session hands it over -> the path it must show under
HOSTILE = {
    "nul\x00x": "/nul%00x",
    "ctl\x01x": "/ctl%01x",
    "del\x7f": "/del%7F",
    "a//b": "/a/%/b",
    "trailing/": "/trailing/%",
    "/leading": "/%/leading",
    f"bad{RAW}Zz-name": "/bad%26Zz-name",
    "x/./y": "/x/%2E/y",
    "%": "/%25",
    "100%2F": "/100%252F",
}


def entry_names(entries):
    return sorted(e if isinstance(e, str) else e[0] for e in entries)


@pytest.fixture
def server():
    server = FakeServer()
    for name in HOSTILE:
        server.create(name)
        server.add(name, f"Subject: in {name!r}\r\n\r\nbody\r\n".encode("utf-8", "surrogatepass"))
    server.add("INBOX", b"Subject: plain\r\n\r\nbody\r\n")
    return server


@pytest.fixture
def fs(server):
    store = MailStore(FakePool(server), Options())
    return ImapFS(store, CompositeRoot(FoldersView(store)))


def test_the_root_lists_and_every_folder_shows_under_its_escaped_path(fs):
    root = entry_names(fs.readdir_entries("/", 0, False))
    assert {"INBOX", "nul%00x", "ctl%01x", "del%7F", "a", "trailing", "%", "bad%26Zz-name", "x", "%25",
            "100%252F"} <= set(root)
    for name, path in HOSTILE.items():
        assert fs.getattr(path)["st_mode"] & 0o040000, path
        files = [e for e in entry_names(fs.readdir_entries(path, 0, True)) if e.endswith(".eml")]
        assert len(files) == 1, (path, files)
        assert fs.getxattr(path, "user.imap.folder") == names.folder_display(name).encode("utf-8")
    assert entry_names(fs.readdir_entries("/INBOX", 0, False))[-1].endswith("_1.eml")


def test_a_directory_name_holding_the_delimiter_is_refused_not_split(fs, server):
    for path in ("/a%2Fb", "/INBOX/x%2Fy", "/new/%"):
        with pytest.raises(mfusepy.FuseOSError) as refused:
            fs.mkdir(path, 0o755)
        assert refused.value.errno in (errno.EINVAL, errno.ENOENT), path
    with pytest.raises(mfusepy.FuseOSError) as refused:
        fs.mkdir("/a%2Fb", 0o755)
    assert refused.value.errno == errno.EINVAL
    assert not [c for c in server.commands if c[0] == "CREATE"]
    # An escape that names one level creates that level.
    fs.mkdir("/ctl%02", 0o755)
    assert "ctl\x02" in server.mailboxes


def test_a_name_that_would_show_differently_is_refused(fs, server):
    with pytest.raises(mfusepy.FuseOSError) as refused:
        fs.mkdir("/50%25", 0o755)  # the folder "50%", which shows as "50%"
    assert refused.value.errno == errno.EINVAL
    fs.mkdir("/50%", 0o755)
    assert "50%" in server.mailboxes
