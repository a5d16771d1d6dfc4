"""The desktop trash (.Trash-UID/ over \\Trash) driven by the real gio, and
tools' dot-files refused; every result checked from a second IMAP connection.

Not driven here: `gio trash --list/--restore/--empty`, which go through
trash:/// and so need gvfsd-trash (Debian's gvfs-daemons, which pulls in
udisks2 and a systemd upgrade). What gvfsd-trash does on the mount is done
instead with the same calls it makes: it lists files/ and reads
info/NAME.trashinfo, restores with a rename of files/NAME to its Path and
an unlink of the trashinfo, and deletes by a rename into expunged/.
"""

from __future__ import annotations

import os
import stat
import urllib.parse
import uuid

from tests.integration.helpers import eml_files, message, server_messages, sh

TRASH = f".Trash-{os.geteuid()}"


def bodies(imap, folder):
    return [d["body"] for d in server_messages(imap, folder).values()]


def server_folders(imap):
    return [name for _, _, name in imap.list_folders()]


def gio_trash(dovecot, fresh_folder, mount, subject):
    """Put one message in fresh_folder, mount, and `gio trash` it; returns (mount, raw, name)."""
    raw = message(subject)
    dovecot.append(fresh_folder, raw)
    m = mount()
    [path] = eml_files(m.path / fresh_folder)
    sh("gio", "trash", path)
    return m, raw, path.name


def test_gio_trash_moves_the_message_to_trash_and_keeps_the_trashinfo(dovecot, imap, fresh_folder, mount):
    token = uuid.uuid4().hex
    m, raw, name = gio_trash(dovecot, fresh_folder, mount, f"trash me {token}")
    assert bodies(imap, fresh_folder) == []
    assert bodies(imap, "Trash").count(raw) == 1
    # No junk folders, no trashinfo stored as mail anywhere.
    assert not [f for f in server_folders(imap) if ".Trash" in f or f.endswith(("files", "info"))]
    assert not any(b"[Trash Info]" in body for f in server_folders(imap) if f != fresh_folder
                   for body in bodies(imap, f))
    trash = m.path / TRASH
    assert (trash / "files" / name).read_bytes() == raw
    assert not (m.path / fresh_folder / name).exists()
    info = (trash / "info" / f"{name}.trashinfo").read_text()
    lines = info.splitlines()
    assert lines[0] == "[Trash Info]"
    # Relative to the mount (the spec's "topdir"), URI-escaped, as GIO wrote it.
    assert f"Path={urllib.parse.quote(f'{fresh_folder}/{name}')}" in lines
    assert any(line.startswith("DeletionDate=") for line in lines)
    assert os.listdir(trash / "info") == [f"{name}.trashinfo"]  # GIO's temp file was renamed over it


def test_trash_directories_are_the_users_0700_and_hidden_from_the_root(dovecot, fresh_folder, mount):
    token = uuid.uuid4().hex
    m, _, name = gio_trash(dovecot, fresh_folder, mount, f"hidden {token}")
    for where in (m.path / TRASH, m.path / TRASH / "files", m.path / TRASH / "info"):
        st = os.lstat(where)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid(), where
    assert TRASH not in sh("ls", "-a", m.path).stdout.decode().split()
    found = sh("find", m.path).stdout.decode()
    assert ".Trash" not in found and f"/{fresh_folder}" in found
    grep = sh("grep", "-rl", token, m.path, check=False).stdout.decode()
    assert ".Trash" not in grep  # the message is reachable as Trash/..., never through the trash view


def test_restore_moves_it_back_to_its_folder(dovecot, imap, fresh_folder, mount):
    token = uuid.uuid4().hex
    m, raw, name = gio_trash(dovecot, fresh_folder, mount, f"restore me {token}")
    trash = m.path / TRASH
    info = (trash / "info" / f"{name}.trashinfo").read_text()
    original = urllib.parse.unquote(next(line for line in info.splitlines() if line.startswith("Path="))[5:])
    # What gvfsd-trash's restore does: g_file_move to the Path, then delete the trashinfo.
    sh("gio", "move", trash / "files" / name, m.path / original)
    sh("rm", "-f", trash / "info" / f"{name}.trashinfo")
    assert bodies(imap, fresh_folder) == [raw]
    assert raw not in bodies(imap, "Trash")
    assert name not in os.listdir(trash / "files")
    assert os.listdir(trash / "info") == []
    assert [p.read_bytes() for p in eml_files(m.path / fresh_folder)] == [raw]


