"""-o maildir: the mount as the mail store of real mail tools (Python's mailbox,
mblaze, notmuch, neomutt), every outcome checked from a second IMAP connection."""

from __future__ import annotations

import mailbox
import os
import shutil
import subprocess
import time
import uuid

import pytest

from tests.integration.helpers import message, server_messages, sh, wait_for


def flags_by_subject(imap, folder) -> dict[str, set[bytes]]:
    found = {}
    for data in server_messages(imap, folder).values():
        if data["body"] is None:
            continue  # expunged between the SEARCH and the FETCH (a tool is moving it right now)
        subject = next(line for line in data["body"].split(b"\r\n") if line.startswith(b"Subject: "))
        found[subject[9:].decode()] = data["flags"]
    return found


@pytest.fixture
def maildir(dovecot, fresh_folder, mount):
    """A folder with an unseen, a seen and a flagged-and-answered message, mounted -o maildir."""
    dovecot.append(fresh_folder, message("unseen one", "u"))
    dovecot.append(fresh_folder, message("seen one", "s"), flags=["\\Seen"])
    dovecot.append(fresh_folder, message("flagged one", "f"), flags=["\\Seen", "\\Flagged", "\\Answered"])
    m = mount("maildir")
    return m, m.path / fresh_folder


def test_layout_names_and_bytes_as_python_mailbox_reads_them(imap, fresh_folder, maildir):
    m, box = maildir
    assert {p.name for p in box.iterdir()} >= {"cur", "new", "tmp"}
    new = sorted(p.name for p in (box / "new").iterdir())
    cur = sorted(p.name for p in (box / "cur").iterdir())
    assert len(new) == 1 and new[0].endswith(":2,")
    assert sorted(name.rsplit(":2,", 1)[1] for name in cur) == ["FRS", "S"]
    server = {d["body"] for d in server_messages(imap, fresh_folder).values()}
    md = mailbox.Maildir(box, factory=None, create=False)
    assert {bytes(md.get_bytes(key)) for key in md.keys()} == server
    assert sorted(md.get_message(key).get_flags() for key in md.keys()) == ["", "FRS", "S"]
    assert not any(p.name.endswith(".eml") for p in box.rglob("*"))


def test_mblaze_lists_by_flag_and_mflag_stores_flags(imap, fresh_folder, maildir):
    m, box = maildir
    unseen = sh("mlist", "-s", box).stdout.decode().split()
    assert len(unseen) == 1 and "/new/" in unseen[0]
    assert len(sh("mlist", "-S", box).stdout.split()) == 2
    sh("mflag", "-S", "-F", unseen[0])
    assert flags_by_subject(imap, fresh_folder)["unseen one"] == {b"\\Seen", b"\\Flagged"}
    flagged = sh("mlist", "-F", box).stdout.decode().split()
    assert len(flagged) == 2
    sh("mflag", "-f", *flagged)
    assert all(b"\\Flagged" not in f for f in flags_by_subject(imap, fresh_folder).values())
    assert flags_by_subject(imap, fresh_folder)["flagged one"] == {b"\\Seen", b"\\Answered"}


def test_mdeliver_appends_once_into_new_and_the_name_resolves(imap, fresh_folder, maildir, tmp_path):
    m, box = maildir
    raw = message(f"delivered {uuid.uuid4().hex}", "by mdeliver")
    delivered = sh("mdeliver", "-v", box, input=raw).stdout.decode().strip()
    assert delivered and os.path.exists(delivered)
    bodies = [d["body"] for d in server_messages(imap, fresh_folder).values()]
    assert bodies.count(raw) == 1 and len(bodies) == 4
    assert any(raw == p.read_bytes() for p in (box / "new").iterdir())
    assert list((box / "tmp").iterdir()) == []


def test_mrefile_moves_to_another_maildir(dovecot, imap, fresh_folder, maildir):
    m, box = maildir
    other = f"{fresh_folder}-other"
    dovecot.create_folder(other)
    seen = sh("mlist", "-S", box).stdout.decode().split()
    sh("mrefile", seen[0], m.path / other)
    assert len(server_messages(imap, other)) == 1
    assert [d["flags"] for d in server_messages(imap, other).values()][0] >= {b"\\Seen"}


def test_python_mailbox_delivers_reads_and_removes(imap, fresh_folder, maildir):
    m, box = maildir
    md = mailbox.Maildir(box, factory=None, create=False)
    raw = message("added by python", "x")
    key = md.add(mailbox.MaildirMessage(raw))  # tmp/, then a rename into new/: one APPEND
    assert [d["body"] for d in server_messages(imap, fresh_folder).values()].count(raw) == 1
    md = mailbox.Maildir(box, factory=None, create=False)
    assert key in md.keys()  # it lists under the name it was delivered as
    assert bytes(md.get_bytes(key)) == raw
    md.remove(key)
    assert raw not in [d["body"] for d in server_messages(imap, fresh_folder).values()]
    assert raw in [d["body"] for d in server_messages(imap, "Trash").values()]


