"""Proxies in front of the test Dovecot: one that misreports RFC822.SIZE,
one that adds network latency.

SizeLyingProxy:

Some servers report an RFC822.SIZE that differs from the bytes BODY[]
returns; Dovecot never does. This proxy makes it do so for tests: it ends
the client's TLS with the test server's own certificate (so imapfs verifies
it against the test CA as usual), speaks TLS to Dovecot, and rewrites every
``RFC822.SIZE n`` the server sends to ``n - understate``. Everything else
passes through unchanged. Server data is forwarded in whole lines, so a
size is never split across two reads; message bodies must not contain the
text ``RFC822.SIZE``.
"""

from __future__ import annotations

import queue
import re
import socket
import ssl
import threading
import time
from pathlib import Path

_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")


class TlsRelay:
    """What the TLS-terminating relays share: a listener on a free loopback
    port, the client's TLS ended with the test server's own certificate (so
    imapfs verifies it against the test CA as usual), TLS spoken to Dovecot,
    and ``relay(client, upstream)`` run for each connection; ``close()``
    ends every connection."""

    def __init__(self, upstream_port: int, tls_dir: Path, ca_file: Path) -> None:
        self.upstream_port = upstream_port
        self._server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_context.load_cert_chain(tls_dir / "server.pem", tls_dir / "server.key")
        self._client_context = ssl.create_default_context(cafile=str(ca_file))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._lock = threading.Lock()  # guards _sockets, and what subclasses say
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept_loop, name=type(self).__name__, daemon=True).start()

    def url(self, user: str) -> str:
        return f"imaps://{user}@127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _close(sock)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            client = self._server_context.wrap_socket(raw, server_side=True)
            upstream = self._client_context.wrap_socket(
                socket.create_connection(("127.0.0.1", self.upstream_port)), server_hostname="127.0.0.1")
        except OSError:
            raw.close()
            return
        with self._lock:
            self._sockets += [client, upstream]
        self.relay(client, upstream)

    def relay(self, client: ssl.SSLSocket, upstream: ssl.SSLSocket) -> None:
        raise NotImplementedError


class SizeLyingProxy(TlsRelay):
    def __init__(self, upstream_port: int, tls_dir: Path, ca_file: Path, understate: int) -> None:
        self.understate = understate
        super().__init__(upstream_port, tls_dir, ca_file)

    def relay(self, client: ssl.SSLSocket, upstream: ssl.SSLSocket) -> None:
        threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
        self._pump(upstream, client, True)

    def _pump(self, source: socket.socket, target: socket.socket, rewrite: bool) -> None:
        pending = b""
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if not rewrite:
                    target.sendall(data)
                    continue
                pending += data
                cut = pending.rfind(b"\r\n") + 2
                if cut < 2:
                    continue
                complete, pending = pending[:cut], pending[cut:]
                target.sendall(_SIZE.sub(self._lie, complete))
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.close()
                except OSError:
                    pass

    def _lie(self, match: re.Match[bytes]) -> bytes:
        return b"RFC822.SIZE %d" % max(0, int(match.group(1)) - self.understate)


class DelayProxy:
    """A plain TCP relay to ``upstream_port`` that holds every chunk ``one_way_ms``
    before passing it on, in both directions: a loopback server that behaves,
    for round trips, like one across a network (RTT = 2 x one_way_ms). TLS
    passes through untouched, end to end."""

    def __init__(self, upstream_port: int, one_way_ms: float) -> None:
        self.upstream_port = upstream_port
        self.delay = one_way_ms / 1000
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._accept_loop, name="delay-proxy", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                if self._closed.is_set():
                    return
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._relay, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._relay, args=(upstream, client), daemon=True).start()

    def _relay(self, source: socket.socket, target: socket.socket) -> None:
        held: queue.Queue[tuple[float, bytes]] = queue.Queue()
        sender = threading.Thread(target=self._send_when_due, args=(held, target), daemon=True)
        sender.start()
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            held.put((time.monotonic() + self.delay, data))
            if not data:
                return

    @staticmethod
    def _send_when_due(held: queue.Queue[tuple[float, bytes]], target: socket.socket) -> None:
        while True:
            due, data = held.get()
            if not data:
                break
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            try:
                target.sendall(data)
            except OSError:
                break
        try:
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass


_LITERAL_AT_END = re.compile(rb"\{(\d+)\+?\}\r\n\Z")


class ProxyConnection:
    """One client's connection through an ImapProxy: its two sockets and
    whatever a rewriting hook wants to remember about it (``state``)."""

    def __init__(self, client: ssl.SSLSocket, upstream: ssl.SSLSocket) -> None:
        self.client = client
        self.upstream = upstream
        self.state: dict[str, object] = {}

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass


