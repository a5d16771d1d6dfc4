"""MailStore against an in-memory server at the pool boundary."""

import datetime as dt

import pytest

from imapfs.config import Options
from imapfs.errors import NotFound, ProtocolError, ServerUnavailable, StaleMessage
from imapfs.store import CHUNK_SIZE, WHOLE_LIMIT, MailStore
from tests.unit.fakes import FakePool, FakeServer


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def msg(subject: str, body: bytes = b"hello\r\n") -> bytes:
    return f"Subject: {subject}\r\nMessage-ID: <{abs(hash(subject))}@x>\r\n\r\n".encode() + body


@pytest.fixture
def server():
    return FakeServer()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(server, clock):
    return MailStore(FakePool(server), Options(listing_ttl=10, fetch_batch=3), clock=clock)


def body_fetches(server):
    return [c for c in server.commands if c[0] == "UID FETCH" and any("BODY.PEEK[]" in i for i in c[2])]


def test_listing_fetches_metadata_in_batches_and_no_bodies(server, store):
    for i in range(7):
        server.add("INBOX", msg(f"m{i}"))
    listing = store.listing("INBOX")
    assert sorted(listing.messages) == list(range(1, 8))
    fetches = [c for c in server.commands if c[0] == "UID FETCH"]
    assert len(fetches) == 3  # 7 UIDs in batches of 3
    assert not body_fetches(server)
    meta = listing.messages[1]
    assert meta.filename == "2024-03-05_1432_m0_1.eml"
    assert meta.size == len(msg("m0"))
    assert meta.message_id.startswith("<")


def test_listing_is_cached_until_ttl_then_synced_incrementally(server, store, clock):
    server.add("INBOX", msg("a"))
    store.listing("INBOX")
    server.add("INBOX", msg("b"))
    server.commands.clear()
    assert len(store.listing("INBOX").messages) == 1  # still within the TTL: no command
    assert server.commands == []
    clock.now += 11
    listing = store.listing("INBOX")
    assert sorted(listing.messages) == [1, 2]
    metadata = [c for c in server.commands if c[0] == "UID FETCH" and "RFC822.SIZE" in c[2]]
    assert metadata == [("UID FETCH", [2], metadata[0][2], ())]  # only the new message


def test_expunged_messages_disappear_and_flags_follow(server, store, clock):
    server.add("INBOX", msg("a"))
    server.add("INBOX", msg("b"))
    store.listing("INBOX")
    server.expunge("INBOX", 1)
    server.mailboxes["INBOX"].messages[2].flags = {"\\Seen"}
    server.mailboxes["INBOX"].modseq += 1
    server.mailboxes["INBOX"].messages[2].modseq = server.mailboxes["INBOX"].modseq
    clock.now += 11
    listing = store.listing("INBOX")
    assert list(listing.messages) == [2]
    assert listing.messages[2].flags == ("\\Seen",)


def test_uidvalidity_change_drops_everything(server, store, clock):
    server.add("INBOX", msg("old"))
    old = store.listing("INBOX")
    old_meta = old.messages[1]
    assert store.read("INBOX", old.uidvalidity, old_meta, 0, 100).startswith(b"Subject: old")
    del server.mailboxes["INBOX"]
    server.create("INBOX")
    server.add("INBOX", msg("new"))
    clock.now += 11
    new = store.listing("INBOX")
    assert new.uidvalidity != old.uidvalidity
    assert new.messages[1].filename.endswith("_new_1.eml")
    # A handle opened under the old UIDVALIDITY never gets the new message's bytes.
    store.bodies = type(store.bodies)(1 << 20)
    with pytest.raises(StaleMessage):
        store.read("INBOX", old.uidvalidity, old_meta, 0, 100)


def test_read_uses_peek_and_returns_exact_bytes(server, store):
    raw = msg("x", b"A" * 5000)
    server.add("INBOX", raw)
    listing = store.listing("INBOX")
    meta = listing.messages[1]
    got = b"".join(store.read("INBOX", listing.uidvalidity, meta, off, 4096) for off in range(0, 9000, 4096))
    assert got == raw
    assert all(i.startswith("BODY.PEEK") for c in body_fetches(server) for i in c[2])
    assert len(body_fetches(server)) == 1  # cached after the first read
    assert server.mailboxes["INBOX"].messages[1].flags == set()


