"""Mail management with ordinary tools, each result checked from a second,
independent IMAP connection."""

from __future__ import annotations

import datetime as dt
import os
import random
import subprocess
import sys
import uuid

from tests.integration.helpers import eml_files, message, server_messages, sh, wait_for


def only_message(imap, folder):
    messages = server_messages(imap, folder)
    assert len(messages) == 1, messages.keys()
    return next(iter(messages.items()))


def internaldate(imap, folder, uid):
    imap.select_folder(folder, readonly=True)
    imap.normalise_times = False
    return imap.fetch([uid], ["INTERNALDATE"])[uid][b"INTERNALDATE"]


def test_cp_appends_once_with_date_from_header(imap, fresh_folder, mount, tmp_path):
    raw = message("archived", "kept", date="Mon, 01 Jan 2018 10:00:00 +0200")
    source = tmp_path / "archived.eml"
    source.write_bytes(raw)
    m = mount()
    sh("cp", source, m.path / fresh_folder)
    uid, data = only_message(imap, fresh_folder)
    assert data["body"] == raw
    assert b"\\Seen" not in data["flags"]
    assert internaldate(imap, fresh_folder, uid) == dt.datetime(2018, 1, 1, 8, 0, tzinfo=dt.timezone.utc)
    names = [p.name for p in eml_files(m.path / fresh_folder)]
    assert names == [f"2018-01-01_0800_archived_{uid}.eml"]
    # The name cp wrote stays resolvable for the tool; the listing shows the canonical one.
    assert (m.path / fresh_folder / "archived.eml").stat().st_size == len(raw)
    assert (m.path / fresh_folder / names[0]).read_bytes() == raw


def test_shell_mv_from_another_filesystem(imap, fresh_folder, mount, tmp_path):
    source = tmp_path / "moved.eml"
    raw = message("moved in")
    source.write_bytes(raw)
    m = mount()
    sh("mv", source, m.path / fresh_folder / "moved.eml")
    assert not source.exists()
    assert only_message(imap, fresh_folder)[1]["body"] == raw


