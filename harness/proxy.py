"""A loopback TCP proxy that can stall, for fault tests: a network that stops forwarding.

    proxy = StallingProxy(upstream_port)        # listens on 127.0.0.1:<proxy.port>
    proxy.stall()                               # from now on nothing is forwarded
    proxy.stall_after(to_client=4096)           # forward 4 KiB more towards the client, then stall
    proxy.resume()                              # cut every stalled connection; new ones flow again
    proxy.hold(b"orders:18")                    # delay one write: see below
    proxy.release()                             # deliver it, late
    proxy.retarget(other_port)                  # an endpoint that now names another server
    proxy.close()

While stalled, connections stay open and bytes are held, as when a peer or a
link stops answering without resetting anything: only the client's timeouts
can end the wait. `resume()` ends the partition the way it usually ends in
practice for a client that gave up: the stalled connections are closed, and
what they held is never delivered.

`hold(pattern)` delays a write instead of losing it: the next chunk a client
sends that contains `pattern`, and whatever that connection sends after it,
stays in the proxy; other connections flow. A client that times out and closes
the connection does not take the held bytes back: TCP delivers what a closed
socket had queued, then its FIN. So the server's side stays open until
`release()` sends the held bytes, closes the write side and waits until the
server has read to the end (it closes its side), by which time it has run every
held command: after whatever the client wrote since, on newer connections.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from dataclasses import dataclass, field

TO_SERVER, TO_CLIENT = "to_server", "to_client"


@dataclass
class _Link:
    client: socket.socket
    upstream: socket.socket
    stalled: bool = False  # held bytes at some point: cut on resume
    closed: threading.Event = field(default_factory=threading.Event)
    held: bytearray | None = None  # a delayed write and what followed it (hold), None when flowing
    client_gone: bool = False  # the client closed while bytes were held: replies go nowhere
    tail: bytes = b""  # the end of the last chunk forwarded, to find a pattern cut across two

    def close(self) -> None:
        self.closed.set()
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class StallingProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Condition()
        self._flowing = True
        self._budget: dict[str, int | None] = {TO_SERVER: None, TO_CLIENT: None}
        self._links: list[_Link] = []
        self._closed = False
        self._hold_pattern: bytes | None = None
        self.held = threading.Event()  # set once a chunk is held (see hold)
        self.abandoned = threading.Event()  # set once the client of held bytes closes its connection
        self.forwarded = {TO_SERVER: 0, TO_CLIENT: 0}
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    # --- control -----------------------------------------------------------
    def stall(self) -> None:
        with self._lock:
            self._flowing = False

    def stall_after(self, to_server: int | None = None, to_client: int | None = None) -> None:
        """Forward this many more bytes in a direction (None: unlimited), then stall everything."""
        with self._lock:
            self._budget = {TO_SERVER: to_server, TO_CLIENT: to_client}

    def resume(self) -> None:
        with self._lock:
            stalled = [link for link in self._links if link.stalled]
            self._links = [link for link in self._links if not link.stalled]
            self._flowing = True
            self._budget = {TO_SERVER: None, TO_CLIENT: None}
            self._lock.notify_all()
        for link in stalled:
            link.close()

    def hold(self, pattern: bytes) -> None:
        """Delay the next chunk towards the server that contains `pattern` (and what its
        connection sends after it) until `release()`; every other connection flows."""
        if not pattern:
            raise ValueError("hold needs a pattern to look for")
        with self._lock:
            self._hold_pattern = pattern
            self.held.clear()
            self.abandoned.clear()

    def release(self, timeout: float = 30.0) -> int:
        """Deliver the held bytes to the server, in order; where the client has left meanwhile,
        end the connection after them, as TCP does, and wait until the server has read them all
        (and so run every command in them). Returns the number of bytes delivered."""
        delivered = 0
        with self._lock:
            self._hold_pattern = None
            holding = [link for link in self._links if link.held is not None]
            for link in holding:
                data, link.held = bytes(link.held or b""), None
                with contextlib.suppress(OSError):
                    link.upstream.sendall(data)
                    delivered += len(data)
                if link.client_gone:
                    with contextlib.suppress(OSError):
                        link.upstream.shutdown(socket.SHUT_WR)
        for link in holding:
            if link.client_gone and not link.closed.wait(timeout):
                raise TimeoutError(f"the server did not read the {delivered} released bytes to the end in {timeout}s")
        return delivered

    def retarget(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        """New connections go to another server, as when an endpoint's DNS name moves to a promoted
        replica; the current connections are cut (their server is gone)."""
        with self._lock:
            self.upstream = (upstream_host, upstream_port)
            links, self._links = self._links, []
        for link in links:
            link.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            links, self._links = self._links, []
            self._lock.notify_all()
        with contextlib.suppress(OSError):
            self._listener.close()
        for link in links:
            link.close()

    # --- forwarding ----------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            link = _Link(client, upstream)
            with self._lock:
                self._links.append(link)
            for src, dst, direction in ((client, upstream, TO_SERVER), (upstream, client, TO_CLIENT)):
                threading.Thread(target=self._pump, args=(link, src, dst, direction), daemon=True).start()

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while not link.closed.is_set():
                ready, _, _ = select.select([src], [], [], 0.05)
                if not ready:
                    continue
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    if direction == TO_SERVER and self._client_left_holding(link):
                        return  # the server's side stays open for the held bytes
                    break
                if direction == TO_SERVER and self._held_back(link, data):
                    continue
                if direction == TO_CLIENT and link.client_gone:
                    continue  # replies to the released bytes: their client has left
                while data and not link.closed.is_set():
                    chunk = self._allowance(link, direction, len(data))
                    if chunk:
                        dst.sendall(data[:chunk])
                        data = data[chunk:]
        except OSError:
            pass
        link.close()

    def _held_back(self, link: _Link, data: bytes) -> bool:
        """Whether this chunk towards the server waits for release (see hold)."""
        with self._lock:
            if link.held is not None:
                link.held += data  # after a held write: TCP keeps the order
                return True
            pattern = self._hold_pattern
            if pattern is None:
                return False
            if pattern in link.tail + data:
                link.held = bytearray(data)
                self._hold_pattern = None
                self.held.set()
                return True
            link.tail = (link.tail + data)[-len(pattern) :]
            return False

    def _client_left_holding(self, link: _Link) -> bool:
        with self._lock:
            if link.held is None:
                return False
            link.client_gone = True
            self.abandoned.set()
        with contextlib.suppress(OSError):
            link.client.close()
        return True

    def _allowance(self, link: _Link, direction: str, wanted: int) -> int:
        """How many of `wanted` bytes may go now; waits while stalled (0 when the link closes)."""
        with self._lock:
            while True:
                if self._closed or link.closed.is_set():
                    return 0
                budget = self._budget[direction]
                if self._flowing and budget != 0:
                    allowed = wanted if budget is None else min(wanted, budget)
                    if budget is not None:
                        self._budget[direction] = budget - allowed
                    self.forwarded[direction] += allowed
                    return allowed
                if budget == 0:
                    self._flowing = False  # the budget ran out: the whole link stalls
                link.stalled = True
                self._lock.wait(0.05)
