"""The read-only view: ls, stat, cat, grep -r, cp -r, getfattr on a real mount."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.conftest import is_mounted
from tests.integration.helpers import eml_files, message, server_messages, sh, wait_for
from tests.support.corpus import bad_input_messages, odd_folder_names
from tests.support.mounts import process_state
from tests.support.proxy import SizeLyingProxy

WHEN = dt.datetime(2024, 3, 5, 14, 32, 7, tzinfo=dt.timezone.utc)


def test_messages_list_with_exact_size_mtime_and_bytes(dovecot, imap, fresh_folder, mount):
    raws = [message("Quarterly report", "numbers"), message("Lunch?", "tomorrow")]
    uids = [dovecot.append(fresh_folder, raw, msg_time=WHEN) for raw in raws]
    m = mount()
    folder = m.path / fresh_folder
    listing = sh("ls", "-l", "--time-style=+%s", folder).stdout.decode()
    names = sorted(p.name for p in eml_files(folder))
    assert names == sorted([f"2024-03-05_1432_Quarterly-report_{uids[0]}.eml", f"2024-03-05_1432_Lunch_{uids[1]}.eml"])
    for raw, uid in zip(raws, uids, strict=True):
        path = next(p for p in eml_files(folder) if p.name.endswith(f"_{uid}.eml"))
        st = path.stat()
        assert st.st_size == len(raw)
        assert int(st.st_mtime) == int(WHEN.timestamp())
        assert f" {len(raw)} {int(WHEN.timestamp())} {path.name}" in listing
        assert oct(st.st_mode & 0o777) == oct(0o444)
        assert sh("cat", path).stdout == raw
    # Reading never marks mail as read.
    assert all(b"\\Seen" not in m2["flags"] for m2 in server_messages(imap, fresh_folder).values())


def test_a_listing_in_many_pipelined_batches_shows_every_message_once(dovecot, imap, fresh_folder, mount):
    # fetch_batch=4 over 50 messages: 13 UID FETCH commands, four on the
    # wire at a time, whose answers Dovecot interleaves.
    sizes = {dovecot.append(fresh_folder, message(f"batch {i}", "y" * (7 * i))): None for i in range(50)}
    for uid, data in server_messages(imap, fresh_folder).items():
        sizes[uid] = len(data["body"])
    m = mount("fetch_batch=4")
    files = eml_files(m.path / fresh_folder)
    shown = {int(p.name.rsplit("_", 1)[1].removesuffix(".eml")): p.stat().st_size for p in files}
    assert shown == sizes
    assert "incomplete metadata" not in m.log()


def test_inbox_and_folders_are_directories(dovecot, mount):
    m = mount()
    top = sorted(os.listdir(m.path))
    assert "INBOX" in top and "Trash" in top
    assert (m.path / "INBOX").is_dir()


@pytest.mark.parametrize("options", ["", "ro"], ids=["read-write", "read-only"])
def test_bad_input_lists_under_unique_legal_names_and_reads_back_exactly(dovecot, fresh_folder, mount, options):
    # Read-only mounts read through the kernel's page cache from the first
    # byte (fast_open), so both kinds of mount must get every byte right.
    corpus = bad_input_messages()
    uid_to_raw = {dovecot.append(fresh_folder, raw): raw for _id, raw in corpus}
    m = mount(options)
    files = eml_files(m.path / fresh_folder)
    assert len(files) == len(corpus)
    assert len({f.name for f in files}) == len(files)
    for path in files:
        assert len(path.name.encode()) <= 255
        assert path.name not in {".", ".."} and "/" not in path.name
        uid = int(path.name.rsplit("_", 1)[1].removesuffix(".eml"))
        raw = uid_to_raw[uid]
        assert path.stat().st_size == len(raw), path.name
        assert sh("cat", path).stdout == raw, path.name
    by_subject = " ".join(f.name for f in files)
    assert "no-subject" in by_subject
    assert "テスト" in by_subject or "日本" in by_subject or any("Привет" in f.name for f in files)


def test_odd_folder_names_become_directories(dovecot, mount):
    folders = odd_folder_names()
    for name in folders:
        try:
            dovecot.create_folder(name)
        except Exception:  # already there from an earlier test in this session
            pass
    dovecot.append("Données/Été", message("deep", "in summer"))
    dovecot.append("L1/L2/L3/L4/L5/L6", message("deepest", "six levels"))
    m = mount()
    for name in folders:
        assert (m.path / name).is_dir(), name
    assert any(p.name.endswith(".eml") for p in (m.path / "Données" / "Été").iterdir())
    deepest = eml_files(m.path / "L1/L2/L3/L4/L5/L6")
    assert deepest and b"six levels" in deepest[0].read_bytes()


def test_grep_and_cp_r_see_every_message(dovecot, fresh_folder, mount, tmp_path):
    raws = [message(f"note {i}", f"token-{i % 3} body {i}") for i in range(30)]
    for raw in raws:
        dovecot.append(fresh_folder, raw)
    m = mount()
    grep = sh("grep", "-rl", "token-1", m.path / fresh_folder).stdout.decode().split()
    assert len(grep) == 10
    target = tmp_path / "copy"
    sh("cp", "-r", m.path / fresh_folder, target)
    assert sorted(p.read_bytes() for p in target.iterdir()) == sorted(raws)


def test_eight_parallel_readers_get_correct_bytes(dovecot, fresh_folder, mount):
    raws = {dovecot.append(fresh_folder, message(f"par {i}", f"{i}" * (2000 + 97 * i))): None for i in range(24)}
    m = mount("connections=3")
    files = eml_files(m.path / fresh_folder)
    assert len(files) == len(raws)

    def cat_all(offset: int) -> list[tuple[str, bytes]]:
        order = files[offset:] + files[:offset]
        return [(p.name, sh("cat", p).stdout) for p in order]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(cat_all, range(0, 24, 3)))
    expected = {p.name: p.read_bytes() for p in files}
    for result in results:
        for name, data in result:
            assert data == expected[name]
            i = name.split("_par-")[1].split("_")[0]
            assert data.rstrip().endswith(i.encode() * 10)


def test_xattrs_show_flags_uid_and_message_id(dovecot, fresh_folder, mount):
    uid = dovecot.append(fresh_folder, message("flagged one", extra="X-Test: 1\r\n"), flags=["\\Flagged", "$Label1"])
    m = mount()
    path = eml_files(m.path / fresh_folder)[0]
    assert sh("getfattr", "-n", "user.imap.uid", "--only-values", path).stdout.decode() == str(uid)
    flags = sh("getfattr", "-n", "user.imap.flags", "--only-values", path).stdout.decode().split()
    assert set(flags) == {"\\Flagged", "$Label1"}
    msgid = sh("getfattr", "-n", "user.imap.message_id", "--only-values", path).stdout.decode()
    assert msgid.startswith("<") and msgid.endswith("@example.org>")
    dump = sh("getfattr", "-d", path).stdout.decode()
    assert "user.imap.uid=" in dump


def test_listing_fetches_no_bodies(dovecot, fresh_folder, mount):
    for i in range(5):
        dovecot.append(fresh_folder, message(f"meta only {i}"))
    m = mount("debug")
    sh("ls", "-l", m.path / fresh_folder)
    sh("stat", *eml_files(m.path / fresh_folder))
    log = m.log()
    assert "RFC822.SIZE" in log  # the debug log does show the commands sent
    assert "BODY.PEEK[]" not in log and "BODY[]" not in log and "RFC822 " not in log.replace("RFC822.SIZE", "")
    assert "secret" not in log and dovecot.password not in log  # no credentials, even at debug


def test_read_only_mount_refuses_every_write(dovecot, fresh_folder, mount, tmp_path):
    dovecot.append(fresh_folder, message("keep me"))
    m = mount("ro")
    folder = m.path / fresh_folder
    existing = eml_files(folder)[0]
    outside = tmp_path / "x.eml"
    outside.write_bytes(message("new"))
    attempts = [
        ["cp", outside, folder / "x.eml"],
        ["rm", existing],
        ["mv", existing, m.path / "INBOX"],
        ["mkdir", folder / "sub"],
        ["rmdir", folder],
        ["touch", existing],
        ["setfattr", "-n", "user.imap.flags", "-v", "\\Seen", existing],
    ]
    for command in attempts:
        done = sh(*command, check=False)
        assert done.returncode != 0, command
        assert "Read-only file system" in done.stderr.decode(), (command, done.stderr)
    assert len(eml_files(folder)) == 1


def message_of_size(subject: str, size: int) -> bytes:
    """A message of exactly size bytes (a fixed header, the body padded)."""
    head = (f"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: {subject}\r\n"
            f"Date: Tue, 05 Mar 2024 14:32:00 +0000\r\nMessage-ID: <{subject.replace(' ', '-')}@example.org>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n").encode()
    need = size - len(head)
    lines, rest = divmod(need, 80)  # lines of 78 characters and CRLF, then a shorter one
    if rest == 1:
        lines, rest = lines - 1, 81
    body = b"x" * 78 + b"\r\n"
    return head + body * lines + (b"y" * (rest - 2) + b"\r\n" if rest else b"")


@pytest.mark.parametrize("lie", [300, -300], ids=["size-too-small", "size-too-large"])
@pytest.mark.parametrize("options", ["", "ro", "maildir,ro"], ids=["read-write", "read-only", "maildir-read-only"])
def test_misreported_sizes_are_corrected_and_read_back_exactly(dovecot, fresh_folder, mount, options, lie):
    # A server whose RFC822.SIZE is 300 bytes off (a proxy rewrites
    # Dovecot's), for small messages and one over the 1 MiB whole-fetch
    # limit (read in chunks). A read-write mount reads such a message direct
    # until its real length is known, so even the first read is whole. A
    # read-only mount lets the kernel read from its page cache at the size it
    # was told (fast_open): when that size is too small, the READ that finds
    # out waits for the kernel to take the notice, so the reader's next
    # read(2) asks for the size again and gets the rest: whole as well.
    # When it is too large, the first read is exact: no NUL padding.
    raws = [message(f"size {i}", f"line {i} of a message whose size is misreported\r\n" * 40) for i in range(30)]
    # Ends 100 bytes into a 128 KiB chunk: reported 300 short, the kernel
    # reads exactly up to that chunk's start, so only reading on finds the end.
    raws.append(message_of_size("size big", 12 * 128 * 1024 + 100))
    for raw in raws:
        dovecot.append(fresh_folder, raw)
    proxy = SizeLyingProxy(dovecot.imaps_port, dovecot.tls_dir, dovecot.ca_file, understate=lie)
    try:
        m = mount(options, url=f"imaps://{dovecot.user}@127.0.0.1:{proxy.port}")
        if "maildir" in options:  # a message's file is in new/ until it is \Seen
            files = sorted([*(m.path / fresh_folder / "new").iterdir(), *(m.path / fresh_folder / "cur").iterdir()])
        else:
            files = eml_files(m.path / fresh_folder)
        assert len(files) == len(raws)
        real = {len(raw) for raw in raws}
        assert all(path.stat().st_size + lie in real for path in files), "the proxy did not lie"
        by_subject = {raw.split(b"Subject: ")[1].split(b"\r\n")[0]: raw for raw in raws}
        for path in files:  # in listing order: a scan, with read-ahead
            first = sh("cat", path).stdout
            raw = by_subject[first.split(b"Subject: ")[1].split(b"\r\n")[0]]
            assert first == raw, (path.name, len(first), len(raw))

        def all_right():
            return all(path.stat().st_size in real and sh("cat", path).stdout in raws for path in files)
        assert wait_for(all_right, timeout=5)
        assert "showing the real size" in m.log()
    finally:
        proxy.close()


def test_read_only_mount_rereads_without_asking_imapfs(dovecot, fresh_folder, mount):
    # fast_open: on a read-only mount the kernel opens, reads from its page
    # cache and closes a message read before without a single request to
    # imapfs. Shown by stopping imapfs: a request would hang the reader.
    raws = [message(f"reread {i}", f"body {i} " * 300) for i in range(5)]
    for raw in raws:
        dovecot.append(fresh_folder, raw)
    m = mount("ro")
    files = eml_files(m.path / fresh_folder)
    first = {path: sh("cat", path).stdout for path in files}
    assert sorted(first.values()) == sorted(raws)
    os.kill(m.proc.pid, signal.SIGSTOP)
    try:
        for path, raw in first.items():
            done = subprocess.run(["cat", path], capture_output=True, timeout=5)
            assert done.returncode == 0 and done.stdout == raw, path.name
        done = subprocess.run(["grep", "-l", "body 3", *files], capture_output=True, timeout=5)
        assert done.stdout.decode().count(".eml") == 1
    finally:
        os.kill(m.proc.pid, signal.SIGCONT)
    assert sh("cat", files[0]).stdout == first[files[0]]


def test_read_write_mount_reads_through_imapfs_at_every_open(dovecot, fresh_folder, mount):
    # The counterpart: on a read-write mount every open reaches imapfs (close
    # must be able to report a failed APPEND), so a stopped imapfs stalls a
    # reader. Keeps the test above honest: it is fast_open that passes it.
    dovecot.append(fresh_folder, message("reread", "body " * 300))
    m = mount()
    path = eml_files(m.path / fresh_folder)[0]
    sh("cat", path)
    os.kill(m.proc.pid, signal.SIGSTOP)
    assert wait_for(lambda: process_state(m.proc.pid) == "T", timeout=5)
    reader = subprocess.Popen(["cat", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        try:
            reader.wait(timeout=2)
            stalled = False
        except subprocess.TimeoutExpired:
            stalled = True
    finally:
        # imapfs first: a reader whose request imapfs had already taken off
        # /dev/fuse when it was stopped is in D state, and neither dies when
        # killed nor lets a wait for it end until imapfs answers
        # (subprocess.run's kill-then-wait hung here 3 times in 20).
        os.kill(m.proc.pid, signal.SIGCONT)
        out, err = reader.communicate(timeout=30)
    assert stalled, f"cat ended while imapfs was stopped: exit {reader.returncode}, {err!r}"
    assert out.startswith(b"From:")  # the stalled read completes once imapfs runs again
    assert sh("cat", path).stdout.startswith(b"From:")


def test_allow_other_lets_other_users_read_and_nothing_else_does(dovecot, fresh_folder, mount):
    # FUSE keeps other users out of a mount unless it is made with
    # allow_other. Checked as user nobody, on mount points nobody can reach
    # (pytest's own temp dirs are private to root).
    raw = message("for everyone", "shared")
    dovecot.append(fresh_folder, raw)
    base = Path(tempfile.mkdtemp(prefix="imapfs-allow-other-"))
    base.chmod(0o755)
    as_nobody = ["runuser", "-u", "nobody", "--"]
    mounts = []
    try:
        mounts.append(private := mount(mountpoint=base / "private"))
        mounts.append(shared := mount("allow_other", mountpoint=base / "shared"))
        name = eml_files(shared.path / fresh_folder)[0].name
        done = subprocess.run([*as_nobody, "cat", str(shared.path / fresh_folder / name)], capture_output=True)
        assert (done.returncode, done.stdout) == (0, raw), done.stderr
        done = subprocess.run([*as_nobody, "ls", str(private.path)], capture_output=True)
        assert done.returncode != 0 and b"Permission denied" in done.stderr
        done = subprocess.run([*as_nobody, "cat", str(private.path / fresh_folder / name)], capture_output=True)
        assert done.returncode != 0 and done.stdout == b""
    finally:
        for m in mounts:
            if is_mounted(m.path):
                m.unmount()
        for mountpoint in base.iterdir():
            mountpoint.rmdir()  # rmdir, never rmtree: it must not reach into a mount
        base.rmdir()


def test_wrong_password_is_one_clear_line(mount):
    failed = mount(password="not the password", expect_fail=True)
    assert failed.returncode != 0
    lines = [line for line in failed.output.splitlines() if line.strip()]
    assert len(lines) == 1, failed.output
    assert "login" in lines[0].lower() or "authentication" in lines[0].lower()


def test_untrusted_certificate_is_refused(dovecot, mount):
    failed = mount(ca_file=dovecot.other_ca_file, expect_fail=True)
    assert failed.returncode != 0
    assert "certificate" in failed.output.lower()
    assert len(failed.output.strip().splitlines()) == 1


def test_system_store_does_not_trust_a_self_signed_server(mount):
    failed = mount(ca_file=None, expect_fail=True)
    assert failed.returncode != 0 and "certificate" in failed.output.lower()


def test_unreachable_server_and_bad_options_fail_clearly(dovecot, mount):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    failed = mount(url=f"imaps://alice@127.0.0.1:{port}", expect_fail=True)
    assert failed.returncode != 0 and "cannot reach" in failed.output
    failed = mount("no_such_option", expect_fail=True)
    assert failed.returncode != 0 and "unknown option 'no_such_option'" in failed.output
    failed = mount(password=None, expect_fail=True)
    assert failed.returncode != 0 and "no password" in failed.output


def test_starttls_url_and_password_command(dovecot, fresh_folder, mount):
    dovecot.append(fresh_folder, message("via starttls"))
    command = f"printf %s '{dovecot.password}'"
    m = mount(f"password_command={command.replace(',', chr(92) + ',')}", url=dovecot.starttls_url, password=None)
    assert len(eml_files(m.path / fresh_folder)) == 1


def test_plaintext_imap_needs_explicit_permission(dovecot, mount):
    # The fixture's plain port offers STARTTLS; -o insecure_plaintext is only
    # about servers that lack it, so here it must still mount over TLS.
    m = mount("insecure_plaintext", url=dovecot.starttls_url)
    assert (m.path / "INBOX").is_dir()


def test_daemon_mode_returns_once_mounted(dovecot, mount):
    m = mount(foreground=False)
    assert m.proc.returncode == 0
    assert is_mounted(m.path) and (m.path / "INBOX").is_dir()
    m.unmount()
    assert not is_mounted(m.path)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_cleanly(dovecot, mount, sig):
    m = mount()
    assert (m.path / "INBOX").is_dir()
    m.proc.send_signal(sig)
    assert m.proc.wait(timeout=15) == 0
    assert not is_mounted(m.path)
    assert "unmounted" in m.log()


def test_fusermount_unmount_ends_the_process(dovecot, mount):
    m = mount()
    os.listdir(m.path / "INBOX")
    assert m.unmount() == 0
    time.sleep(0.1)
    assert not is_mounted(m.path)
    # Nothing but imapfs's own lines: no library noise on a user's terminal.
    assert all(line.startswith("imapfs: ") for line in m.log().splitlines() if line), m.log()


def test_help_lists_every_option():
    done = subprocess.run([sys.executable, "-m", "imapfs", "--help"], capture_output=True, text=True, check=True)
    for name in ("ro", "ca_file", "password_command", "insecure_plaintext", "connections", "debug", "allow_other",
                 "body_cache_mb"):
        assert f"-o {name}" in done.stdout


def test_fstab_style_mount_through_mount_fuse3(dovecot, fresh_folder, tmp_path):
    """What mount(8) does for an /etc/fstab line of type fuse.imapfs: run
    mount.fuse3, which starts `imapfs URL MOUNTPOINT -o OPTIONS` with the
    options after the positionals and fstab-only options mixed in."""
    dovecot.append(fresh_folder, message("from fstab"))
    mountpoint = tmp_path / "fstab-mnt"
    mountpoint.mkdir()
    env = dict(os.environ, IMAPFS_PASSWORD=dovecot.password,
               PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    options = f"ca_file={dovecot.ca_file},nosuid,nodev,noatime,_netdev,rw,log_file={tmp_path / 'fstab.log'}"
    done = subprocess.run(["mount.fuse3", f"imapfs#{dovecot.url}", str(mountpoint), "-o", options],
                          env=env, capture_output=True, text=True, timeout=60)
    try:
        assert done.returncode == 0, done.stderr
        assert is_mounted(mountpoint)
        assert [p.read_bytes() for p in eml_files(mountpoint / fresh_folder)] == [message("from fstab")]
        mountinfo = open("/proc/self/mountinfo").read()
        line = next(line for line in mountinfo.splitlines() if str(mountpoint) in line)
        assert "fuse.imapfs" in line and "nosuid" in line and dovecot.url in line
    finally:
        subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=30)
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, timeout=30)
    assert not is_mounted(mountpoint)


@pytest.mark.parametrize("behaviour", ["silent", "hang-up", "not-tls"])
def test_broken_servers_fail_clearly_and_in_time(mount, behaviour):
    """A server that accepts and never speaks, one that hangs up at once, and
    one that is not TLS at all: one clear line each, within the timeout."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    stop = threading.Event()
    held = []

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            if behaviour == "silent":
                held.append(conn)
            elif behaviour == "hang-up":
                conn.close()
            else:
                conn.sendall(b"* OK plain text IMAP, no TLS here\r\n")
                held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        failed = mount("timeout=2", url=f"imaps://alice@127.0.0.1:{port}", expect_fail=True)
        assert time.monotonic() - started < 15
    finally:
        stop.set()
        thread.join(timeout=2)
        for conn in held:
            conn.close()
        listener.close()
    assert failed.returncode != 0
    lines = [line for line in failed.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("imapfs: error:"), failed.output
    expected = {"silent": ("did not answer in time",), "hang-up": ("cannot reach", "connection lost", "TLS failed"),
                "not-tls": ("TLS failed",)}[behaviour]
    assert any(word in lines[0] for word in expected), lines[0]
    assert f"127.0.0.1:{port}" in lines[0]
