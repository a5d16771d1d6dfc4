"""The persistent cache through the real CLI: remounts, offline mounts, kill -9."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import FUSERMOUNT
from tests.integration.helpers import eml_files, message, server_messages, sh, wait_for


def uid_of(path: Path) -> int:
    return int(path.name.rsplit("_", 1)[1].split(".")[0].split(",")[0])


def cache_database(tmp_path: Path) -> Path:
    found = list((tmp_path / "xdg-cache" / "imapfs").glob("*/cache.sqlite3"))
    assert len(found) == 1, found
    return found[0]


def test_remount_lists_at_once_with_changes_and_right_bytes(dovecot, imap, mount, fresh_folder, tmp_path):
    for i in range(20):
        dovecot.append(fresh_folder, message(f"cached {i}", f"body {i} " * 50))
    first = mount()
    folder = first.path / fresh_folder
    sh("ls", "-l", folder)
    files = eml_files(folder)
    read_before = {uid_of(p): p.read_bytes() for p in files[:5]}
    assert first.unmount() == 0
    database = cache_database(tmp_path)
    assert oct(os.stat(database).st_mode & 0o777) == "0o600"
    assert oct(os.stat(database.parent).st_mode & 0o777) == "0o700"

    # While unmounted: one message expunged, one flagged, one new.
    imap.select_folder(fresh_folder)
    gone = uid_of(files[10])
    imap.delete_messages([gone])
    imap.expunge()
    imap.add_flags([uid_of(files[11])], [b"\\Flagged"])
    dovecot.append(fresh_folder, message("arrived while unmounted"))

    second = mount()
    folder = second.path / fresh_folder
    truth = server_messages(imap, fresh_folder)
    # The previous mount's listing may show at once; its resync behind it
    # brings the changes within moments.
    assert wait_for(lambda: {uid_of(p) for p in eml_files(folder)} == set(truth), timeout=20)
    names = eml_files(folder)
    assert gone not in {uid_of(p) for p in names}
    for path in names:
        assert path.read_bytes() == truth[uid_of(path)]["body"], path.name
        assert path.stat().st_size == len(truth[uid_of(path)]["body"])
    for uid, body in read_before.items():
        assert body == truth[uid]["body"]
    assert "another imapfs mount" not in second.log()


def test_offline_serves_what_is_cached_and_nothing_else(own_dovecot, mount, tmp_path):
    own_dovecot.create_folder("box")
    own_dovecot.create_folder("listed-only")
    # Not beside box and listed-only: listing two folders in a row under one
    # parent is a walk, and the parent's other small folders are listed ahead.
    own_dovecot.create_folder("elsewhere/never-listed")
    for i in range(6):
        own_dovecot.append("box", message(f"offline {i}", f"body {i} " * 100))
    own_dovecot.append("listed-only", message("never read"))
    first = mount(url=own_dovecot.url, ca_file=own_dovecot.ca_file)
    files = eml_files(first.path / "box")
    (unread,) = eml_files(first.path / "listed-only")
    client = own_dovecot.client()
    truth = server_messages(client, "box")
    client.logout()
    for path in files[:3]:
        assert path.read_bytes() == truth[uid_of(path)]["body"]
    assert first.unmount() == 0
    own_dovecot.stop()

    offline = mount("offline", url=own_dovecot.url, ca_file=own_dovecot.ca_file)
    assert {"box", "elsewhere"} <= set(os.listdir(offline.path))
    assert os.listdir(offline.path / "elsewhere") == ["never-listed"]
    listed = eml_files(offline.path / "box")
    assert [p.name for p in listed] == [p.name for p in files]
    for path in listed[:3]:
        assert path.read_bytes() == truth[uid_of(path)]["body"]
        assert path.stat().st_size == len(truth[uid_of(path)]["body"])
    # Read-ahead brought the rest of box too: all of it reads.
    assert [p.read_bytes() for p in listed] == [truth[uid_of(p)]["body"] for p in listed]
    assert [p.name for p in eml_files(offline.path / "listed-only")] == [unread.name]
    started = time.monotonic()
    with pytest.raises(OSError) as failure:
        (offline.path / "listed-only" / unread.name).read_bytes()
    assert failure.value.errno == errno.EIO
    assert time.monotonic() - started < 2
    started = time.monotonic()
    with pytest.raises(OSError) as failure:
        os.listdir(offline.path / "elsewhere" / "never-listed")
    assert failure.value.errno == errno.EIO
    assert time.monotonic() - started < 2
    source = tmp_path / "new.eml"
    source.write_bytes(message("written offline"))
    done = sh("cp", source, offline.path / "box", check=False)
    assert done.returncode != 0 and b"Read-only file system" in done.stderr
    assert offline.unmount() == 0


def test_server_down_at_mount_time_mounts_from_the_cache(own_dovecot, mount):
    own_dovecot.create_folder("box")
    own_dovecot.append("box", message("kept", "kept body"))
    first = mount(url=own_dovecot.url, ca_file=own_dovecot.ca_file)
    (path,) = eml_files(first.path / "box")
    body = path.read_bytes()
    assert first.unmount() == 0
    own_dovecot.stop()
    second = mount("retry_for=1", url=own_dovecot.url, ca_file=own_dovecot.ca_file)
    assert "mounting with what the persistent cache holds" in second.log()
    assert [p.read_bytes() for p in eml_files(second.path / "box")] == [body]


def test_without_a_cache_an_unreachable_server_still_fails_the_mount(own_dovecot, mount):
    own_dovecot.stop()
    failed = mount("cache_dir=none", url=own_dovecot.url, ca_file=own_dovecot.ca_file, expect_fail=True)
    assert failed.returncode != 0


def test_kill_9_during_cache_writes_then_remount_serves_right_bytes(dovecot, imap, mount, fresh_folder, tmp_path):
    for i in range(150):
        dovecot.append(fresh_folder, message(f"heavy {i}", os.urandom(6000).hex()))
    truth = server_messages(imap, fresh_folder)
    first = mount()
    folder = first.path / fresh_folder
    eml_files(folder)
    grep = subprocess.Popen(["grep", "-rlc", "heavy", str(folder)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    database = cache_database(tmp_path)
    wal = Path(str(database) + "-wal")
    assert wait_for(lambda: wal.exists() and wal.stat().st_size > 200_000, timeout=30)
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(timeout=10)
    grep.kill()
    grep.wait(timeout=10)
    subprocess.run([FUSERMOUNT, "-u", "-z", str(first.path)], check=False, capture_output=True)

    second = mount()
    folder = second.path / fresh_folder
    names = eml_files(folder)
    assert {uid_of(p) for p in names} == set(truth)
    for path in names:
        assert path.read_bytes() == truth[uid_of(path)]["body"], path.name
    assert "did not end cleanly" in second.log()


def test_a_second_mount_of_the_account_runs_without_the_cache(dovecot, mount, fresh_folder):
    dovecot.append(fresh_folder, message("shared"))
    first = mount()
    second = mount()
    assert "another imapfs mount uses the disk cache" in second.log()
    assert [p.read_bytes() for p in eml_files(first.path / fresh_folder)] == \
        [p.read_bytes() for p in eml_files(second.path / fresh_folder)]
