"""Filing mail in lands exactly once and whole, or fails visibly with the source
kept: under readers, fsync, forked children, two writers, slow and cut
connections, kill -9 and big files. Every outcome is checked from a second,
independent IMAP connection."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.helpers import eml_files, message, server_messages, sh, wait_for
from tests.support.dovecot import Dovecot
from tests.support.mounts import is_mounted
from tests.support.proxy import AppendRelay


def crlf(data: bytes) -> bytes:
    """What the server stores for a file: line endings made CRLF."""
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)


def big_message(megabytes: float, token: str, message_id: str | None = None) -> bytes:
    header = (f"From: a@example.org\nSubject: big {token}\nMessage-ID: <{message_id or token}@example.org>\n"
              "Date: Tue, 05 Mar 2024 14:32:00 +0000\n\n").encode()
    line = (token[:8] + "x" * 67 + "\n").encode()
    return header + line * int(megabytes * 1024 * 1024 / len(line))


def bodies(imap, folder) -> list[bytes]:
    return [d["body"] for d in server_messages(imap, folder).values()]


def test_cp_with_a_reader_looping_on_the_file_appends_it_once_and_whole(imap, fresh_folder, mount, tmp_path):
    raw = big_message(40, uuid.uuid4().hex)
    source = tmp_path / "big.eml"
    source.write_bytes(raw)
    m = mount()
    target = m.path / fresh_folder / "big.eml"
    # The issue's own reproduction: head -c1 on the file for as long as cp runs.
    loop = subprocess.Popen(["bash", "-c", f'cp "{source}" "{target.parent}/" & pid=$!; n=0; '
                             f'while kill -0 $pid 2>/dev/null; do head -c1 "{target}" >/dev/null 2>&1 && n=$((n+1)); '
                             'done; wait $pid; status=$?; echo "$n"; exit $status'], stdout=subprocess.PIPE)
    out, _ = loop.communicate(timeout=120)
    assert loop.returncode == 0
    assert int(out.strip()) > 0, "no read overlapped the copy: the test showed nothing"
    assert bodies(imap, fresh_folder) == [crlf(raw)]


def slow_writer(path: Path, data: bytes, pieces: int = 40, pause: float = 0.02, **hooks) -> None:
    """Write data in pieces with pauses, calling hooks['after_N'](fd) after piece N."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        step = -(-len(data) // pieces)
        for number, start in enumerate(range(0, len(data), step)):
            os.write(fd, data[start:start + step])
            if f"after_{number}" in hooks:
                hooks[f"after_{number}"](fd)
            time.sleep(pause)
    finally:
        os.close(fd)


def test_grep_over_the_folder_during_a_slow_copy_appends_nothing_partial(imap, fresh_folder, mount):
    raw = big_message(4, uuid.uuid4().hex)
    m = mount()
    folder = m.path / fresh_folder
    writer = threading.Thread(target=slow_writer, args=(folder / "slow.eml", raw))
    writer.start()
    greps = 0
    while writer.is_alive():
        done = sh("grep", "-rlc", "xxxx", folder, check=False)
        greps += done.returncode == 0
    writer.join()
    assert greps > 3
    assert bodies(imap, fresh_folder) == [crlf(raw)]


def test_fsync_mid_write_stores_nothing_until_close(imap, fresh_folder, mount):
    raw = big_message(2, uuid.uuid4().hex)
    m = mount()
    seen_at_fsync = []
    slow_writer(m.path / fresh_folder / "synced.eml", raw, pieces=10, pause=0,
                after_4=lambda fd: (os.fsync(fd), seen_at_fsync.append(len(bodies(imap, fresh_folder)))))
    assert seen_at_fsync == [0]
    assert bodies(imap, fresh_folder) == [crlf(raw)]


