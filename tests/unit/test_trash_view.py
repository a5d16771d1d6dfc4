"""The desktop trash view and the dot-file rule, against the fake server.

GIO's "Move to Trash" is replayed call by call as glocalfile.c makes them
(see imapfs/views/trash.py): create info/NAME.trashinfo, close it, write a
temp file and rename it over, rename the message into files/NAME.
"""

import pytest

from imapfs import names
from imapfs.config import Options
from imapfs.errors import AlreadyExists, NotFound, NotMail, NotSupported
from imapfs.store import MailStore
from imapfs.views.base import DirNode, MessageRef, NewFile
from imapfs.views.folders import FoldersView
from imapfs.views.root import CompositeRoot
from imapfs.views.trash import TrashView
from tests.unit.fakes import FakePool, FakeServer

TRASH = ".Trash-1000"
RAW = b"From: a@example.org\r\nSubject: hello\r\nMessage-ID: <m1@example.org>\r\n\r\nbody\r\n"


def make(trash_folder=True):
    server = FakeServer()
    if trash_folder:
        server.create("Trash")
    store = MailStore(FakePool(server), Options(listing_ttl=0))
    main, trash = FoldersView(store), TrashView(store, TRASH)
    return server, store, CompositeRoot(main, {TRASH: trash}), trash


def write_info(view, name, text):
    """A file GIO writes in info/: create, write, close (the FUSE edge's commit, then its release)."""
    new = view.create(("info", name), creator=1)
    new.spool.write(0, text)
    view.commit(new)
    view.forget(new)
    new.handles -= 1  # the writer's handle, released
    return new


def gio_trash(root, trash, path):
    """g_local_file_trash on the mount: returns the name in files/."""
    name = path[-1]
    write_info(trash, f"{name}.trashinfo", b"")
    text = f"[Trash Info]\nPath={'/'.join(path)}\nDeletionDate=2024-03-05T14:32:00\n".encode()
    write_info(trash, f"{name}.trashinfo.Ab12Cd", text)
    root.rename((TRASH, "info", f"{name}.trashinfo.Ab12Cd"), (TRASH, "info", f"{name}.trashinfo"))
    root.rename(path, (TRASH, "files", name))
    return name


def inbox_file(root):
    [(name, _)] = [(n, c) for n, c in root.main.entries(("INBOX",), root.main.resolve(("INBOX",)))]
    return ("INBOX", name)


def uids(server, folder):
    return sorted(server.mailboxes[folder].messages)


def test_move_to_trash_is_a_server_side_move_shown_under_the_trashed_name():
    server, store, root, trash = make()
    server.add("INBOX", RAW)
    path = inbox_file(root)
    name = gio_trash(root, trash, path)
    assert uids(server, "INBOX") == [] and len(uids(server, "Trash")) == 1
    assert "UID MOVE" in [c[0] for c in server.commands] and "APPEND" not in [c[0] for c in server.commands]
    node = trash.resolve(("files", name))
    assert isinstance(node, MessageRef) and node.folder.name == "Trash" and node.meta.uid == uids(server, "Trash")[0]
    assert [n for n, _ in trash.entries(("files",), trash.resolve(("files",)))] == [name]
    [(info_name, info)] = trash.entries(("info",), trash.resolve(("info",)))
    assert info_name == f"{name}.trashinfo" and isinstance(info, NewFile)
    assert info.spool.read(0, 1000).startswith(b"[Trash Info]\nPath=INBOX/")
    with pytest.raises(NotFound):
        root.main.resolve(path)
    assert set(server.mailboxes) == {"INBOX", "Trash"}  # no .Trash-1000, files or info folder


def test_trash_is_created_only_when_something_is_trashed():
    server, store, root, trash = make(trash_folder=False)
    assert trash.entries(("files",), trash.resolve(("files",))) == []
    assert set(server.mailboxes) == {"INBOX"}
    server.add("INBOX", RAW)
    gio_trash(root, trash, inbox_file(root))
    assert len(uids(server, "Trash")) == 1


def test_gios_mkdirs_are_answered_eexist_and_the_dirs_are_0700():
    server, store, root, trash = make()
    for parts in ((), ("files",), ("info",), ("expunged",)):
        with pytest.raises(AlreadyExists):
            trash.mkdir(parts)
        assert trash.dir_permissions(trash.resolve(parts)) == 0o700
    with pytest.raises(NotSupported):
        trash.mkdir(("files", "sub"))


def test_a_taken_name_makes_gio_choose_another():
    server, store, root, trash = make()
    server.add("INBOX", RAW)
    name = gio_trash(root, trash, inbox_file(root))
    with pytest.raises(AlreadyExists):
        trash.create(("info", f"{name}.trashinfo"), creator=1)
    existing = trash.entries(("files",), trash.resolve(("files",)))[0][0]
    with pytest.raises(AlreadyExists):
        trash.create(("info", f"{existing}.trashinfo"), creator=1)


def test_restore_moves_back_and_forgets_the_trashinfo():
    server, store, root, trash = make()
    server.add("INBOX", RAW)
    path = inbox_file(root)
    name = gio_trash(root, trash, path)
    root.rename((TRASH, "files", name), path)
    assert len(uids(server, "INBOX")) == 1 and uids(server, "Trash") == []
    assert trash.entries(("info",), trash.resolve(("info",))) == []
    with pytest.raises(NotFound):
        trash.resolve(("info", f"{name}.trashinfo"))  # gvfsd-trash's unlink of it then finds nothing: fine


