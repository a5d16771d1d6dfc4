"""Freshness and faults: changes made elsewhere show up, and the mount
survives a server that drops connections, restarts or goes away."""

from __future__ import annotations

import datetime as dt
import errno
import os
import random
import subprocess
import threading
import time
import uuid

import pytest

from tests.integration.helpers import eml_files, message, sh, wait_for

WHEN = dt.datetime(2024, 3, 5, 14, 32, tzinfo=dt.timezone.utc)


def names_in(path):
    try:
        return {p.name for p in eml_files(path)}
    except OSError:
        return set()


def test_changes_in_the_folder_in_use_show_within_5_seconds(dovecot, imap, fresh_folder, mount):
    first = dovecot.append(fresh_folder, message("already here"))
    m = mount()
    folder = m.path / fresh_folder
    assert len(names_in(folder)) == 1

    uid = dovecot.append(fresh_folder, message("new arrival"))
    assert wait_for(lambda: any(n.endswith(f"_{uid}.eml") for n in names_in(folder)), timeout=5)

    imap.select_folder(fresh_folder)
    imap.add_flags([first], [b"\\Flagged"])
    path = next(p for p in eml_files(folder) if p.name.endswith(f"_{first}.eml"))

    def flagged():
        done = sh("getfattr", "-n", "user.imap.flags", "--only-values", path, check=False)
        return "\\Flagged" in done.stdout.decode()
    assert wait_for(flagged, timeout=5)

    imap.delete_messages([first])
    imap.uid_expunge([first])
    assert wait_for(lambda: not any(n.endswith(f"_{first}.eml") for n in names_in(folder)), timeout=5)
    assert not path.exists()


def test_changes_in_other_listed_folders_show_by_polling(dovecot, fresh_folder, mount):
    other = f"{fresh_folder}-other"
    dovecot.create_folder(other)
    # A long listing TTL: only the poll can bring the change in.
    m = mount("listing_ttl=3600,poll_interval=2")
    names_in(m.path / fresh_folder)
    names_in(m.path / other)  # IDLE moves here; fresh_folder is left to polling
    uid = dovecot.append(fresh_folder, message("seen by polling"))
    assert wait_for(lambda: any(n.endswith(f"_{uid}.eml") for n in names_in(m.path / fresh_folder)), timeout=10)


def test_folders_created_and_deleted_elsewhere_show(dovecot, fresh_folder, mount):
    m = mount("folders_ttl=3600,poll_interval=2")
    assert (m.path / fresh_folder).is_dir()
    dovecot.create_folder(f"{fresh_folder}/born-elsewhere")
    assert wait_for(lambda: (m.path / fresh_folder / "born-elsewhere").is_dir(), timeout=10)
    dovecot.delete_folder(f"{fresh_folder}/born-elsewhere")
    assert wait_for(lambda: not (m.path / fresh_folder / "born-elsewhere").exists(), timeout=10)


def test_a_watched_folder_deleted_elsewhere_does_not_stall_idle(dovecot, fresh_folder, mount):
    # The IDLE connection is on fresh_folder when another client deletes it
    # (Dovecot then hangs up on it). imapfs must not keep retrying the
    # missing folder with growing pauses, deaf to the folder used next: that
    # one's new mail shows within seconds, and the log has no retry noise.
    other = f"{fresh_folder}-next"
    dovecot.create_folder(other)
    dovecot.append(fresh_folder, message("about to vanish"))
    m = mount()
    assert len(names_in(m.path / fresh_folder)) == 1
    time.sleep(1.5)  # IDLE settles on fresh_folder
    dovecot.delete_folder(fresh_folder)
    assert wait_for(lambda: not (m.path / fresh_folder).exists(), timeout=15)
    names_in(m.path / other)  # IDLE moves here
    time.sleep(1.5)
    uid = dovecot.append(other, message("seen by IDLE"))
    assert wait_for(lambda: any(n.endswith(f"_{uid}.eml") for n in names_in(m.path / other)), timeout=5)
    assert "doesn't exist" not in m.log(), m.log()


@pytest.mark.parametrize("options", ["", "ro"], ids=["read-write", "read-only"])
def test_recreated_folder_never_serves_the_old_bytes(dovecot, fresh_folder, mount, options):
    # Read-only mounts let the kernel reuse a name's cached pages without
    # asking imapfs (fast_open): only the invalidation imapfs sends when
    # UIDVALIDITY changes keeps the old bytes from being served there.
    old = message("same subject", "OLD BYTES " * 50)
    new = message("same subject", "NEW BYTES " * 60)
    uid = dovecot.append(fresh_folder, old, msg_time=WHEN)
    m = mount(options)
    folder = m.path / fresh_folder
    path = eml_files(folder)[0]
    assert sh("cat", path).stdout == old
    assert sh("cat", path).stdout == old  # now in every cache there is

    dovecot.delete_folder(fresh_folder)
    dovecot.create_folder(fresh_folder)
    assert dovecot.append(fresh_folder, new, msg_time=WHEN) == uid  # UIDs restart: the same file name

    def shows_new():
        done = sh("cat", path, check=False)
        assert done.stdout in (old, new, b""), "a read mixed two messages"
        return done.stdout == new
    assert wait_for(shows_new, timeout=10)
    for _ in range(5):
        assert sh("cat", path).stdout == new


