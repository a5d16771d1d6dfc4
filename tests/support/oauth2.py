"""A tiny OAuth2 token introspection endpoint (RFC 7662) for the test Dovecot.

Dovecot's oauth2 passdb, with ``introspection_mode = post``, POSTs
``token=<access token>`` to ``introspection_url`` on every login and accepts
the login only if the JSON answer has ``"active": true`` and a ``username``
equal to the user logging in. This server decides that answer, so a test can
issue tokens, expire one in the middle of a mount, and count how often each
token was presented (``seen``).

It runs in a thread of the test process on 127.0.0.1 (plain HTTP: only
Dovecot's auth process, on loopback, talks to it).
"""

from __future__ import annotations

import collections
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs


class IntrospectionServer:
    """Tokens -> users; ``url`` is what Dovecot's introspection_url points at."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _active and seen
        self._active: dict[str, str] = {}
        #: token -> how many introspection requests presented it
        self.seen: collections.Counter[str] = collections.Counter()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode("ascii", "replace"))
                token = (form.get("token") or [""])[0]
                answer = owner._answer(token)
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: the tests look at `seen`, not at an access log

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/introspect"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="introspection", daemon=True)
        self._thread.start()

    def _answer(self, token: str) -> dict[str, object]:
        with self._lock:
            self.seen[token] += 1
            user = self._active.get(token)
        if user is None:
            return {"active": False}
        return {"active": True, "username": user, "scope": "mail"}

    def issue(self, token: str, user: str) -> None:
        """From now on `token` is active and names `user`."""
        with self._lock:
            self._active[token] = user

    def expire(self, token: str) -> None:
        """From now on `token` is refused (as when its lifetime is over)."""
        with self._lock:
            self._active.pop(token, None)

    def times_seen(self, token: str) -> int:
        with self._lock:
            return self.seen[token]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> IntrospectionServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