def test_unlink_in_files_expunges_that_uid_and_its_trashinfo():
    server, store, root, trash = make()
    server.add("INBOX", RAW)
    bystander = server.add("Trash", b"Subject: old\r\n\r\n", flags=("\\Deleted",))
    name = gio_trash(root, trash, inbox_file(root))
    trash.unlink(("files", name), trash.resolve(("files", name)), actor="gio")
    assert uids(server, "Trash") == [bystander]  # UID EXPUNGE of that one only
    assert trash.entries(("info",), trash.resolve(("info",))) == []


def test_rename_into_expunged_expunges():
    server, store, root, trash = make()
    server.add("INBOX", RAW)
    name = gio_trash(root, trash, inbox_file(root))
    root.rename((TRASH, "files", name), (TRASH, "expunged", "12345"))
    assert uids(server, "Trash") == []
    assert trash.entries(("expunged",), trash.resolve(("expunged",))) == []


def test_messages_in_trash_before_show_under_their_names_without_trashinfo():
    server, store, root, trash = make()
    server.add("Trash", RAW)
    [(name, node)] = trash.entries(("files",), trash.resolve(("files",)))
    assert name == store.listing("Trash").messages[1].filename and isinstance(node, MessageRef)
    assert trash.resolve(("files", name)).meta.uid == 1
    assert trash.entries(("info",), trash.resolve(("info",))) == []


def test_a_message_leaving_trash_elsewhere_takes_its_trashinfo_with_it():
    server, store, root, trash = make()
    server.add("INBOX", RAW)
    name = gio_trash(root, trash, inbox_file(root))
    server.expunge("Trash", uids(server, "Trash")[0])  # another client empties Trash
    store.invalidate("Trash")
    assert trash.entries(("files",), trash.resolve(("files",))) == []
    assert trash.entries(("info",), trash.resolve(("info",))) == []
    with pytest.raises(NotFound):
        trash.resolve(("files", name))


def test_a_folder_cannot_be_trashed_and_nothing_but_trashinfo_is_written():
    server, store, root, trash = make()
    server.create("Archive")
    with pytest.raises(NotSupported):
        root.rename(("Archive",), (TRASH, "files", "Archive"))
    with pytest.raises(NotSupported):
        trash.create(("files", "x.eml"), creator=1)
    assert "Archive" in server.mailboxes


def test_the_trash_is_not_listed_in_the_root():
    server, store, root, trash = make()
    view, inside, node = root.resolve(())
    assert isinstance(node, DirNode) and TRASH not in [n for n, _ in view.entries(inside, node)]
    assert root.resolve((TRASH,))[0] is trash


def test_kernel_notices_name_trashed_messages_by_their_trash_names():
    server, store, root, trash = make()
    server.add("INBOX", RAW)
    name = gio_trash(root, trash, inbox_file(root))
    meta = store.listing("Trash").messages[uids(server, "Trash")[0]]
    assert (TRASH, "files", name) in root.message_paths(store.folder("Trash"), [meta.filename])


def test_replaced_trashinfo_is_let_go_but_a_readers_handle_keeps_it_readable():
    server, store, root, trash = make()
    first = write_info(trash, "x.eml.trashinfo", b"first")
    first.handles += 1  # a reader has it open (the FUSE edge counts it)
    write_info(trash, "x.eml.trashinfo.Zz99Yy", b"second")
    trash.rename(("info", "x.eml.trashinfo.Zz99Yy"), trash.resolve(("info", "x.eml.trashinfo.Zz99Yy")),
                 ("info", "x.eml.trashinfo"))
    assert trash.resolve(("info", "x.eml.trashinfo")).spool.read(0, 100) == b"second"
    assert first.spool.read(0, 100) == b"first" and first.handles == 1


@pytest.mark.parametrize("name", [".DS_Store", "._x.eml", ".directory", ".hidden", ".Trash", ".Trash-1001",
                                  ".notmuch", ".localized"])
def test_tools_files_are_refused_in_folders(name):
    server, store, root, trash = make()
    with pytest.raises(NotMail):
        root.main.create(("INBOX", name), creator=1)
    assert server.mailboxes["INBOX"].messages == {}


@pytest.mark.parametrize("name", [".notmuch", ".Trash", ".Trash-1001", ".git", ".stfolder"])
def test_dot_directories_are_never_folders(name):
    server, store, root, trash = make()
    with pytest.raises(NotMail):
        root.main.mkdir((name,))
    with pytest.raises(NotMail):
        root.main.mkdir(("INBOX", name))
    server.create("Archive")
    store.listings.invalidate_folders()
    with pytest.raises(NotMail):
        root.main.rename(("Archive",), root.main.resolve(("Archive",)), (name,))
    assert set(server.mailboxes) == {"INBOX", "Trash", "Archive"}


@pytest.mark.parametrize("name", [".x.eml.Ab12Cd", "._report.eml.Q1w2E3", ".hello", "notes.eml", ".DS_Store.eml"])
def test_rsync_temp_names_and_other_files_may_be_filed(name):
    assert names.tool_file_reason(name, directory=False) is None
    server, store, root, trash = make()
    assert isinstance(root.main.create(("INBOX", name), creator=1), NewFile)