def test_forked_child_closing_an_inherited_descriptor_stores_nothing(imap, fresh_folder, mount):
    raw = message("inherited", "x" * 100_000)
    m = mount()
    fd = os.open(m.path / fresh_folder / "inherited.eml", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, raw[:5000])
    child = os.fork()
    if child == 0:  # as a shell's child or a daemon does: close what it inherited, and go
        os.close(fd)
        os._exit(0)
    assert os.waitpid(child, 0)[1] == 0
    assert bodies(imap, fresh_folder) == []
    os.write(fd, raw[5000:])
    os.close(fd)
    assert bodies(imap, fresh_folder) == [raw]


def test_two_cp_of_one_name_at_once_never_store_two_messages_or_a_mixture(imap, fresh_folder, mount, tmp_path):
    m = mount()
    sources: set[bytes] = set()
    for attempt in range(6):
        first, second = (big_message(3, f"{kind}{attempt}{uuid.uuid4().hex}") for kind in "ab")
        if attempt % 2:
            second = first  # the same file copied twice at once
        (tmp_path / "a.eml").write_bytes(first)
        (tmp_path / "b.eml").write_bytes(second)
        sources |= {crlf(first), crlf(second)}
        target = m.path / fresh_folder / f"same{attempt}.eml"
        runs = [subprocess.Popen(["cp", tmp_path / name, target], stderr=subprocess.PIPE)
                for name in ("a.eml", "b.eml")]
        codes = [run.wait(timeout=60) for run in runs]
        everything = bodies(imap, fresh_folder)
        assert all(body in sources for body in everything), "a mixture of two files was stored"
        stored = [body for body in everything if body in (crlf(first), crlf(second))]
        assert len(stored) == 1, (attempt, codes)
        assert 0 in codes
        assert stored == [crlf(first if codes[0] == 0 else second)]


def test_echo_into_a_folder_fails_in_the_shell(imap, fresh_folder, mount):
    m = mount()
    done = sh("bash", "-c", f'echo hi > "{m.path / fresh_folder}/note.txt"', check=False)
    assert done.returncode != 0 and b"write error" in done.stderr, done.stderr
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(300_000)
    done = sh("bash", "-c", f'cat > "{m.path / fresh_folder}/picture.png"', input=png, check=False)
    assert done.returncode != 0 and b"Invalid argument" in done.stderr
    assert bodies(imap, fresh_folder) == []


