"""What the test servers beside Dovecot share (imap4d.py, cyrus.py): one
master process of our own on 127.0.0.1 with implicit TLS, a certificate of
the test CA, one user; started, awaited until it greets over verified TLS,
stopped with every process of its session.

A subclass sets ``error`` (its exception), ``name`` (for messages),
``base_dir`` (and ``_owns_base_dir``: deleted by close), ``log_file``,
``port``, ``ca_file``, ``user``, ``password``, and its ``start`` prepares
what the master needs, then ``_launch``es it.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import imapclient
from imapclient.exceptions import LoginError

from tests.support.dovecot import _stop_session


class LoopbackServer:
    host: str = "127.0.0.1"
    error: type[RuntimeError] = RuntimeError
    name: str = "the server"
    base_dir: Path
    _owns_base_dir: bool
    log_file: Path
    port: int
    ca_file: Path
    user: str
    password: str
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _stop_session(proc.pid, proc)

    def close(self) -> None:
        """Stop, and delete the base dir if this object made it."""
        self.stop()
        if self._owns_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def client(self, timeout: float = 30.0) -> imapclient.IMAPClient:
        """A new client logged in over verified TLS; the caller logs out."""
        client = imapclient.IMAPClient(self.host, port=self.port, ssl=True,
                                       ssl_context=ssl.create_default_context(cafile=str(self.ca_file)),
                                       timeout=timeout)
        try:
            client.login(self.user, self.password)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                client.shutdown()
            if isinstance(exc, LoginError):
                # Our own credentials: a refusal is a server problem, and its reason is in the log.
                raise self.error(f"login as {self.user} failed: {exc}\n{self.log_text()[-3000:]}") from exc
            raise
        return client

    def _launch(self, command: list[str], timeout: float, env: dict[str, str] | None = None) -> None:
        """Start the master (output to the log, a session of its own) and wait for its greeting."""
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          env=env, start_new_session=True)
        try:
            self._wait_until_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _given_up(self) -> str | None:
        """Why the master, still running, will never greet (from its log); None while it may."""
        return None

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        context = ssl.create_default_context(cafile=str(self.ca_file))
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise self.error(f"{self.name} exited with status {self._proc.returncode}\n{self.log_text()[-3000:]}")
            reason = self._given_up()
            if reason is not None:
                raise self.error(f"{reason}\n{self.log_text()[-3000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=2.0) as raw, \
                        context.wrap_socket(raw, server_hostname=self.host) as sock:
                    if sock.recv(200).startswith(b"* OK"):
                        return
            except OSError as exc:
                last = exc
            time.sleep(0.1)
        raise self.error(f"{self.name} did not greet on {self.host}:{self.port} within {timeout:.0f} s "
                         f"({last})\n{self.log_text()[-3000:]}")