def test_notmuch_new_sees_mail_arrive_and_go_and_syncs_flags(dovecot, imap, fresh_folder, maildir, tmp_path):
    m, box = maildir
    (tmp_path / "db").mkdir()
    config = tmp_path / "notmuch-config"
    config.write_text(f"[database]\npath={tmp_path / 'db'}\nmail_root={box}\n[new]\ntags=unread;inbox;\n"
                      "[maildir]\nsynchronize_flags=true\n")
    env = {**os.environ, "NOTMUCH_CONFIG": str(config)}

    def notmuch(*args):
        return sh("notmuch", *args, env=env).stdout.decode()

    notmuch("new")
    assert notmuch("count", "*").strip() == "3"
    assert notmuch("count", "tag:unread").strip() == "1"
    token = uuid.uuid4().hex
    uid = dovecot.append(fresh_folder, message(f"arrived {token}", "later"))
    time.sleep(1.1)  # notmuch compares directory mtimes in whole seconds
    assert wait_for(lambda: "1 new message" in sh("notmuch", "new", env=env).stdout.decode()
                    or notmuch("count", f"subject:{token}").strip() == "1", timeout=15)
    assert notmuch("count", f"subject:{token}").strip() == "1"
    notmuch("tag", "-unread", f"subject:{token}")  # synchronize_flags renames it: S is added
    assert wait_for(lambda: flags_by_subject(imap, fresh_folder).get(f"arrived {token}") == {b"\\Seen"})
    imap.select_folder(fresh_folder)
    imap.delete_messages([uid])
    imap.expunge()
    time.sleep(1.1)
    assert wait_for(lambda: (sh("notmuch", "new", env=env), notmuch("count", f"subject:{token}").strip())[1] == "0",
                    timeout=15)
    assert not any(p.name.startswith(".notmuch") for p in box.iterdir())


@pytest.mark.skipif(not shutil.which("neomutt") or not shutil.which("tmux"), reason="needs neomutt and tmux")
def test_neomutt_opens_the_folder_and_deletes_to_trash(imap, fresh_folder, maildir, tmp_path):
    m, box = maildir
    muttrc = tmp_path / "muttrc"
    muttrc.write_text(f"set mbox_type=Maildir\nset folder={box}\nset spoolfile=\nset record=\nset postponed=\n"
                      "set header_cache=\nset message_cachedir=\nset mark_old=no\nset maildir_trash=no\n"
                      "set delete=yes\nset confirmappend=no\nset quit=yes\nset sort=date\n")
    session = f"imapfs-{uuid.uuid4().hex[:8]}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "50",
                    f"TERM=xterm neomutt -n -F {muttrc} -f {box}; sleep 30"], check=True)
    try:
        def screen():
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                  text=True).stdout
        assert wait_for(lambda: "seen one" in screen() and "unseen one" in screen(), timeout=20), screen()
        assert "is not a mailbox" not in screen()
        subprocess.run(["tmux", "send-keys", "-t", session, "/", "^flagged one$", "Enter"], check=True)
        subprocess.run(["tmux", "send-keys", "-t", session, "d", "q"], check=True)
        assert wait_for(lambda: "flagged one" not in flags_by_subject(imap, fresh_folder), timeout=20), screen()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    assert set(flags_by_subject(imap, fresh_folder)) == {"unseen one", "seen one"}


def test_mkdir_makes_a_folder_that_maildir_makers_can_populate(imap, fresh_folder, maildir):
    m, box = maildir
    sub = box / "Projects"
    mailbox.Maildir(sub, create=True)  # mkdir Projects, then its tmp, new and cur, each once
    assert {p.name for p in sub.iterdir()} == {"cur", "new", "tmp"}
    assert f"{fresh_folder}/Projects" in {f[2] for f in imap.list_folders()}
    done = sh("mkdir", box / ".notmuch", check=False)
    assert done.returncode != 0
    assert not any(".notmuch" in f[2] for f in imap.list_folders())


def test_directory_mtime_moves_when_mail_arrives(dovecot, fresh_folder, maildir):
    m, box = maildir
    list((box / "new").iterdir())  # a tool lists it first: from then on it is watched
    before = (box / "new").stat().st_mtime_ns
    dovecot.append(fresh_folder, message("arrival", "x"))
    assert wait_for(lambda: (box / "new").stat().st_mtime_ns > before, timeout=15)
    assert any("arrival" in p.read_text(errors="replace") for p in (box / "new").iterdir())


def test_rm_r_of_a_maildir_folder_keeps_its_mail_in_trash(dovecot, imap, fresh_folder, maildir):
    m, box = maildir
    sh("rm", "-r", box)
    assert fresh_folder not in {f[2] for f in imap.list_folders()}
    trash = {d["body"] for d in server_messages(imap, "Trash").values()}
    assert message("seen one", "s") in trash and message("unseen one", "u") in trash


def test_folders_layout_directory_mtime_moves_too(dovecot, fresh_folder, mount):
    m = mount()
    folder = m.path / fresh_folder
    list(folder.iterdir())
    before = folder.stat().st_mtime_ns
    dovecot.append(fresh_folder, message("arrival in folders layout", "x"))
    assert wait_for(lambda: folder.stat().st_mtime_ns > before, timeout=15)
