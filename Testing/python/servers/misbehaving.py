"""A TCP server on loopback that misbehaves: answers 503, trickles its answer, or never answers (network tests)."""

from __future__ import annotations

import socket
import threading

__all__ = ["FakeServer"]


class FakeServer:
    """A TCP server on 127.0.0.1 that misbehaves in one of three ways.

    ``"503"``: reads each request and answers ``503 Service Unavailable``; ``"trickle"``: reads the request and
    then sends one byte of a valid answer every ``every_s``; ``"silent"``: accepts and never says anything.
    """

    def __init__(self, mode: str, every_s: float = 0.5) -> None:
        self.mode, self.every_s = mode, every_s
        self.requests = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _read_request(self, conn: socket.socket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(ln.split(b":")[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")),
                      None)
        conn.settimeout(0.3)
        try:
            if length is not None:
                while len(body) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    body += chunk
            elif b"chunked" in head.lower():
                while not body.endswith(b"0\r\n\r\n"):
                    body += conn.recv(65536)
        except OSError:
            pass
        conn.settimeout(None)
        self.requests += 1
        return True

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.mode == "silent":
                self._stop.wait()
                return
            while self._read_request(conn):
                if self.mode == "503":
                    conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                                 b"Content-Length: 4\r\n\r\nbusy")
                    continue
                answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
                for i in range(len(answer)):
                    if self._stop.wait(self.every_s):
                        return
                    conn.sendall(answer[i:i + 1])
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        for c in self._conns:
            try:
                c.close()
            except OSError:
                pass
