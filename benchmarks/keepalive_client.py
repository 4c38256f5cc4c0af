"""A lean HTTP/1.1 load-generator client: one keep-alive socket, the request's bytes built once.

The load generator shares the machine's cores with the service it measures. ``requests`` builds
the multipart body, the headers and a urllib3 connection lookup on every call — about a
millisecond of CPU per query on a 2-core machine, CPU the service then does not get, and time that
lands in every measured latency. A benchmark client should cost as little as ``wrk`` or ``hey``
do; this one sends the same pre-encoded request over one persistent connection and reads the
answer with a minimal parser (status line, ``Content-Length`` or chunked body).

Every answer is still checked by the caller (status 200, the JSON's ``results`` count); a broken
connection is reported as an error and reopened on the next call.
"""

from __future__ import annotations

import socket
import uuid
from urllib.parse import urlsplit


def multipart_body(files: dict[str, tuple[str, bytes, str]], fields: dict[str, str]) -> tuple[bytes, str]:
    """``multipart/form-data`` bytes for ``files`` (name → (filename, bytes, content type)) and
    ``fields`` (name → text), and the ``Content-Type`` header that names their boundary."""
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data, content_type) in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class HttpError(Exception):
    """The connection broke or the answer was not HTTP/1.1 this client can read."""


class KeepAliveClient:
    """POSTs one fixed request to ``url`` over a persistent connection; :meth:`call` → (status, body)."""

    def __init__(self, url: str, body: bytes, headers: dict[str, str], timeout: float = 60.0):
        parts = urlsplit(url)
        self.address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.timeout = timeout
        head = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        self.request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        self.sock: socket.socket | None = None
        self.buffer = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buffer = None, b""

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.buffer = sock, b""
        return sock

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise HttpError("the server closed the connection")
        self.buffer += chunk

    def _read_until(self, marker: bytes) -> bytes:
        while (at := self.buffer.find(marker)) < 0:
            self._fill()
        line, self.buffer = self.buffer[:at], self.buffer[at + len(marker) :]
        return line

    def _read_exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def call(self) -> tuple[int, bytes]:
        """Send the request, read the whole answer: (status code, body). Raises :class:`HttpError`
        or ``OSError`` (the connection is closed then, and the next call reopens it)."""
        try:
            sock = self.sock or self._connect()
            sock.sendall(self.request)
            head = self._read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
            version, _, rest = head[0].partition(" ")
            if not version.startswith("HTTP/1."):
                raise HttpError(f"not an HTTP/1 status line: {head[0]!r}")
            status = int(rest[:3])
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "content-length" in headers:
                body = self._read_exactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                pieces = []
                while size := int(self._read_until(b"\r\n").split(b";")[0], 16):
                    pieces.append(self._read_exactly(size))
                    self._read_exactly(2)
                self._read_until(b"\r\n")  # the empty trailer
                body = b"".join(pieces)
            else:
                raise HttpError("an answer with neither Content-Length nor chunked encoding")
            if headers.get("connection", "").lower() == "close":
                self.close()
            return status, body
        except BaseException:
            self.close()
            raise
