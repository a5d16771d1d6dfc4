"""MessageTable: a listing's messages held as columns, rows in UID order."""

from __future__ import annotations

import random

import pytest

from imapfs.model import Listing, MessageMeta, MessageTable


def meta(uid: int, **changes: object) -> MessageMeta:
    fields: dict[str, object] = dict(
        uid=uid, size=uid * 10, internaldate=1.7e9 + uid, flags=("\\Seen",) if uid % 2 else (),
        filename=f"2024-03-05_1432_Ünïcode-{uid}_{uid}.eml", message_id=f"<{uid}@example.org>",
        size_verified=uid % 3 == 0)
    fields.update(changes)
    return MessageMeta(**fields)  # type: ignore[arg-type]


def test_rows_read_back_as_they_were_added_in_uid_order():
    metas = [meta(uid) for uid in (3, 1, 7, 2)]
    table = MessageTable(metas)
    assert list(table) == [1, 2, 3, 7] and len(table) == 4
    assert list(table.values()) == sorted(metas, key=lambda m: m.uid)
    assert table[7] == meta(7) and table.get(4) is None and 4 not in table and 3 in table and "3" not in table
    assert [table.filename_at(row) for row in range(4)] == [meta(u).filename for u in (1, 2, 3, 7)]
    assert table.position(3) == 2 and table.position(5) is None
    with pytest.raises(KeyError):
        table[5]


def test_an_empty_message_id_and_a_name_holding_a_lone_surrogate_survive():
    table = MessageTable([meta(1, message_id="", filename="odd-\udcff_1.eml"), meta(2)])
    assert table[1].message_id == "" and table[1].filename == "odd-\udcff_1.eml" and table[2] == meta(2)


def test_removing_rows_in_batches_keeps_every_other_row_exact():
    rng = random.Random(7)
    kept = {uid: meta(uid) for uid in range(1, 400)}
    table = MessageTable(kept.values())
    while kept:
        gone = rng.sample(sorted(kept), min(len(kept), rng.randint(1, 30)))
        table.remove_many([*gone, 10_000])  # a UID not there is ignored
        for uid in gone:
            del kept[uid]
        assert list(table.items()) == sorted(kept.items())
    assert len(table) == 0 and list(table.filenames()) == []


def test_a_row_added_out_of_uid_order_or_again_takes_its_place():
    table = MessageTable([meta(5), meta(9)])
    table.add(meta(7))
    table.add(meta(9, size=1))
    assert list(table) == [5, 7, 9] and table[9].size == 1 and table[7] == meta(7)


def test_a_copy_changes_apart_from_the_table_it_was_copied_from():
    table = MessageTable([meta(1), meta(2)])
    twin = table.copy()
    assert twin.set_flags(1, ("\\Flagged",)) and not twin.set_flags(1, ("\\Flagged",))
    twin.set_size(2, 999, True)
    twin.remove_many([1])
    assert table[1] == meta(1) and table[2] == meta(2)
    assert list(twin) == [2] and (twin[2].size, twin[2].size_verified) == (999, True)
    assert table.uids_not_in(twin) == [1] and twin.uids_not_in(table) == [] and not table.same_uids(twin)


def test_a_metadata_copy_changed_leaves_its_row_alone():
    table = MessageTable([meta(1)])
    copy = table[1]
    copy.size = 5
    assert table[1].size == 10


def test_a_listing_made_from_a_dict_holds_a_table():
    listing = Listing("INBOX", 7, messages={2: meta(2), 1: meta(1)})  # type: ignore[arg-type]
    assert isinstance(listing.messages, MessageTable) and list(listing.messages) == [1, 2]
    uids, positions = listing.order()
    assert list(uids) == [1, 2] and positions.position(2) == 1
    assert listing.filenames() == {meta(1).filename, meta(2).filename}


def test_directory_entries_made_from_rows_are_the_entries_made_from_nodes():
    from imapfs.fs import DirEntries
    from imapfs.model import Folder
    from imapfs.views.base import DirNode, ListingEntries, MessageRef

    folder = Folder("INBOX", "/")
    table = MessageTable([meta(uid) for uid in (2, 3, 5)])
    sub = DirNode(Folder("INBOX/sub", "/"))
    items = ListingEntries([("sub", sub)], folder, 9, table, [("being-written.eml", DirNode(None))])

    def attrs(name, child):
        if isinstance(child, MessageRef):
            return {"size": child.meta.size, "when": child.meta.internaldate, "name": name}
        return {"dir": name}

    def row_stat(rows, row):
        return {"size": rows.size_at(row), "when": rows.date_at(row), "name": rows.filename_at(row)}

    slow, fast = DirEntries(items, attrs), DirEntries(items, attrs, row_stat)
    assert len(fast) == len(slow) == 2 + 1 + 3 + 1
    assert [fast[i] for i in range(len(fast))] == [slow[i] for i in range(len(slow))]
    assert fast[-1] == ("being-written.eml", {"dir": "being-written.eml"}, 0) and fast[1] == ".."


def test_rows_added_in_a_batch_below_the_last_uid_are_merged_in_one_rebuild():
    table = MessageTable([meta(uid) for uid in (2, 4, 9)])
    table.add_many([meta(3), meta(10), meta(4, size=7)])
    assert list(table) == [2, 3, 4, 9, 10] and table[4].size == 7 and table[3] == meta(3)
    table.add_many([meta(11), meta(12)])
    assert list(table)[-2:] == [11, 12]


def test_verified_sizes_are_taken_only_for_rows_not_verified():
    old = MessageTable([meta(1, size_verified=False), meta(2, size_verified=False), meta(4, size_verified=False)])
    old.set_size(1, 111, True)
    old.set_size(4, 444, True)
    fresh = MessageTable([meta(1, size_verified=False), meta(2, size_verified=False), meta(3, size=33,
                                                                                        size_verified=True)])
    fresh.take_verified_sizes(old)
    assert (fresh[1].size, fresh[1].size_verified) == (111, True)
    assert (fresh[2].size, fresh[2].size_verified) == (20, False) and fresh[3].size == 33 and 4 not in fresh


def test_listings_compare_by_identity():
    a, b = Listing("INBOX", 1, messages={1: meta(1)}), Listing("INBOX", 1, messages={1: meta(1)})  # type: ignore
    assert a != b and a == a and a.messages == b.messages