def append_many(server, folder: str, count: int, token_every: int) -> int:
    """Append over one connection (fast); returns how many carry the token."""
    client = server.client()
    try:
        with_token = 0
        for i in range(count):
            has = i % token_every == 0
            with_token += has
            client.append(folder, message(f"bulk {i}", f"{'NEEDLE' if has else 'hay'} {i}"))
    finally:
        client.logout()
    return with_token


@pytest.mark.parametrize("fault", ["restart", "kicks"])
def test_grep_survives_a_server_restart(own_dovecot, mount, fault):
    own_dovecot.create_folder("bulk")
    expected = append_many(own_dovecot, "bulk", 1000, 7)
    m = mount("connections=2", url=own_dovecot.url, ca_file=own_dovecot.ca_file)
    grep = subprocess.Popen(["grep", "-rl", "NEEDLE", str(m.path / "bulk")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    time.sleep(0.5)
    if fault == "restart":
        own_dovecot.restart()
    else:  # every connection closed server-side, three times over
        for _ in range(3):
            own_dovecot.kick()
            time.sleep(0.2)
    out, err = grep.communicate(timeout=90)
    assert grep.returncode == 0, err
    assert len(out.split()) == expected


def test_server_down_means_eio_soon_then_recovery(own_dovecot, mount):
    own_dovecot.create_folder("box")
    for i in range(3):
        own_dovecot.append("box", message(f"kept {i}", f"body {i}"))
    m = mount("retry_for=5", url=own_dovecot.url, ca_file=own_dovecot.ca_file)
    files = eml_files(m.path / "box")
    cached = files[0].read_bytes()
    own_dovecot.stop()
    try:
        started = time.monotonic()
        with pytest.raises(OSError) as failure:
            files[1].read_bytes()
        assert failure.value.errno == errno.EIO
        assert time.monotonic() - started < 30
        # What was already fetched is still served.
        assert files[0].read_bytes() == cached
        assert {p.name for p in eml_files(m.path / "box")} == {p.name for p in files}
    finally:
        own_dovecot.start()

    def readable() -> bool:
        try:
            return files[1].read_bytes().startswith(b"From:")
        except OSError:  # still EIO until the pool reconnects
            return False

    assert wait_for(readable, timeout=30)


def test_connections_killed_server_side_are_replaced(own_dovecot, mount):
    own_dovecot.create_folder("box")
    own_dovecot.append("box", message("one"))
    m = mount(url=own_dovecot.url, ca_file=own_dovecot.ca_file)
    assert len(eml_files(m.path / "box")) == 1
    for _ in range(3):
        own_dovecot.kick()
        time.sleep(0.3)
        own_dovecot.append("box", message(f"after kick {uuid.uuid4().hex}"))
        paths = eml_files(m.path / "box")
        assert all(p.read_bytes().startswith(b"From:") for p in paths)
    assert wait_for(lambda: len(eml_files(m.path / "box")) == 4, timeout=10)


@pytest.mark.parametrize("options", ["", "ro"], ids=["read-write", "read-only"])
def test_churn_never_yields_a_wrong_read(own_dovecot, mount, options):
    own_dovecot.create_folder("churn")
    m = mount("connections=4", options, url=own_dovecot.url, ca_file=own_dovecot.ca_file)
    folder = m.path / "churn"
    stop = threading.Event()
    problems: list[str] = []
    reads = [0]

    def writer():
        client = own_dovecot.client()
        rng = random.Random(7)
        try:
            client.select_folder("churn")
            while not stop.is_set():
                if rng.random() < 0.6 or not client.search("ALL"):
                    token = uuid.uuid4().hex[:12]
                    client.append("churn", message(f"churn {token}", f"token={token} " + "x" * rng.randint(0, 20000)))
                else:
                    victim = rng.choice(client.search("ALL"))
                    client.delete_messages([victim])
                    client.uid_expunge([victim])
                time.sleep(rng.random() * 0.05)
        finally:
            client.logout()

    def reader():
        while not stop.is_set():
            try:
                entries = os.listdir(folder)
            except OSError as exc:
                problems.append(f"listdir: {exc}")
                continue
            for name in entries:
                try:
                    with open(folder / name, "rb") as handle:
                        data = handle.read()
                except FileNotFoundError:
                    continue  # expunged meanwhile: fine
                except OSError as exc:
                    if exc.errno == errno.ESTALE:
                        continue
                    problems.append(f"{name}: {exc}")
                    continue
                reads[0] += 1
                token = name.split("_churn-")[1].split("_")[0]
                if f"token={token} ".encode() not in data or not data.startswith(b"From:"):
                    problems.append(f"{name}: wrong bytes")

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(20)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive(), "a reader or the writer hung"
    assert problems == []
    assert reads[0] > 50
