import random

import pytest

from imapfs import names


@pytest.mark.parametrize("component", ["INBOX", "a b", "& Co", "a.b.c", "Été", "日本語", "100%", "a/b", ".", "..",
                                       "%2F", "x%25y", "%", "%2e%2E", "", "%%", "nul\x00x", "bell\x07", "del\x7f",
                                       "c1\x85", "tab\there", "%00", "%26", "%7f", "%41",
                                       "bad" + names.RAW_AMPERSAND + "Zz-"])
def test_folder_component_escaping_is_reversible_and_legal(component):
    escaped = names.escape_component(component)
    assert "/" not in escaped and escaped not in {".", "..", ""}
    assert names.unescape_component(escaped) == component


def test_control_characters_and_raw_ampersands_show_escaped():
    assert names.escape_component("nul\x00x") == "nul%00x"
    assert names.escape_component("ctl\x01\x1f\x7f\x85") == "ctl%01%1F%7F%85"
    assert names.escape_component("bad" + names.RAW_AMPERSAND + "Zz-") == "bad%26Zz-"
    assert names.escape_component("") == "%"
    assert names.escape_component("%") == "%25"
    assert names.escape_component("50% off") == "50% off"
    assert names.escape_component("%41") == "%41"  # not an escape imapfs makes: shown as it is


def test_random_components_round_trip_and_stay_legal():
    rng = random.Random(11)
    alphabet = ["a", "Z", "%", "2", "5", "F", "E", "e", "f", "0", "7", "8", ".", "/", "&", " ", "\x00", "\x01",
                "\x7f", "\x85", "é", "日", names.RAW_AMPERSAND]
    for _ in range(5000):
        component = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        escaped = names.escape_component(component)
        assert escaped and "/" not in escaped and escaped not in {".", ".."}
        assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 or ch == names.RAW_AMPERSAND for ch in escaped)
        assert names.unescape_component(escaped) == component, (component, escaped)


@pytest.mark.parametrize(("wire", "name"), [
    (b"INBOX", "INBOX"), (b"Donn&AOk-es", "Données"), (b"a&-b", "a&b"), (b"&ZeVnLIqe-", "日本語"),
    (b"nul&AAA-x", "nul\x00x"), (b"del&AH8-", "del\x7f"),
    # not valid modified UTF-7: kept as sent, the "&" raw
    (b"bad&Zz-name", "bad\udc26Zz-name"), (b"&Jjo", "\udc26Jjo"), (b"lone&2D0-", "lone\udc262D0-"),
    # valid base64 but not how any name is encoded: a server would read it as something else
    (b"x&AC8-y", "x\udc26AC8-y"), (b"&AGE-", "\udc26AGE-"), (b"&ZeU-&Zyw-", "\udc26ZeU-\udc26Zyw-"),
])
def test_folder_names_from_the_wire_round_trip_exactly(wire, name):
    assert names.decode_folder_name(wire) == name
    assert names.encode_folder_name(name) == wire


def test_folder_names_no_command_could_send_back_are_none():
    assert names.decode_folder_name("café".encode()) is None
    assert names.decode_folder_name(b"a\r\nb") is None


def test_random_wire_names_round_trip():
    rng = random.Random(5)
    alphabet = [b"a", b"&", b"-", b"A", b"G", b"E", b"C", b"8", b",", b"+", b"/", b"Z", b"z", b"2", b"D", b"0"]
    for _ in range(5000):
        wire = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))
        name = names.decode_folder_name(wire)
        assert name is not None and names.encode_folder_name(name) == wire, wire


def test_a_level_holding_the_delimiter_or_empty_is_no_folder_name():
    with pytest.raises(ValueError, match="delimiter"):
        names.parts_to_folder(["a%2Fb"], "/")
    with pytest.raises(ValueError, match="empty"):
        names.parts_to_folder(["x", "%"], "/")
    with pytest.raises(ValueError):
        names.parts_to_folder(["a", "b"], None)
    assert names.parts_to_folder(["a%2Fb"], ".") == "a/b"


def test_folder_parts_round_trip_with_dot_delimiter():
    parts = names.folder_to_parts("Archive.2024/03.x", ".")
    assert parts == ("Archive", "2024%2F03", "x")
    assert names.parts_to_folder(parts, ".") == "Archive.2024/03.x"


def test_plain_names_are_shown_as_they_are():
    assert names.folder_to_parts("Données/Été", "/") == ("Données", "Été")


def test_message_filename_shape():
    name = names.message_filename(4711, 1709649120, "Quarterly report")
    assert name == "2024-03-05_1432_Quarterly-report_4711.eml"
    assert names.uid_from_filename(name) == 4711


@pytest.mark.parametrize("subject", ["/", "..", ".", "a/../b", "\"'$(rm -rf x);|&*?<>`", "x" * 700,
                                     "日本語の件名" * 40, "", "   ", "-.-", "\x00\x01\t\n"])
def test_slug_is_always_a_legal_short_name(subject):
    name = names.message_filename(1, 0, subject)
    assert "/" not in name and "\x00" not in name
    assert len(name.encode()) <= 255
    slug = names.slugify(subject)
    assert slug and not slug.startswith((".", "-"))
    assert len(slug) <= names.MAX_SLUG_CHARS
    for ch in "\"'$;|&*?<>` \t\n":
        assert ch not in slug


def test_slug_keeps_letters_of_any_script():
    assert names.slugify("Привет, мир") == "Привет,-мир"
    assert names.slugify("テスト") == "テスト"
    assert names.slugify("Grüße aus Köln") == "Grüße-aus-Köln"


def test_uid_from_foreign_names():
    assert names.uid_from_filename("notes.txt") is None
    assert names.uid_from_filename("x_12.eml.swp") is None


@pytest.mark.parametrize(("raw", "expected"), [
    (b"=?utf-8?B?w4lsw6lvbm9yZQ==?=", "Éléonore"),
    (b"=?UTF-8?Q?caf=C3=A9_au_lait?=", "café au lait"),
    (b"=?iso-2022-jp?B?GyRCJUYlOSVIGyhC?=", "テスト"),
    (b"=?koi8-r?B?8NLJ18XU?=", "Привет"),
    (b"=?utf-8?q?a?= =?utf-8?q?b?=", "ab"),
    ("Grüße".encode(), "Grüße"),
    ("Grüße".encode("latin-1"), "Grüße"),
    (b"=?x-unknown?Q?abc?=", "abc"),
    (b"=?utf-8?B?!!!notbase64?=", "=?utf-8?B?!!!notbase64?="),
    (b"plain\r\n folded", "plain folded"),
])
def test_decode_header_text(raw, expected):
    assert names.decode_header_text(raw) == expected


def test_header_value_unfolds_and_ignores_case():
    block = b"Message-ID: <a@b>\r\nsubject: first\r\n  second\r\nX: y\r\n"
    assert names.header_value(block, "Subject") == b"first  second"
    assert names.message_id_from_headers(block) == "<a@b>"
    assert names.header_value(block, "Date") is None


def test_ascii_fast_path_names_like_the_general_one():
    import random

    rng = random.Random(5)
    alphabet = "abcXYZ019 -_.,+/\\\"'$()[]{}<>|&;*?!#~`\t"
    for _ in range(3000):
        subject = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        # The same text with one non-ASCII letter appended takes the general path.
        general = names.slugify(subject + "é")
        fast = names.slugify(subject)
        assert general.removesuffix("é").rstrip("-.") == fast.rstrip("-.") or (fast == names.NO_SUBJECT
                                                                              and general in ("é", "-é"))
