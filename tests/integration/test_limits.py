"""Connection limits: a Dovecot that allows few connections per user and IP
(mail_max_userip_connections), most of them held by other clients, and
parallel readers through the mount that must get every byte right.

Before the pool learnt to shrink, such a server's "[LIMIT] Maximum number of
connections from user+IP exceeded" reached readers as EIO (issue 11).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import imapclient
import pytest

from tests.integration.helpers import eml_files, message, server_messages, sh, wait_for
from tests.support.dovecot import Dovecot

LIMIT_TEXT = "Maximum number of connections from user+IP exceeded"


@pytest.fixture
def capped_dovecot() -> Iterator[Dovecot]:
    with Dovecot(max_user_connections=4) as server:
        yield server


def hold_connections(server: Dovecot, at_most: int) -> list[imapclient.IMAPClient]:
    """Other clients: log in until `at_most` are held or the server refuses."""
    held = []
    for _ in range(at_most):
        try:
            held.append(server.client())
        except Exception:  # refused for the limit: every free slot is held
            break
    return held


def release(clients: list[imapclient.IMAPClient]) -> None:
    for client in clients:
        with contextlib.suppress(Exception):
            client.logout()


def seed(server: Dovecot, folder: str, count: int) -> None:
    rng = random.Random(11)
    server.create_folder(folder)
    with server.client() as client:
        for number in range(count):
            # 2 KB to 300 KB: the large ones take several 128 KiB range fetches.
            size = rng.choice([2_000, 9_000, 40_000, 140_000, 300_000])
            filler = "".join(rng.choice("abcdefghij klmnop\r\n") for _ in range(size))
            body = f"{'needle' if number % 3 == 0 else 'hay'} {number}\r\n{filler}"
            client.append(folder, message(f"limited {number}", body))


def by_uid(folder: Path) -> dict[int, Path]:
    return {int(p.name.rsplit("_", 1)[1].removesuffix(".eml")): p for p in eml_files(folder)}


def test_parallel_readers_get_every_byte_while_other_clients_hold_most_connections(capped_dovecot, mount):
    folder = "limited"
    seed(capped_dovecot, folder, 36)
    others = hold_connections(capped_dovecot, 2)  # 2 of the 4 the server allows
    assert len(others) == 2
    try:
        expected = {uid: data["body"] for uid, data in server_messages(others[0], folder).items()}
        m = mount("connections=4", url=capped_dovecot.url, ca_file=capped_dovecot.ca_file)  # wants 4 + 1 for IDLE
        files = by_uid(m.path / folder)
        assert sorted(files) == sorted(expected)

        rng = random.Random(5)
        orders = [rng.sample(sorted(files), len(files)) for _ in range(6)]
        readers = [subprocess.Popen(["cat", *(str(files[uid]) for uid in order)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE) for order in orders]
        grep = subprocess.Popen(["grep", "-rl", "needle", str(m.path / folder)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        for order, reader in zip(orders, readers, strict=True):
            out, err = reader.communicate(timeout=120)
            assert reader.returncode == 0 and err == b"", err.decode(errors="replace")
            wanted = b"".join(expected[uid] for uid in order)
            assert hashlib.sha256(out).hexdigest() == hashlib.sha256(wanted).hexdigest()
        out, err = grep.communicate(timeout=120)
        assert grep.returncode == 0 and err == b"", err.decode(errors="replace")
        found = {int(Path(line).name.rsplit("_", 1)[1].removesuffix(".eml")) for line in out.decode().split()}
        assert found == {uid for uid, raw in expected.items() if b"needle" in raw}

        # The limit was really reached (else this test shows nothing), and the
        # other clients kept their connections.
        assert LIMIT_TEXT in capped_dovecot.log_text()
        for client in others:
            client.noop()
    finally:
        release(others)


def test_with_no_connection_to_be_had_reads_fail_in_time_and_recover(capped_dovecot, mount):
    folder = "starved"
    seed(capped_dovecot, folder, 4)
    # idle=no: no IDLE connection of imapfs's own that could take a slot back after the kick.
    m = mount("connections=2", "retry_for=3", "listing_ttl=3600", "idle=no", url=capped_dovecot.url,
              ca_file=capped_dovecot.ca_file)
    files = list(by_uid(m.path / folder).values())  # listed (and cached) while connections were free
    assert len(files) == 4
    capped_dovecot.kick()  # drops imapfs's connections...
    assert wait_for(lambda: capped_dovecot.connections() == 0, timeout=10), "kicked connections still counted"
    others = hold_connections(capped_dovecot, 4)  # ...and other clients take every slot
    try:
        assert len(others) == 4 and capped_dovecot.connections() == 4
        started = time.monotonic()
        done = sh("cat", files[0], check=False)
        took = time.monotonic() - started
        assert done.returncode != 0 and b"Input/output error" in done.stderr
        assert took < 3 + 20 + 5, f"took {took:.1f} s"  # retry_for, one command timeout, slack
        assert "no more connections allowed" in m.log()
    finally:
        release(others)
    # Connections to be had again: reads work again, without a remount.
    deadline = time.monotonic() + 30
    while True:
        done = sh("cat", files[1], check=False)
        if done.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert done.returncode == 0, done.stderr
    with capped_dovecot.client() as client:
        assert done.stdout in [data["body"] for data in server_messages(client, folder).values()]