def test_kill_9_of_a_writer_half_way_stores_nothing(imap, fresh_folder, mount):
    raw = big_message(4, uuid.uuid4().hex)
    m = mount()
    target = m.path / fresh_folder / "killed.eml"
    script = ("import os, sys, time\n"
              "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)\n"
              "os.write(fd, sys.stdin.buffer.read())\n"
              "print('written', flush=True)\n"
              "time.sleep(60)\n")
    writer = subprocess.Popen([sys.executable, "-c", script, target], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    writer.stdin.write(raw[: len(raw) // 2])
    writer.stdin.close()
    assert writer.stdout.readline() == b"written\n"
    writer.kill()
    writer.wait(timeout=10)
    assert wait_for(lambda: not target.exists(), timeout=10)
    assert bodies(imap, fresh_folder) == []
    assert "not appended" in m.log() and "killed by signal 9" in m.log()


def relay_mount(mount, dovecot, relay: AppendRelay, *options: str):
    return mount("timeout=2", "retry_for=8", *options, url=f"imaps://{dovecot.user}@127.0.0.1:{relay.port}")


def test_server_storing_an_append_after_the_timeout_gets_it_once(dovecot, imap, fresh_folder, mount, tmp_path):
    raw = message("slow server", uuid.uuid4().hex)
    source = tmp_path / "slow.eml"
    source.write_bytes(raw)
    relay = AppendRelay(dovecot.imaps_port, dovecot.tls_dir, dovecot.ca_file, hold_seconds=3.5)
    try:
        m = relay_mount(mount, dovecot, relay)
        started = time.monotonic()
        sh("mv", source, m.path / fresh_folder)  # exits 0 only if the message is on the server
        took = time.monotonic() - started
        assert relay.completed == 1 and relay.appends == 1  # one APPEND, never sent again
    finally:
        relay.close()
    assert not source.exists()
    assert bodies(imap, fresh_folder) == [raw]
    assert took > 3, "the relay did not hold the APPEND back: the test showed nothing"
    assert "arrived after all" in m.log()


def test_append_never_completed_fails_and_mv_keeps_the_source(dovecot, imap, fresh_folder, mount, tmp_path):
    token = uuid.uuid4().hex
    raw = big_message(2.8, token, message_id=f"shared-{token}")
    source = tmp_path / "lost.eml"
    source.write_bytes(raw)
    relay = AppendRelay(dovecot.imaps_port, dovecot.tls_dir, dovecot.ca_file, hold_seconds=None)
    try:
        m = relay_mount(mount, dovecot, relay)
        eml_files(m.path / fresh_folder)  # listed: UIDNEXT cached
        # Another client files a message with the same Message-ID and size but other bytes.
        impostor = raw.replace(b"Subject: big", b"Subject: BIG")
        dovecot.append(fresh_folder, impostor)
        done = sh("mv", source, m.path / fresh_folder, check=False)
        assert relay.appends == 1  # not sent a second time
    finally:
        relay.close()
    assert done.returncode != 0 and b"Input/output error" in done.stderr
    assert source.read_bytes() == raw
    assert bodies(imap, fresh_folder) == [crlf(impostor)]
    assert "not sent again" in m.log()


def test_cut_mid_append_with_an_earlier_same_message_id_is_not_taken_for_stored(
        dovecot, imap, fresh_folder, mount, tmp_path):
    token = uuid.uuid4().hex
    # Big enough that the cut comes while imapfs is still sending: what it had
    # sent cannot all sit in socket buffers, so it knows the command was cut short.
    raw = big_message(12, token, message_id=f"shared-{token}")
    source = tmp_path / "cut.eml"
    source.write_bytes(raw)
    relay = AppendRelay(dovecot.imaps_port, dovecot.tls_dir, dovecot.ca_file, cut_after=1_000_000)
    try:
        m = relay_mount(mount, dovecot, relay)
        eml_files(m.path / fresh_folder)  # the folder is listed, its UIDNEXT cached, as it usually is...
        # ... when another client files a different message with the same Message-ID.
        earlier = raw.replace(b"Subject: big", b"Subject: earlier")
        dovecot.append(fresh_folder, earlier)
        sh("mv", source, m.path / fresh_folder)
        assert relay.appends == 2  # cut before it was complete, so sent again, on a fresh connection
    finally:
        relay.close()
    assert not source.exists()
    assert sorted(bodies(imap, fresh_folder)) == sorted([crlf(earlier), crlf(raw)])


def peak_and_now(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmHWM"].split()[0]) * 1024, int(fields["VmRSS"].split()[0]) * 1024


def server_size_and_digest(imap, folder: str) -> list[tuple[int, str]]:
    imap.select_folder(folder, readonly=True)
    found = []
    for uid, data in imap.fetch(imap.search("ALL"), ["RFC822.SIZE"]).items():
        size, digest, offset = data[b"RFC822.SIZE"], hashlib.sha256(), 0
        while offset < size:
            piece = imap.fetch([uid], [f"BODY.PEEK[]<{offset}.8388608>"])[uid][f"BODY[]<{offset}>".encode()]
            digest.update(piece)
            offset += len(piece)
        found.append((size, digest.hexdigest()))
    return found


@pytest.mark.timeout(300)
def test_cp_of_a_300_mb_message_costs_imapfs_at_most_64_mb(imap, fresh_folder, mount, tmp_path, record_property):
    token = uuid.uuid4().hex
    source = tmp_path / "huge.eml"
    with open(source, "wb") as out:
        out.write(big_message(0, token))
        block = (token[:8] + "y" * 67 + "\n").encode() * 14_000  # ~1 MB, LF endings: all rewritten to CRLF
        for _ in range(300):
            out.write(block)
    m = mount()
    eml_files(m.path / fresh_folder)
    _, before = peak_and_now(m.proc.pid)
    sh("cp", source, m.path / fresh_folder, timeout=240)
    peak, _ = peak_and_now(m.proc.pid)
    record_property("rss_growth_mb", (peak - before) / 2**20)
    print(f"imapfs RSS before cp {before / 2**20:.1f} MB, peak during cp {peak / 2**20:.1f} MB")
    expected = hashlib.sha256()
    with open(source, "rb") as data:
        size = 0
        for chunk in iter(lambda: data.read(1 << 20), b""):
            chunk = crlf(chunk)  # no CR is split here: the file has none
            expected.update(chunk)
            size += len(chunk)
    assert server_size_and_digest(imap, fresh_folder) == [(size, expected.hexdigest())]
    assert peak - before <= 64 * 2**20, f"peak RSS grew by {(peak - before) / 2**20:.0f} MB"


def test_stat_of_the_written_name_gives_the_size_it_reads_with(imap, fresh_folder, mount, tmp_path):
    raw = message("lf endings").replace(b"\r\n", b"\n")
    source = tmp_path / "lf.eml"
    source.write_bytes(raw)
    m = mount()
    sh("cp", source, m.path / fresh_folder)
    written = m.path / fresh_folder / "lf.eml"
    assert written.stat().st_size == len(crlf(raw)) == len(written.read_bytes())
    assert bodies(imap, fresh_folder) == [crlf(raw)]


@contextlib.contextmanager
def dovecot_with_trash(trash: str):
    server = Dovecot(trash_mailbox=trash)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("layout", ["nested", "top"])
def test_rm_r_never_expunges_what_was_not_in_trash(mount, layout):
    # nested: Trash inside the tree removed (INBOX.Trash on Courier, cPanel);
    # top: rm -r M/* on the usual layout, which reaches Trash last.
    trash = "P/Trash" if layout == "nested" else "Trash"
    with dovecot_with_trash(trash) as server:
        server.create_folder("P/Archive")
        kept = message("archived, never trashed", uuid.uuid4().hex)
        old = message("was in trash already", uuid.uuid4().hex)
        server.append("P/Archive", kept)
        server.append(trash, old)
        m = mount(url=server.url, password=server.password, ca_file=server.ca_file)
        target = [m.path / "P"] if layout == "nested" else sorted(m.path.iterdir())
        done = sh("rm", "-r", *target, check=False)
        assert done.returncode != 0  # it could not remove everything, and says so
        imap = server.client()
        try:
            assert bodies(imap, trash) == [kept]  # moved to Trash and kept; what was there is expunged
            assert trash in {f[2] for f in imap.list_folders()}  # the Trash folder itself stays
        finally:
            imap.logout()
        assert "came to" in m.log() and "after this command began deleting into it" in m.log()
        m.unmount()


def test_other_users_may_read_an_allow_other_mount_but_never_write(dovecot, imap, fresh_folder, mount, tmp_path):
    raw = message("only the owner writes")
    dovecot.append(fresh_folder, raw, flags=["\\Seen"])
    base = Path(tempfile.mkdtemp(prefix="imapfs-allow-other-w-"))
    base.chmod(0o755)
    drop = base / "drop.eml"
    drop.write_bytes(message("from nobody"))
    drop.chmod(0o644)
    as_nobody = ["runuser", "-u", "nobody", "--"]
    try:
        m = mount("allow_other", mountpoint=base / "mnt")
        folder = m.path / fresh_folder
        name = eml_files(folder)[0]
        assert subprocess.run([*as_nobody, "cat", name], capture_output=True).stdout == raw
        attempts = {
            "cp": ["cp", drop, folder],
            "rm": ["rm", "-f", name],
            "mv": ["mv", name, m.path / "Trash"],
            "setfattr": ["setfattr", "-n", "user.imap.flags", "-v", "\\Flagged", name],
            "mkdir": ["mkdir", folder / "sub"],
            "rmdir": ["rmdir", folder],
        }
        for what, command in attempts.items():
            done = subprocess.run([*as_nobody, *command], capture_output=True)
            assert done.returncode != 0, what
        messages = server_messages(imap, fresh_folder)
        assert [d["body"] for d in messages.values()] == [raw]
        assert [d["flags"] for d in messages.values()] == [{b"\\Seen"}]
        assert f"{fresh_folder}/sub" not in {f[2] for f in imap.list_folders()}
        sh("setfattr", "-n", "user.imap.flags", "-v", "\\Flagged", name)  # the owner still may
        m.unmount()
    finally:
        for leftover in base.iterdir():
            if leftover.is_dir() and not is_mounted(leftover):
                leftover.rmdir()
            elif not leftover.is_dir():
                leftover.unlink()
        with contextlib.suppress(OSError):
            base.rmdir()


def test_cp_twice_to_one_name_succeeds_and_leaves_one_copy(imap, fresh_folder, mount, tmp_path):
    raw = message("copied twice", uuid.uuid4().hex).replace(b"\r\n", b"\n")
    source = tmp_path / "twice.eml"
    source.write_bytes(raw)
    m = mount()
    sh("cp", source, m.path / fresh_folder)
    sh("cp", source, m.path / fresh_folder)  # the written name is written again
    sh("cp", "-n", source, m.path / fresh_folder)
    assert bodies(imap, fresh_folder) == [crlf(raw)]


def test_rsync_rt_twice_transfers_nothing_the_second_time(imap, fresh_folder, mount, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    raws = [message(f"rsync twice {i}", uuid.uuid4().hex) for i in range(8)]  # CRLF: sizes match the server's
    for i, raw in enumerate(raws):
        (src / f"m{i}.eml").write_bytes(raw)
    m = mount()
    sh("rsync", "-rt", f"{src}/", f"{m.path / fresh_folder}/")
    second = sh("rsync", "-rt", "--stats", f"{src}/", f"{m.path / fresh_folder}/").stdout.decode()
    assert "Number of regular files transferred: 0" in second, second
    assert sorted(bodies(imap, fresh_folder)) == sorted(raws)


def test_children_of_the_shell_that_wrote_leave_the_commit_to_its_close(imap, fresh_folder, mount, tmp_path):
    # `{ cat a; cat b; } > F/m`: the shell creates the file and holds it; each
    # cat writes part of it and exits. Only the shell's close means done.
    raw = message("written by two children", "x" * 50_000)
    (tmp_path / "a").write_bytes(raw[:300])
    (tmp_path / "b").write_bytes(raw[300:])
    m = mount()
    target = m.path / fresh_folder / "m.eml"
    sh("bash", "-c", f'{{ cat "{tmp_path}/a"; sleep 0.3; cat "{tmp_path}/b"; }} > "{target}"')
    assert bodies(imap, fresh_folder) == [raw]


def test_a_child_killed_while_writing_for_its_shell_stores_nothing(imap, fresh_folder, mount):
    m = mount()
    target = m.path / fresh_folder / "half.eml"
    killer = "import os, sys; sys.stdout.write('From: a@example.org\\nSubject: half\\n\\npart'); " \
             "sys.stdout.flush(); os.kill(os.getpid(), 9)"
    sh("bash", "-c", f'{{ {sys.executable} -c "{killer}"; echo " rest"; }} > "{target}"', check=False)
    assert bodies(imap, fresh_folder) == []
    assert wait_for(lambda: "killed by signal 9" in m.log(), timeout=10), m.log()
