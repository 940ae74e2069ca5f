"""A TCP relay on 127.0.0.1 in front of a real server, that a test can disturb.

`stall()`: the connections stay open but nothing passes either way, as when a network
partition cuts one process off from Redis while the rest of the fleet still reaches it.
`drop_reply_to(marker)`: the next request carrying `marker` (a script's SHA1, say) reaches
Redis and runs, and its reply is lost on the way back, as when a timeout or a dying
connection eats it: the client sees its connection closed (or, `hang=True`, nothing at all
until its socket timeout) and redis-py sends the call again on a new connection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import select
import socket
import threading


@dataclasses.dataclass
class _Link:
    """One client connection and its upstream one."""

    client: socket.socket
    upstream: socket.socket
    losing_reply: bool = False
    hang: bool = False
    counted: bool = False


class StallableRelay:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._armed: tuple[bytes, bool] | None = None
        self.dropped = 0
        """Replies lost so far."""
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def drop_reply_to(self, marker: bytes, *, hang: bool = False) -> None:
        """Lose the reply to the next request that contains `marker` (once)."""
        with self._lock:
            self._armed = (marker, hang)

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        with self._lock:
            for sock in [self._listener, *self._sockets]:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            with self._lock:
                self._sockets += [client, upstream]
            link = _Link(client, upstream)
            threading.Thread(target=self._pump, args=(link, client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(link, upstream, client), daemon=True).start()

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket) -> None:
        while not self._closed.is_set():
            self._flowing.wait()
            try:
                readable, _, _ = select.select([src], [], [], 0.05)
                if not readable or not self._flowing.is_set():
                    continue  # a stall that began meanwhile holds this data back too
                data = src.recv(65536)
                if not data:
                    break
                if src is link.client:
                    self._watch_request(link, data)  # before it leaves: its reply cannot overtake
                elif link.losing_reply:
                    # Redis ran it and answered: the answer goes nowhere, and the link dies (or
                    # stays silent until the client gives up on it).
                    with self._lock:
                        self.dropped += 0 if link.counted else 1
                    link.counted = True
                    if link.hang:
                        continue
                    break
                dst.sendall(data)
            except (OSError, ValueError):  # ValueError: closed by close() meanwhile
                break
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _watch_request(self, link: _Link, data: bytes) -> None:
        with self._lock:
            if self._armed is not None and self._armed[0] in data:
                link.losing_reply, link.hang = True, self._armed[1]
                self._armed = None