def test_wrong_rfc822_size_is_corrected_on_read(server, store):
    raw = msg("liar", b"B" * 300)
    server.add("INBOX", raw, reported_size=100)
    listing = store.listing("INBOX")
    meta = listing.messages[1]
    assert meta.size == 100 and not meta.size_verified
    assert store.read("INBOX", listing.uidvalidity, meta, 0, 1 << 16) == raw
    assert meta.size == len(raw) and meta.size_verified


def test_a_size_learnt_through_one_copy_is_the_listings_and_corrected_once(server, store):
    # A listing's MessageMeta is a copy of its row: the real size must reach
    # the row (stat after cat), and a second copy must not correct it again.
    raw = msg("liar", b"B" * 300)
    server.add("INBOX", raw, reported_size=100)
    corrected: list[str] = []
    store.on_size_corrected = lambda folder, name, grew: corrected.append(name)
    listing = store.listing("INBOX")
    first, second = listing.messages[1], listing.messages[1]
    assert store.read("INBOX", listing.uidvalidity, first, 0, 1 << 16) == raw
    row = store.listing("INBOX").messages[1]
    assert (row.size, row.size_verified) == (len(raw), True)
    assert store.read("INBOX", listing.uidvalidity, second, 0, 1 << 16) == raw
    assert (second.size, second.size_verified) == (len(raw), True)
    assert corrected == [first.filename]


def test_a_recreated_folder_does_not_inherit_the_old_messages_sizes(server, store, clock):
    # Deleted and recreated elsewhere: UIDs restart under a new UIDVALIDITY,
    # so UID 1 is another message, and the size read of the old UID 1 is not
    # its size (a kernel told so cuts the new one short).
    server.create("F")
    old, new = msg("same", b"OLD " * 50), msg("same", b"NEW " * 80)
    server.add("F", old)
    listing = store.listing("F")
    assert store.read("F", listing.uidvalidity, listing.messages[1], 0, 1 << 16) == old
    assert listing.messages[1].size_verified
    corrected: list[str] = []
    store.on_size_corrected = lambda folder, name, grew: corrected.append(name)
    del server.mailboxes["F"]
    server.create("F")
    assert server.add("F", new) == 1
    clock.now += 60
    fresh = store.listing("F")
    assert fresh.uidvalidity != listing.uidvalidity
    assert fresh.messages[1].size == len(new)
    assert store.read("F", fresh.uidvalidity, fresh.messages[1], 0, 1 << 16) == new
    assert corrected == []


def test_impossible_uids_and_sizes_are_skipped_and_the_rest_listed(server, store, caplog):
    # A server that lies: a negative RFC822.SIZE, a UID past 32 bits. The
    # listing shows the other messages, and says what it skipped.
    server.add("INBOX", msg("fine"))
    server.add("INBOX", msg("negative"), reported_size=-5)
    server.mailboxes["INBOX"].uidnext = 2**32
    server.add("INBOX", msg("too far"))
    listing = store.listing("INBOX")
    assert sorted(listing.messages) == [1]
    assert "impossible" in caplog.text


def test_large_message_read_to_a_too_small_reported_end_learns_its_real_end(server, store):
    # The kernel's page cache never reads past the size it was told: reading
    # up to the reported end must be enough to find the real one.
    raw = msg("big liar", b"L" * (12 * CHUNK_SIZE + 100))
    server.add("INBOX", raw, reported_size=12 * CHUNK_SIZE - 200)
    corrected: list[tuple[str, bool]] = []
    store.on_size_corrected = lambda folder, name, grew: corrected.append((name, grew))
    listing = store.listing("INBOX")
    meta = listing.messages[1]
    reported = meta.size
    for offset in range(0, reported, CHUNK_SIZE):
        assert store.read("INBOX", listing.uidvalidity, meta, offset, CHUNK_SIZE) == raw[offset:offset + CHUNK_SIZE]
    assert meta.size == len(raw) and meta.size_verified
    assert corrected == [(meta.filename, True)]


