"""A loopback TCP proxy that can stall, for fault tests: a network that stops forwarding.

    proxy = StallingProxy(upstream_port)        # listens on 127.0.0.1:<proxy.port>
    proxy.stall()                               # from now on nothing is forwarded
    proxy.stall_after(to_client=4096)           # forward 4 KiB more towards the client, then stall
    proxy.resume()                              # cut every stalled connection; new ones flow again
    proxy.close()

While stalled, connections stay open and bytes are held, as when a peer or a
link stops answering without resetting anything: only the client's timeouts
can end the wait. `resume()` ends the partition the way it usually ends in
practice for a client that gave up: the stalled connections are closed, and
what they held is never delivered.
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
                data = src.recv(65536)
                if not data:
                    break
                while data and not link.closed.is_set():
                    chunk = self._allowance(link, direction, len(data))
                    if chunk:
                        dst.sendall(data[:chunk])
                        data = data[chunk:]
        except OSError:
            pass
        link.close()

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