def test_rm_in_files_expunges_and_takes_the_trashinfo(dovecot, imap, fresh_folder, mount):
    token = uuid.uuid4().hex
    m, raw, name = gio_trash(dovecot, fresh_folder, mount, f"empty me {token}")
    trash = m.path / TRASH
    sh("rm", trash / "files" / name)
    assert all(token.encode() not in body for f in server_folders(imap) for body in bodies(imap, f))
    assert f"{name}.trashinfo" not in os.listdir(trash / "info")


def test_gvfs_style_delete_through_expunged_expunges(dovecot, imap, fresh_folder, mount):
    token = uuid.uuid4().hex
    m, raw, name = gio_trash(dovecot, fresh_folder, mount, f"expunge me {token}")
    trash = m.path / TRASH
    sh("mkdir", "-p", trash / "expunged")
    sh("mv", trash / "files" / name, trash / "expunged" / "12345")
    assert raw not in bodies(imap, "Trash")
    assert os.listdir(trash / "expunged") == []


def test_messages_already_in_trash_show_in_files_without_trashinfo(dovecot, imap, mount):
    token = uuid.uuid4().hex
    raw = message(f"trashed by a mail client {token}")
    dovecot.append("Trash", raw)
    m = mount()
    [shown] = [p for p in eml_files(m.path / "Trash") if token in p.name]
    assert (m.path / TRASH / "files" / shown.name).read_bytes() == raw
    assert f"{shown.name}.trashinfo" not in os.listdir(m.path / TRASH / "info")


def test_tools_dot_files_and_directories_never_reach_the_server(imap, fresh_folder, mount, tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(message("not really junk"))  # a valid message: refused for its name alone
    m = mount()
    before = sorted(server_folders(imap))
    for name in (".DS_Store", "._report.eml", ".directory", ".hidden", ".Trash-4242"):
        done = sh("cp", junk, m.path / fresh_folder / name, check=False)
        assert done.returncode != 0 and b"Operation not permitted" in done.stderr, name
    for directory in (m.path / ".notmuch", m.path / fresh_folder / ".notmuch", m.path / ".Trash",
                      m.path / ".Trash-4242"):
        done = sh("mkdir", directory, check=False)
        assert done.returncode != 0 and b"Operation not permitted" in done.stderr, directory
    assert sorted(server_folders(imap)) == before
    assert server_messages(imap, fresh_folder) == {}
    assert "a tool's own file, not mail; nothing was stored on the server" in m.log()
    # rsync's temporary names (".NAME.XXXXXX") are not tools' files: they become messages.
    sh("cp", junk, m.path / fresh_folder / "._report.eml.Ab12Cd")
    assert len(server_messages(imap, fresh_folder)) == 1


def test_gio_trash_and_restore_in_the_maildir_layout(dovecot, imap, fresh_folder, mount):
    token = uuid.uuid4().hex
    raw = message(f"maildir trash {token}")
    dovecot.append(fresh_folder, raw, flags=["\\Seen"])
    m = mount("maildir")
    [path] = list((m.path / fresh_folder / "cur").iterdir())
    sh("gio", "trash", path)
    assert bodies(imap, fresh_folder) == [] and raw in bodies(imap, "Trash")
    trash = m.path / TRASH
    assert path.name in os.listdir(trash / "files")
    sh("gio", "move", trash / "files" / path.name, m.path / fresh_folder / "cur" / path.name)
    assert bodies(imap, fresh_folder) == [raw] and raw not in bodies(imap, "Trash")
    assert [p.read_bytes() for p in (m.path / fresh_folder / "cur").iterdir()] == [raw]