def test_large_message_is_read_in_chunks_across_boundaries(server, store):
    raw = msg("big", bytes(range(256)) * ((WHOLE_LIMIT + 3 * CHUNK_SIZE) // 256 + 7))
    server.add("INBOX", raw)
    listing = store.listing("INBOX")
    meta = listing.messages[1]
    head = store.read("INBOX", listing.uidvalidity, meta, 0, 4096)
    assert head == raw[:4096]
    assert len(body_fetches(server)) == 1
    assert body_fetches(server)[0][2] == (f"BODY.PEEK[]<0.{CHUNK_SIZE}>",)
    across = store.read("INBOX", listing.uidvalidity, meta, CHUNK_SIZE - 10, 20)
    assert across == raw[CHUNK_SIZE - 10:CHUNK_SIZE + 10]
    tail = store.read("INBOX", listing.uidvalidity, meta, len(raw) - 5, 4096)
    assert tail == raw[-5:]
    assert store.read("INBOX", listing.uidvalidity, meta, len(raw) + 10, 4096) == b""


def test_a_partial_fetch_answered_with_origin_and_length_reads_the_same(server, store):
    # Some servers answer BODY.PEEK[]<0.131072> as BODY[]<0.131072> rather
    # than RFC 3501's BODY[]<0>: the same range, not a missing message.
    raw = msg("big", bytes(range(256)) * ((WHOLE_LIMIT + 3 * CHUNK_SIZE) // 256 + 7))
    server.add("INBOX", raw)
    server.partial_answer = "origin.length"
    listing = store.listing("INBOX")
    meta = listing.messages[1]
    assert store.read("INBOX", listing.uidvalidity, meta, 0, 4096) == raw[:4096]
    assert store.read("INBOX", listing.uidvalidity, meta, len(raw) - 5, 4096) == raw[-5:]


def test_a_body_answered_under_a_name_imapfs_did_not_ask_for_is_an_error_not_gone(server, store):
    raw = msg("big", b"x" * (WHOLE_LIMIT + CHUNK_SIZE))
    server.add("INBOX", raw)
    server.partial_answer = "TEXT"  # BODY[TEXT] for BODY.PEEK[]<0.131072>
    listing = store.listing("INBOX")
    with pytest.raises(ProtocolError) as raised:
        store.read("INBOX", listing.uidvalidity, listing.messages[1], 0, 4096)
    assert not isinstance(raised.value, NotFound)
    assert "BODY[TEXT]" in str(raised.value)


def test_expunged_message_read_is_not_found(server, store):
    server.add("INBOX", msg("gone"))
    listing = store.listing("INBOX")
    server.expunge("INBOX", 1)
    with pytest.raises(NotFound):
        store.read("INBOX", listing.uidvalidity, listing.messages[1], 0, 10)


def test_message_lookup_requires_the_exact_name(server, store):
    server.add("INBOX", msg("exact"))
    _, meta = store.message("INBOX", "2024-03-05_1432_exact_1.eml")
    assert meta.uid == 1
    for wrong in ("2024-03-05_1432_other_1.eml", "x_2.eml", "readme.txt"):
        with pytest.raises(NotFound):
            store.message("INBOX", wrong)


def test_dropped_connection_is_retried_for_reads(server, store):
    server.add("INBOX", msg("retry"))
    server.fail_next.append(ServerUnavailable("connection reset"))
    assert 1 in store.listing("INBOX").messages


def test_internaldate_becomes_mtime_and_name(server, store):
    when = dt.datetime(2001, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    server.add("INBOX", msg("dated"), internaldate=when)
    meta = store.listing("INBOX").messages[1]
    assert meta.internaldate == when.timestamp()
    assert meta.filename.startswith("2001-02-03_0205_")


def test_a_message_expunged_elsewhere_reads_as_gone_not_empty(server, store):
    server.add("INBOX", msg("ghost"))
    listing = store.listing("INBOX")
    meta = listing.messages[1]
    server.ghosts.add(1)  # the server answers FETCH with BODY[] NIL
    with pytest.raises(NotFound):
        store.read("INBOX", listing.uidvalidity, meta, 0, 4096)
    assert meta.size == len(msg("ghost"))  # nothing learnt from a non-answer
    selects = [c for c in server.commands if c[0] == "EXAMINE"]
    assert len(selects) >= 2  # the session's view was refreshed before giving up


def read_all(store, listing, uids):
    out = {}
    for uid in uids:
        meta = listing.messages[uid]
        out[uid] = store.read("INBOX", listing.uidvalidity, meta, 0, 1 << 20)
    return out


def test_sequential_scan_fetches_ahead_in_few_round_trips(server, store):
    raws = {server.add("INBOX", msg(f"scan {i}", b"x" * (100 + i))): None for i in range(200)}
    listing = store.listing("INBOX")
    order = list(listing.messages)
    got = read_all(store, listing, order)
    for uid in order:
        assert got[uid] == server.mailboxes["INBOX"].messages[uid].raw
    store.readahead._executor.shutdown(wait=True)
    fetches = body_fetches(server)
    assert len(fetches) < 30, len(fetches)  # not one round trip per message
    fetched = [u for c in fetches for u in (c[1] if isinstance(c[1], list) else [])]
    assert len(fetched) == len(set(fetched)) == len(raws)  # nothing fetched twice, nothing extra


def test_read_ahead_corrects_wrong_sizes_before_those_messages_are_read(server, store):
    # On a read-only mount the kernel reads cached files without asking
    # imapfs first, clamped at the size it was told: a misreported size must
    # be corrected, and the kernel told, as soon as the body is in hand.
    for i in range(40):
        server.add("INBOX", msg(f"liar {i}", b"C" * (200 + i)), reported_size=100)
    told: list[str] = []
    store.on_size_corrected = lambda folder, name, grew: told.append(name)
    listing = store.listing("INBOX")
    order = list(listing.messages)
    read_all(store, listing, order[:10])  # a scan: the next messages are fetched ahead
    store.readahead._executor.shutdown(wait=True)
    ahead = [listing.messages[uid] for uid in order[10:] if listing.messages[uid].size_verified]
    assert ahead, "the scan fetched nothing ahead"
    for meta in ahead:
        assert meta.size == len(server.mailboxes["INBOX"].messages[meta.uid].raw)
        assert meta.filename in told


def test_random_access_fetches_only_what_is_read(server, store):
    for i in range(100):
        server.add("INBOX", msg(f"rand {i}"))
    listing = store.listing("INBOX")
    order = list(listing.messages)
    import random

    picks = random.Random(3).sample(order[::3], 20)  # never two neighbours in a row
    read_all(store, listing, picks)
    fetched = [u for c in body_fetches(server) for u in c[1]]
    assert sorted(fetched) == sorted(picks)


def test_reading_a_large_message_straight_through_takes_growing_spans(server, store):
    raw = msg("huge", bytes(range(256)) * (40 * CHUNK_SIZE // 256 + 3))
    server.add("INBOX", raw)
    listing = store.listing("INBOX")
    meta = listing.messages[1]
    got = b"".join(store.read("INBOX", listing.uidvalidity, meta, off, 65536) for off in range(0, len(raw), 65536))
    assert got == raw
    spans = [int(c[2][0].split(".")[-1].rstrip(">")) // CHUNK_SIZE for c in body_fetches(server)]
    assert spans[:4] == [1, 2, 4, 8] and len(spans) < 10
    assert meta.size_verified and meta.size == len(raw)


def test_header_cache_costs_a_few_hundred_bytes_per_message():
    """The listing of a 10,000-message folder, measured with tracemalloc."""
    import tracemalloc

    from imapfs.model import Listing
    from imapfs.store import _meta_from_fetch

    rows = [(uid, {b"UID": uid, b"FLAGS": (b"\\Seen",), b"RFC822.SIZE": 1500 + uid % 700,
                   b"INTERNALDATE": dt.datetime(2024, 3, 5, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=uid),
                   b"BODY[HEADER.FIELDS (SUBJECT MESSAGE-ID)]":
                       b"Subject: Status summary %d for the weekly review\r\n"
                       b"Message-ID: <%d.abcdef.1234@mail.example.org>\r\n\r\n" % (uid, uid)})
            for uid in range(1, 10_001)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        listing = Listing(folder="INBOX", uidvalidity=1)
        for uid, data in rows:
            listing.add(_meta_from_fetch(uid, data))
        per_message = (tracemalloc.get_traced_memory()[0] - before) / len(rows)
    finally:
        tracemalloc.stop()
    assert len(listing.messages) == 10_000
    assert per_message < 400, per_message


def test_a_lookup_before_any_listing_fetches_that_uid_and_is_kept_like_a_listing(server, store, clock):
    for number in range(20):
        server.add("INBOX", msg(f"many {number}"))
    name = "2024-03-05_1432_many-7_8.eml"
    server.commands.clear()
    uidvalidity, meta = store.message("INBOX", name)
    assert (meta.uid, uidvalidity) == (8, server.mailboxes["INBOX"].uidvalidity)
    assert [c[:2] for c in server.commands if c[0] == "UID FETCH"] == [("UID FETCH", [8])]
    assert store.cached_listing("INBOX") is None  # nothing listed for it
    store.message("INBOX", name)
    assert len([c for c in server.commands if c[0] == "UID FETCH"]) == 1  # kept for listing_ttl
    store.invalidate("INBOX")  # a write through the mount: asked again
    store.message("INBOX", name)
    clock.now += 60  # and after listing_ttl
    store.message("INBOX", name)
    assert len([c for c in server.commands if c[0] == "UID FETCH"]) == 3
    server.expunge("INBOX", 8)
    store.invalidate("INBOX")
    with pytest.raises(NotFound):
        store.message("INBOX", name)
    with pytest.raises(NotFound):
        store.message("Nowhere", name)


def test_an_unchanged_folder_revalidates_with_one_examine_and_keeps_its_listing_object(server, store, clock):
    from imapfs.views.folders import FoldersView
    for number in range(7):
        server.add("INBOX", msg(f"kept {number}"))
    view = FoldersView(store)
    node = view.resolve(("INBOX",))
    first = store.listing("INBOX")
    entries = view.entries(("INBOX",), node)
    clock.now += 60
    server.commands.clear()
    assert store.listing("INBOX") is first
    assert [c[0] for c in server.commands] == ["EXAMINE"]  # one round trip, nothing fetched
    assert view.entries(("INBOX",), node) is entries  # no entry rebuilt
    # A flag changed elsewhere moves HIGHESTMODSEQ: then it is resynchronised.
    server.set_flags("INBOX", 3, {"\\Seen"})
    clock.now += 60
    changed = store.listing("INBOX")
    assert changed is not first and changed.messages[3].flags == ("\\Seen",)
    assert view.entries(("INBOX",), node) is not entries


def test_without_condstore_an_unchanged_looking_folder_is_still_resynchronised(clock):
    server = FakeServer(capabilities=("IMAP4REV1", "MOVE", "UIDPLUS"))
    server.add("INBOX", msg("plain"))
    store = MailStore(FakePool(server), Options(listing_ttl=10), clock=clock)
    store.listing("INBOX")
    server.set_flags("INBOX", 1, {"\\Flagged"})  # no HIGHESTMODSEQ to tell
    clock.now += 60
    assert store.listing("INBOX").messages[1].flags == ("\\Flagged",)


def test_a_walk_lists_the_other_small_folders_ahead_side_by_side(clock):
    import time as _time
    server = FakeServer(capabilities=("IMAP4REV1", "MOVE", "UIDPLUS", "CONDSTORE", "LIST-STATUS"))
    names_ = [f"many/f{number:02d}" for number in range(12)]
    for name in names_:
        server.create(name)
        for number in range(3):
            server.add(name, msg(f"{name} {number}"))
    server.create("big")
    store = MailStore(FakePool(server, connections=3), Options(listing_ttl=10, connections=3, fetch_batch=5),
                      clock=clock)
    store.folders()
    store.listing("many/f00")
    assert all(store.cached_listing(name) is None for name in names_[1:])  # one folder listed: no walk yet
    store.listing("many/f01")  # a second sibling in a row: a walk
    deadline = _time.monotonic() + 10
    while any(store.cached_listing(name) is None for name in names_) and _time.monotonic() < deadline:
        _time.sleep(0.01)
    for name in names_:
        listing = store.cached_listing(name)
        assert listing is not None and sorted(listing.messages) == sorted(server.mailboxes[name].messages)
    assert store.cached_listing("big") is None  # not a sibling: not listed
    server.commands.clear()
    store.listing("many/f07")  # fresh: the walk's next step costs nothing
    assert server.commands == []