def test_rsync_appends_every_message_exactly_once(imap, fresh_folder, mount, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    raws = {message(f"rsynced {i}", f"body {i}") for i in range(12)}
    for i, raw in enumerate(sorted(raws)):
        (src / f"m{i}.eml").write_bytes(raw)
    m = mount()
    sh("rsync", "-rt", f"{src}/", f"{m.path / fresh_folder}/")
    bodies = [d["body"] for d in server_messages(imap, fresh_folder).values()]
    assert sorted(bodies) == sorted(raws)


def test_maildir_cur_copied_in_keeps_flags(imap, fresh_folder, mount, tmp_path):
    cur = tmp_path / "Maildir" / "cur"
    cur.mkdir(parents=True)
    cases = {"1700000001.M1P1.host:2,S": {b"\\Seen"}, "1700000002.M2P1.host:2,FR": {b"\\Flagged", b"\\Answered"},
             "1700000003.M3P1.host:2,": set(), "1700000004.M4P1.host:2,DST": {b"\\Draft", b"\\Seen"}}
    for name in cases:
        (cur / name).write_bytes(message(f"maildir {name[:10]}"))
    m = mount()
    sh("cp", "-r", f"{cur}/.", m.path / fresh_folder)
    got = {d["body"]: d["flags"] for d in server_messages(imap, fresh_folder).values()}
    assert len(got) == 4
    for name, flags in cases.items():
        assert got[message(f"maildir {name[:10]}")] == flags, name


def test_rsync_of_maildir_names_applies_flags_after_rename(imap, fresh_folder, mount, tmp_path):
    cur = tmp_path / "cur"
    cur.mkdir()
    (cur / "1700000009.M9P9.host:2,FS").write_bytes(message("rsync flags"))
    m = mount()
    sh("rsync", "-rt", f"{cur}/", f"{m.path / fresh_folder}/")
    _, data = only_message(imap, fresh_folder)
    assert data["flags"] == {b"\\Flagged", b"\\Seen"}


def test_mv_between_folders_is_a_server_side_move(dovecot, imap, fresh_folder, mount):
    other = f"{fresh_folder}-target"
    dovecot.create_folder(other)
    raw = message("travelling")
    dovecot.append(fresh_folder, raw, flags=["\\Flagged"])
    m = mount()
    path = eml_files(m.path / fresh_folder)[0]
    sh("mv", path, m.path / other)
    assert server_messages(imap, fresh_folder) == {}
    _, data = only_message(imap, other)
    assert data["body"] == raw and b"\\Flagged" in data["flags"]
    assert [p.read_bytes() for p in eml_files(m.path / other)] == [raw]
    assert eml_files(m.path / fresh_folder) == []


def test_rm_moves_to_trash_and_rm_in_trash_expunges_only_that(dovecot, imap, fresh_folder, mount):
    token = uuid.uuid4().hex
    raw = message(f"unwanted {token}")
    dovecot.append(fresh_folder, raw)
    bystander = message(f"deleted but not expunged {token}")
    bystander_uid = dovecot.append("Trash", bystander, flags=["\\Deleted"])
    m = mount()
    sh("rm", eml_files(m.path / fresh_folder)[0])
    assert server_messages(imap, fresh_folder) == {}
    in_trash = [p for p in eml_files(m.path / "Trash") if f"unwanted-{token}" in p.name]
    assert len(in_trash) == 1 and in_trash[0].read_bytes() == raw
    sh("rm", in_trash[0])
    trash = server_messages(imap, "Trash")
    assert all(d["body"] != raw for d in trash.values())
    assert trash[bystander_uid]["body"] == bystander  # a plain EXPUNGE would have taken it too


def test_delete_expunge_option(dovecot, imap, fresh_folder, mount):
    token = uuid.uuid4().hex
    dovecot.append(fresh_folder, message(f"gone for good {token}"))
    m = mount("delete=expunge")
    sh("rm", eml_files(m.path / fresh_folder)[0])
    assert server_messages(imap, fresh_folder) == {}
    assert all(token.encode() not in d["body"] for d in server_messages(imap, "Trash").values())


def folder_names(imap):
    return {name for _flags, _delim, name in imap.list_folders()}


def test_mkdir_rmdir_and_rename_folders(dovecot, imap, fresh_folder, mount):
    m = mount()
    base = m.path / fresh_folder
    sh("mkdir", "-p", base / "Projekte" / "Été 2024")
    sh("mkdir", base / "日本語")
    names = folder_names(imap)
    assert f"{fresh_folder}/Projekte/Été 2024" in names and f"{fresh_folder}/日本語" in names
    sh("rmdir", base / "日本語")
    assert f"{fresh_folder}/日本語" not in folder_names(imap)

    dovecot.append(f"{fresh_folder}/Projekte/Été 2024", message("keep me"))
    done = sh("rmdir", base / "Projekte" / "Été 2024", check=False)
    assert done.returncode != 0 and "not empty" in done.stderr.decode()
    done = sh("rmdir", base / "Projekte", check=False)
    assert done.returncode != 0 and "not empty" in done.stderr.decode()
    assert f"{fresh_folder}/Projekte/Été 2024" in folder_names(imap)

    sh("mv", base / "Projekte", base / "Projects")
    names = folder_names(imap)
    assert f"{fresh_folder}/Projects/Été 2024" in names and f"{fresh_folder}/Projekte" not in names
    sh("mkdir", base / "Archive")
    sh("mv", base / "Projects" / "Été 2024", base / "Archive" / "Summer")
    assert f"{fresh_folder}/Archive/Summer" in folder_names(imap)
    assert [p.read_bytes() for p in eml_files(base / "Archive" / "Summer")] == [message("keep me")]


def test_non_mail_files_are_refused_and_nothing_is_appended(imap, fresh_folder, mount, tmp_path):
    png = tmp_path / "picture.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200))
    noise = tmp_path / "noise.bin"
    noise.write_bytes(random.Random(1).randbytes(5000))
    empty = tmp_path / "empty.eml"
    empty.write_bytes(b"")
    text = tmp_path / "notes.txt"
    text.write_text("shopping list\n- milk\n")
    m = mount()
    for path in (png, noise, text):
        done = sh("cp", path, m.path / fresh_folder, check=False)
        assert done.returncode != 0, path
        assert "Invalid argument" in done.stderr.decode(), done.stderr
    # An empty file stores nothing and is no error: a close before any write
    # cannot be told from a shell's redirection closing the descriptor it dup'ed.
    sh("cp", empty, m.path / fresh_folder)
    assert wait_for(lambda: os.listdir(m.path / fresh_folder) == [], timeout=5)
    assert server_messages(imap, fresh_folder) == {}
    assert os.listdir(m.path / fresh_folder) == []
    assert "not a mail message" in m.log()


def test_twenty_megabyte_message(imap, fresh_folder, mount, tmp_path):
    big = tmp_path / "big.eml"
    body = b"".join(b"%08d " % i + b"x" * 66 + b"\r\n" for i in range(20 * 1024 * 1024 // 77))
    raw = message("big one").replace(b"hello\r\n", b"") + body
    big.write_bytes(raw)
    m = mount()
    sh("cp", big, m.path / fresh_folder, timeout=120)
    _, data = only_message(imap, fresh_folder)
    assert data["body"] == raw
    path = eml_files(m.path / fresh_folder)[0]
    assert path.stat().st_size == len(raw)
    assert sh("cmp", path, big).returncode == 0


def test_setfattr_sets_flags(dovecot, imap, fresh_folder, mount):
    uid = dovecot.append(fresh_folder, message("to flag"), flags=["\\Answered"])
    m = mount()
    path = eml_files(m.path / fresh_folder)[0]
    sh("setfattr", "-n", "user.imap.flags", "-v", "\\Seen \\Flagged", path)
    assert server_messages(imap, fresh_folder)[uid]["flags"] == {b"\\Seen", b"\\Flagged"}
    assert set(sh("getfattr", "-n", "user.imap.flags", "--only-values", path).stdout.decode().split()) == {
        "\\Seen", "\\Flagged"}
    done = sh("setfattr", "-n", "user.imap.flags", "-v", "(bad", path, check=False)
    assert done.returncode != 0


def test_existing_messages_are_immutable(dovecot, imap, fresh_folder, mount):
    raw = message("immutable")
    dovecot.append(fresh_folder, raw)
    m = mount()
    path = eml_files(m.path / fresh_folder)[0]
    for command in (["sh", "-c", f"echo more >> '{path}'"], ["truncate", "-s", "0", path],
                    ["sh", "-c", f"echo new > '{path}'"]):
        done = sh(*command, check=False)
        assert done.returncode != 0 and "Permission denied" in done.stderr.decode(), command
    done = sh("mv", path, m.path / fresh_folder / "renamed.eml", check=False)
    assert done.returncode != 0 and "Operation not permitted" in done.stderr.decode()
    assert only_message(imap, fresh_folder)[1]["body"] == raw


def test_refused_append_fails_the_tool_and_loses_nothing(dovecot, imap, fresh_folder, mount, tmp_path):
    """The folder was deleted by another client after the mount listed it:
    cp and mv must fail, and mv must keep its source. The lookup of the new
    name fetches the folder list again and finds the folder gone (ENOENT at
    create); had it not, the server would refuse the APPEND at close."""
    m = mount("folders_ttl=3600,poll_interval=3600")
    target = m.path / fresh_folder
    assert target.is_dir()
    dovecot.delete_folder(fresh_folder)
    source = tmp_path / "precious.eml"
    raw = message("precious")
    source.write_bytes(raw)
    done = sh("cp", source, target, check=False)
    assert done.returncode != 0 and (b"failed to close" in done.stderr
                                     or b"No such file or directory" in done.stderr), done.stderr
    done = sh("mv", source, target / "precious.eml", check=False)
    assert done.returncode != 0, done.stderr
    assert source.read_bytes() == raw
    assert fresh_folder not in {name for _flags, _delim, name in imap.list_folders()}  # no junk folder made


def test_an_append_refused_at_close_fails_the_writer_and_says_so(dovecot, imap, fresh_folder, mount, tmp_path):
    """The folder is deleted elsewhere while a writer has the new file open:
    the server refuses the APPEND at close, and the writer's close fails."""
    m = mount("folders_ttl=3600,poll_interval=3600")
    target = m.path / fresh_folder / "precious.eml"
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys; f = open(sys.argv[1], 'wb'); f.write(sys.argv[2].encode()); "
         "print('written', flush=True); sys.stdin.readline(); f.close()", str(target),
         message("precious").decode()],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert writer.stdout.readline() == b"written\n"
        dovecot.delete_folder(fresh_folder)
        _, err = writer.communicate(b"close now\n", timeout=60)
    finally:
        writer.kill()
    assert writer.returncode != 0 and b"Error" in err, err  # after "written": the close failed
    assert "was not appended" in m.log()  # the log says what happened


def test_cp_a_and_mv_of_many_messages(dovecot, imap, fresh_folder, mount, tmp_path):
    """cp -a preserves times and modes on what it wrote (accepted, meaningless
    in IMAP); mv with a glob moves every message once."""
    src = tmp_path / "archive"
    src.mkdir()
    raws = [message(f"bulk move {i}", f"body {i}") for i in range(6)]
    for i, raw in enumerate(raws):
        (src / f"{i}.eml").write_bytes(raw)
    other = f"{fresh_folder}-dest"
    dovecot.create_folder(other)
    m = mount()
    sh("cp", "-a", f"{src}/.", m.path / fresh_folder)
    assert sorted(d["body"] for d in server_messages(imap, fresh_folder).values()) == sorted(raws)
    sh("sh", "-c", f"mv '{m.path / fresh_folder}'/*.eml '{m.path / other}/'")
    assert server_messages(imap, fresh_folder) == {}
    assert sorted(d["body"] for d in server_messages(imap, other).values()) == sorted(raws)


def test_rm_r_of_a_folder_keeps_its_mail_in_trash(dovecot, imap, fresh_folder, mount):
    token = uuid.uuid4().hex
    sub = f"{fresh_folder}/doomed"
    dovecot.create_folder(sub)
    raws = [message(f"doomed {token} {i}") for i in range(3)]
    for raw in raws:
        dovecot.append(sub, raw)
    m = mount()
    sh("rm", "-r", m.path / fresh_folder / "doomed")
    assert sub not in folder_names(imap)
    trash = [d["body"] for d in server_messages(imap, "Trash").values() if token.encode() in d["body"]]
    assert sorted(trash) == sorted(raws)