class ImapProxy(TlsRelay):
    """A TLS man in the middle in front of the test Dovecot that reads IMAP
    as lines and literals, so tests can make the server say what Dovecot
    never would. Like SizeLyingProxy it ends the client's TLS with the test
    server's certificate. Hooks, meant to be overridden:

    - ``from_server(conn, line, literal)``: the bytes to send the client for
      one server line (ending in CRLF) and the literal it announces (or
      None); an iterable, so that a huge answer can be made up in pieces.
    - ``from_client(conn, line)``: the line to send the server for one
      client line, or None to drop the connection instead. Literals the
      client sends pass unchanged.
    """

    def __init__(self, upstream_port: int, tls_dir: Path, ca_file: Path) -> None:
        self.connections: list[ProxyConnection] = []  # guarded by _lock
        super().__init__(upstream_port, tls_dir, ca_file)

    def from_server(self, conn: ProxyConnection, line: bytes, literal: bytes | None):
        yield line
        if literal is not None:
            yield literal

    def from_client(self, conn: ProxyConnection, line: bytes) -> bytes | None:
        return line

    def close(self) -> None:
        with self._lock:
            connections, self.connections = self.connections, []
        super().close()
        for conn in connections:
            conn.close()

    def relay(self, client: ssl.SSLSocket, upstream: ssl.SSLSocket) -> None:
        conn = ProxyConnection(client, upstream)
        with self._lock:
            self.connections.append(conn)
        threading.Thread(target=self._from_client_loop, args=(conn,), daemon=True).start()
        try:
            reader = upstream.makefile("rb")
            while True:
                line = reader.readline()
                if not line:
                    break
                literal = None
                match = _LITERAL_AT_END.search(line)
                if match:
                    literal = reader.read(int(match.group(1)))
                for piece in self.from_server(conn, line, literal):
                    client.sendall(piece)
        except (OSError, ValueError):
            pass
        finally:
            conn.close()

    def _from_client_loop(self, conn: ProxyConnection) -> None:
        try:
            reader = conn.client.makefile("rb")
            while True:
                line = reader.readline()
                if not line:
                    break
                rewritten = self.from_client(conn, line)
                if rewritten is None:
                    break
                conn.upstream.sendall(rewritten)
                match = _LITERAL_AT_END.search(line)
                left = int(match.group(1)) if match else 0
                while left:
                    piece = reader.read(min(left, 65536))
                    if not piece:
                        return
                    conn.upstream.sendall(piece)
                    left -= len(piece)
        except (OSError, ValueError):
            pass
        finally:
            conn.close()


class AppendRelay(TlsRelay):
    """A TLS relay to the test Dovecot that misbehaves around APPEND, as a slow
    or broken network or server does. Like SizeLyingProxy it ends the
    client's TLS with the test server's certificate and speaks TLS upstream,
    so it sees the IMAP stream in the clear.

    - ``hold_seconds``: the CRLF that completes an APPEND command (the bytes
      right after its literal) is held back that long before it goes on to
      the server, which then stores the message and answers; a client whose
      timeout is shorter gives up first. The CRLF is delivered even if the
      client has gone meanwhile, and the upstream connection is kept until
      the server has answered: a server that stores an APPEND after the
      client stopped waiting. ``None``: never delivered (the server never
      completes the command).
    - ``cut_after``: the connection is cut (both sides closed) once that many
      bytes of an APPEND's literal have gone through.
    Each applies to the first ``times`` APPENDs only; the rest pass untouched.
    ``appends`` counts the APPEND commands seen, ``completed`` those whose
    final CRLF reached the server.
    """

    _LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")

    def __init__(self, upstream_port: int, tls_dir: Path, ca_file: Path, *, hold_seconds: float | None = 0.0,
                 cut_after: int | None = None, times: int = 1) -> None:
        self.hold_seconds = hold_seconds
        self.cut_after = cut_after
        self.times = times
        self.appends = 0  # guarded by _lock, as is completed
        self.completed = 0
        super().__init__(upstream_port, tls_dir, ca_file)

    def relay(self, client: ssl.SSLSocket, upstream: ssl.SSLSocket) -> None:
        answered = threading.Event()  # set at each tagged answer from the server
        threading.Thread(target=self._downstream, args=(upstream, client, answered), daemon=True).start()
        self._upstream(client, upstream, answered)

    def _downstream(self, upstream: socket.socket, client: socket.socket, answered: threading.Event) -> None:
        """Server to client, line by line; keeps reading the server when the client has gone."""
        client_gone = False
        pending = b""
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                pending += data
                *lines, pending = pending.split(b"\r\n")
                if any(line[:1] not in (b"*", b"+", b"") for line in lines):
                    answered.set()
                if not client_gone:
                    try:
                        client.sendall(data)
                    except OSError:
                        client_gone = True
        except OSError:
            pass
        finally:
            _close(client)

    def _upstream(self, client: socket.socket, upstream: socket.socket, answered: threading.Event) -> None:
        """Client to server, watching for APPEND literals."""
        line = b""
        literal_left = 0
        in_append = False  # the literal being passed is an APPEND's
        misbehave = False  # ... and one of the first `times`
        passed = 0  # literal bytes of this APPEND passed on
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                position = 0
                while position < len(data):
                    if literal_left:
                        take = min(literal_left, len(data) - position)
                        if misbehave and self.cut_after is not None and passed + take >= self.cut_after:
                            upstream.sendall(data[position:position + self.cut_after - passed])
                            return  # the cut: finally closes both sides
                        upstream.sendall(data[position:position + take])
                        passed += take
                        literal_left -= take
                        position += take
                        continue
                    if in_append and line == b"" and data[position:position + 2] == b"\r\n":
                        position += 2
                        in_append = False
                        if misbehave:
                            if self.hold_seconds is None:
                                continue  # never delivered
                            answered.clear()
                            time.sleep(self.hold_seconds)
                        upstream.sendall(b"\r\n")
                        with self._lock:
                            self.completed += 1
                        if misbehave:
                            answered.wait(10)  # the server has stored it, whoever still listens
                        continue
                    end = data.find(b"\n", position)
                    end = len(data) if end < 0 else end + 1
                    upstream.sendall(data[position:end])
                    line += data[position:end]
                    position = end
                    if not line.endswith(b"\n"):
                        continue
                    literal = self._LITERAL.search(line)
                    if literal:
                        literal_left = int(literal.group(1))
                        in_append = b" APPEND " in line.upper()
                        if in_append:
                            with self._lock:
                                self.appends += 1
                                misbehave = self.appends <= self.times
                            passed = 0
                    line = b""
        except OSError:
            pass
        finally:
            _close(client)
            _close(upstream)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
