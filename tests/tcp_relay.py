"""A TCP relay in front of a real local server that a test can take down, as a network partition
or a server restart would: while ``down`` every new connection is reset and the open ones are cut.

``trip_after(marker, count)`` takes it down by itself once ``count`` client requests containing
``marker`` went through (e.g. the fifth film read from S3): "the endpoint went away mid-job"
at a reproducible point, without timing guesses.
"""

from __future__ import annotations

import socket
import threading


class TcpRelay:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target_port``."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.down = False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._closed = False
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._marker: bytes | None = None
        self._trip_at = 0
        self.requests_seen = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def trip_after(self, marker: bytes, count: int) -> None:
        """Go down once ``count`` client→server chunks containing ``marker`` have been forwarded."""
        with self._lock:
            self._marker, self._trip_at, self.requests_seen = marker, count, 0

    def take_down(self) -> None:
        """Reset new connections and cut every open one."""
        with self._lock:
            self.down = True
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            _reset(sock)

    def bring_up(self) -> None:
        with self._lock:
            self.down, self._marker = False, None

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down:
                _reset(client)  # RST: the endpoint is unreachable
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if from_client and self._counts(data):
                    self.take_down()
                    return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                self._open.difference_update((source, sink))

    def _counts(self, data: bytes) -> bool:
        """Count a request with the marker; True when this one trips the relay (it is not forwarded)."""
        with self._lock:
            if self._marker is None or self._marker not in data:
                return False
            self.requests_seen += 1
            return self.requests_seen >= self._trip_at

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        self.take_down()


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    except OSError:
        pass
