"""MailStore.search and the .search view against the in-memory server (no network)."""

from __future__ import annotations

import pytest

from imapfs.config import Options
from imapfs.errors import InvalidQuery, NotFound, NotSupported, ServerUnavailable
from imapfs.store import MailStore
from imapfs.views.base import DirNode, MessageRef
from imapfs.views.folders import FoldersView
from imapfs.views.root import CompositeRoot
from imapfs.views.search import SearchView
from tests.unit.fakes import FakePool, FakeServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def mail(subject: str, body: str = "hello", sender: str = "alice@example.org") -> bytes:
    return (f"From: {sender}\r\nTo: bob@example.org\r\nSubject: {subject}\r\n"
            f"Message-ID: <{abs(hash((subject, body)))}@x>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"{body}\r\n").encode()


@pytest.fixture
def server() -> FakeServer:
    server = FakeServer()
    for name in ("Work", "Work/Deep", "Archive", "Trash"):
        server.create(name)
    return server


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(server: FakeServer, clock: Clock) -> MailStore:
    return MailStore(FakePool(server, connections=3), Options(listing_ttl=10, connections=3), clock=clock)


@pytest.fixture
def view(store: MailStore) -> SearchView:
    return SearchView(store)


def searches(server: FakeServer) -> list[tuple]:
    return [c for c in server.commands if c[0] == "UID SEARCH" and len(c) == 3]


def files(view: SearchView, *parts: str) -> dict[str, MessageRef]:
    node = view.resolve(parts)
    assert isinstance(node, DirNode)
    return {name: child for name, child in view.entries(parts, node) if isinstance(child, MessageRef)}


def test_results_nest_like_folders_and_hold_the_listings_messages(server, store, view):
    inbox = server.add("INBOX", mail("invoice 1"))
    server.add("INBOX", mail("lunch"))
    deep = server.add("Work/Deep", mail("the invoice", sender="carol@example.org"))
    server.add("Archive", mail("nothing here"))
    top = view.resolve(("invoice",))
    assert isinstance(top, DirNode)
    assert sorted(name for name, _ in view.entries(("invoice",), top)) == ["INBOX", "Work"]
    # Work holds no match itself but leads to Work/Deep, which does.
    assert files(view, "invoice", "Work") == {}
    shown = files(view, "invoice", "Work", "Deep")
    listing = store.listing("Work/Deep")
    assert [ref.meta for ref in shown.values()] == [listing.messages[deep]]
    assert list(shown) == [listing.messages[deep].filename]
    name = store.listing("INBOX").messages[inbox].filename
    ref = view.resolve(("invoice", "INBOX", name))
    assert isinstance(ref, MessageRef) and ref.meta == store.listing("INBOX").messages[inbox]
    # Only the metadata: a search never fetches a body.
    assert not [c for c in server.commands if c[0] == "UID FETCH" and any("BODY.PEEK[]" in i for i in c[2])]


def test_a_file_that_does_not_match_is_not_found_there(server, store, view):
    server.add("INBOX", mail("invoice"))
    other = server.add("INBOX", mail("lunch"))
    name = store.listing("INBOX").messages[other].filename
    with pytest.raises(NotFound):
        view.resolve(("invoice", "INBOX", name))
    with pytest.raises(NotFound):
        view.resolve(("invoice", "Archive"))  # no match there: no directory


def test_each_folder_is_searched_once_with_the_exact_keys_and_charset(server, view):
    server.add("Work", mail("Zürich"))
    view.resolve(("Zürich from:alice",))
    sent = searches(server)
    assert sorted(c[1:] for c in sent) == sorted(
        [("UTF-8", ("TEXT", "Zürich", "FROM", "alice"))] * len(server.mailboxes))
    view.resolve(("Zürich from:alice",))
    view.resolve(("Zürich from:alice", "Work"))
    assert len(searches(server)) == len(sent)  # fresh within listing_ttl: asked once


def test_results_renew_after_listing_ttl_and_after_a_change(server, clock, view):
    server.add("INBOX", mail("needle one"))
    assert len(files(view, "needle", "INBOX")) == 1
    server.add("INBOX", mail("needle two"))
    assert len(files(view, "needle", "INBOX")) == 1  # within listing_ttl
    clock.now += 11
    assert len(files(view, "needle", "INBOX")) == 2
    view.store.changed_elsewhere("INBOX")  # what the watcher says when it sees a change
    server.add("INBOX", mail("needle three"))
    assert len(files(view, "needle", "INBOX")) == 3


def test_new_mail_found_by_the_search_is_listed_too(server, store, view):
    """The listing may be older than the search: both are renewed, so a match shows at once."""
    store.listing("INBOX")
    server.add("INBOX", mail("fresh needle"))
    assert len(files(view, "needle", "INBOX")) == 1


def test_in_limits_the_folders_searched(server, view):
    for folder in ("INBOX", "Work", "Work/Deep", "Archive"):
        server.add(folder, mail("needle"))
    top = view.resolve(("needle in:Work",))
    assert isinstance(top, DirNode)
    assert list(top.children) == ["Work"]
    searched = [c for c in server.commands if c[0] in ("EXAMINE", "SELECT")]
    assert {c[1] for c in searched} <= {"Work", "Work/Deep"}
    assert list(view.resolve(("needle -in:Work -in:Archive",)).children) == ["INBOX"]


def test_unparsable_queries_fail_the_lookup_and_ask_the_server_nothing(server, view):
    before = len(server.commands)
    with pytest.raises(InvalidQuery, match="unbalanced"):
        view.resolve(('"oops',))
    assert len(server.commands) == before


def test_gmail_needs_the_extension(server, store):
    with pytest.raises(InvalidQuery, match="X-GM-EXT-1"):
        SearchView(store).resolve(("gmail:has:attachment",))
    gmail = FakeServer(capabilities=("IMAP4REV1", "X-GM-EXT-1", "UIDPLUS", "MOVE"))
    gmail.add("INBOX", mail("attachment inside"))
    view = SearchView(MailStore(FakePool(gmail), Options()))
    assert len(files(view, "gmail:attachment", "INBOX")) == 1
    assert [c[1:] for c in searches(gmail)] == [(None, ("X-GM-RAW", "attachment"))]


def test_a_search_the_server_refuses_is_an_invalid_query(server, store):
    server.add("INBOX", mail("x"))
    with pytest.raises(InvalidQuery, match="refused"):
        store.search("INBOX", ("TEXT", "Zürich"), None)  # non-ASCII without CHARSET: NO [BADCHARSET]


def test_a_folder_deleted_meanwhile_has_no_matches(server, store):
    server.add("Archive", mail("needle"))
    found = store.search_folders(["Archive", "Gone"], ("TEXT", "needle"))
    assert found["Archive"].uids == (1,)
    assert found["Gone"].uids == ()


def test_the_search_root_lists_nothing_and_the_composite_root_hides_it(server, store, view):
    root = CompositeRoot(FoldersView(store), {".search": view})
    assert ".search" not in {name for name, _ in root.main.entries((), root.main.resolve(()))}
    hidden, inside, node = root.resolve((".search",))
    assert hidden is view and inside == () and isinstance(node, DirNode)
    assert view.entries((), node) == []


def test_rm_in_a_result_moves_the_real_message_to_trash(server, store, view):
    uid = server.add("Work", mail("needle"))
    (name, ref), = files(view, "needle", "Work").items()
    view.unlink(("needle", "Work", name), ref, actor="rm")
    assert uid not in server.mailboxes["Work"].messages
    assert len(server.mailboxes["Trash"].messages) == 1
    with pytest.raises(NotFound):
        view.resolve(("needle", "Work"))  # its last match gone, so is the directory


def test_mv_between_result_folders_moves_the_message_and_other_renames_are_refused(server, store, view):
    server.add("Work", mail("needle a"))
    server.add("Archive", mail("needle b"))
    (name, ref), = files(view, "needle", "Work").items()
    with pytest.raises(NotSupported):
        view.rename(("needle", "Work", name), ref, ("needle", "Work", "other.eml"))
    with pytest.raises(NotSupported):
        view.rename(("needle", "Work", name), ref, ("other query", "Archive", name))
    view.rename(("needle", "Work", name), ref, ("needle", "Archive", name))
    assert not server.mailboxes["Work"].messages
    assert len(server.mailboxes["Archive"].messages) == 2


def test_the_same_entries_come_back_while_nothing_changed(server, view):
    server.add("INBOX", mail("needle"))
    node = view.resolve(("needle", "INBOX"))
    first = view.entries(("needle", "INBOX"), node)
    assert view.entries(("needle", "INBOX"), view.resolve(("needle", "INBOX"))) is first


def test_kernel_notices_name_the_query_paths(server, store, view):
    server.add("Work/Deep", mail("needle"))
    view.resolve(("needle",))
    folder = store.folder("Work/Deep")
    assert ("needle", "Work", "Deep") in view.folder_paths(folder)
    assert view.message_paths(folder, ["x.eml"]) == [("needle", "Work", "Deep", "x.eml")]


def test_a_dropped_connection_during_a_search_is_retried(server, store):
    uid = server.add("INBOX", mail("needle"))
    server.fail_next.append(ServerUnavailable("connection reset"))
    assert store.search("INBOX", ("TEXT", "needle")).uids == (uid,)


def test_a_result_fetches_the_metadata_of_its_matches_only(server, store, view):
    """A folder of 50 with 2 matches: the search brings those two's metadata; no listing of all 50."""
    wanted = [server.add("Archive", mail("needle one")), server.add("Archive", mail("needle two"))]
    for number in range(48):
        server.add("Archive", mail(f"hay {number}"))
    shown = files(view, "needle", "Archive")
    assert sorted(ref.meta.uid for ref in shown.values()) == wanted
    fetched = [c for c in server.commands if c[0] == "UID FETCH"]
    assert len(fetched) == 1 and fetched == [("UID FETCH", wanted, tuple(c[2]), ()) for c in fetched]
    assert not [c for c in server.commands if c == ("UID SEARCH", "ALL")]  # no listing was made
    # The same names, sizes and times as the folder's own listing gives them.
    listing = store.listing("Archive")
    assert {name: ref.meta for name, ref in shown.items()} == {listing.messages[u].filename: listing.messages[u]
                                                              for u in wanted}


def test_a_fresh_listing_is_used_instead_of_fetching_again(server, store, view):
    uid = server.add("Archive", mail("needle"))
    listing = store.listing("Archive")
    before = len([c for c in server.commands if c[0] == "UID FETCH"])
    (ref,) = files(view, "needle", "Archive").values()
    assert ref.meta == listing.messages[uid]
    assert len([c for c in server.commands if c[0] == "UID FETCH"]) == before


def test_empty_folders_by_list_status_are_not_searched_until_that_is_old_or_they_changed(clock):
    server = FakeServer(capabilities=("IMAP4REV1", "MOVE", "UIDPLUS", "CONDSTORE", "LIST-STATUS"))
    for name in ("Empty", "Full"):
        server.create(name)
    server.add("Full", mail("needle"))
    store = MailStore(FakePool(server, connections=3), Options(listing_ttl=10, connections=3), clock=clock)
    store.folders()
    assert store.search_folders(["Empty", "Full"], ("TEXT", "needle"))["Full"].uids == (1,)
    assert [c[0] for c in server.commands if c[:2] == ("EXAMINE", "Empty")] == []
    # Mail filed through the mount moves the folder's generation: the status no longer holds.
    server.add("Empty", mail("needle too"))
    store.invalidate("Empty")
    assert store.search("Empty", ("TEXT", "needle")).uids == (1,)
    # ... and so does age, for a change elsewhere the watcher has not reported.
    other = FakeServer(capabilities=("IMAP4REV1", "LIST-STATUS"))
    other.create("Quiet")
    later = MailStore(FakePool(other), Options(listing_ttl=10), clock=clock)
    later.folders()
    other.add("Quiet", mail("needle"))
    assert later.search("Quiet", ("TEXT", "needle")).uids == ()  # within listing_ttl, as a listing would be
    clock.now += 11
    assert later.search("Quiet", ("TEXT", "needle")).uids == (1,)


def test_a_size_corrected_since_the_search_is_shown_in_its_result(server, store, view):
    # The server understated the size; a read through the folder found the
    # real one. A lookup in the result (what the kernel does once told to
    # forget the name) gives the real size, not the search's copy of the old.
    real = mail("invoice", "the real body, longer than the server says " * 10)
    uid = server.add("INBOX", real, reported_size=50)
    name = store.listing("INBOX").messages[uid].filename
    before = view.resolve(("invoice", "INBOX", name))
    assert isinstance(before, MessageRef) and before.meta.size == 50
    listing = store.listing("INBOX")
    assert store.read("INBOX", listing.uidvalidity, listing.messages[uid], 0, 1 << 16) == real
    after = view.resolve(("invoice", "INBOX", name))
    assert isinstance(after, MessageRef) and (after.meta.size, after.meta.size_verified) == (len(real), True)
