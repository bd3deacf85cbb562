"""A small threaded TCP proxy on loopback, for fault injection in tests.

Point a client at ``proxy.port`` (or ``proxy.url_for(url)``) instead of the real
service, then switch the mode at any time:

- ``pass_through()``: forward bytes both ways (the default);
- ``delay(seconds)``: forward, sleeping before each chunk;
- ``blackhole()``: accept connections but never forward or answer;
- ``reset()``: accept, then abort with a TCP RST (SO_LINGER 0);
- ``refuse()``: stop listening, so connects are refused.

``close_all()`` cuts the connections that exist. Every thread polls a stop flag, so
``stop()`` returns within a bounded time.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

POLL_SECONDS = 0.05
CHUNK_BYTES = 65536
JOIN_SECONDS = 2.0
MODES = ("pass", "delay", "blackhole", "reset", "refuse")


def target_of(url: str) -> tuple[str, int]:
    """The (host, port) a service URL points at, for a proxy in front of it."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


def abort(sock: socket.socket | None) -> None:
    """Close ``sock`` with an RST instead of a FIN; ignore sockets already gone."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Connection:
    """One accepted client and, unless blackholed, its upstream socket."""

    def __init__(self, client: socket.socket, upstream: socket.socket | None) -> None:
        self.client = client
        self.upstream = upstream
        self.cut = threading.Event()
        self.thread: threading.Thread | None = None

    def sockets(self) -> list[socket.socket]:
        return [s for s in (self.client, self.upstream) if s is not None]

    def peer_of(self, sock: socket.socket) -> socket.socket | None:
        return self.upstream if sock is self.client else self.client

    def close(self) -> None:
        for sock in self.sockets():
            abort(sock)


class TcpProxy:
    """Forward 127.0.0.1:<ephemeral port> to ``target_host:target_port``, with faults on demand."""

    def __init__(self, target_host: str, target_port: int, connect_timeout: float = 5.0) -> None:
        self.target = (target_host, target_port)
        self.connect_timeout = connect_timeout
        self.host = "127.0.0.1"
        self.port = 0
        self._mode = "pass"
        self._delay_seconds = 0.0
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._listener_stop = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        """Listen on an ephemeral loopback port and start accepting."""
        if self._listener is None:
            self._listen()
        return self

    def stop(self) -> None:
        """Stop listening and cut every connection; threads are joined with a bound."""
        self._unlisten()
        self.close_all()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- modes -------------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    def pass_through(self) -> None:
        self._set_mode("pass")

    def delay(self, seconds: float) -> None:
        self._delay_seconds = seconds
        self._set_mode("delay")

    def blackhole(self) -> None:
        self._set_mode("blackhole")

    def reset(self) -> None:
        self._set_mode("reset")

    def refuse(self) -> None:
        self._set_mode("refuse")

    def set_mode(self, mode: str, delay_seconds: float = 0.0) -> None:
        """Switch by name: one of ``MODES``."""
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode {mode!r}; expected one of {MODES}")
        self._delay_seconds = delay_seconds
        self._set_mode(mode)

    def close_all(self) -> None:
        """Cut every existing connection (RST to both sides) and wait for its thread."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.cut.set()
        for connection in connections:
            if connection.thread is not None:
                connection.thread.join(JOIN_SECONDS)

    # -- helpers -----------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def url_for(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's (credentials kept)."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{self.address}" if userinfo else self.address
        return urlunsplit(parts._replace(netloc=netloc))

    @property
    def connection_count(self) -> int:
        with self._lock:
            return len(self._connections)

    # -- internals ---------------------------------------------------------------------------

    def _set_mode(self, mode: str) -> None:
        self._mode = mode
        if mode == "refuse":
            self._unlisten()
        elif self._listener is None and self.port:
            self._listen()

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        listener.settimeout(POLL_SECONDS)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._listener_stop = threading.Event()
        self._accept_thread = threading.Thread(
            target=self._accept_loop,
            args=(listener, self._listener_stop),
            name=f"tcp-proxy-accept-{self.port}",
            daemon=True,
        )
        self._accept_thread.start()

    def _unlisten(self) -> None:
        listener, thread = self._listener, self._accept_thread
        if listener is None:
            return
        self._listener_stop.set()
        if thread is not None:
            thread.join(JOIN_SECONDS)
        listener.close()
        self._listener = None
        self._accept_thread = None

    def _accept_loop(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._admit(client)

    def _admit(self, client: socket.socket) -> None:
        """Apply the current mode to a freshly accepted client."""
        client.settimeout(None)
        mode = self._mode
        if mode in ("reset", "refuse"):
            abort(client)
            return
        upstream = None
        if mode != "blackhole":
            try:
                upstream = socket.create_connection(self.target, timeout=self.connect_timeout)
            except OSError:
                abort(client)
                return
        connection = _Connection(client, upstream)
        connection.thread = threading.Thread(
            target=self._pump, args=(connection,), name="tcp-proxy-pump", daemon=True
        )
        with self._lock:
            self._connections.add(connection)
        connection.thread.start()

    def _pump(self, connection: _Connection) -> None:
        try:
            while not connection.cut.is_set() and self._relay_ready(connection):
                pass
        except OSError:
            pass
        finally:
            connection.close()
            with self._lock:
                self._connections.discard(connection)

    def _relay_ready(self, connection: _Connection) -> bool:
        """Move whatever is readable once; False when the connection is over."""
        readable, _, _ = select.select(connection.sockets(), [], [], POLL_SECONDS)
        for sock in readable:
            data = sock.recv(CHUNK_BYTES)
            if not data or not self._forward(connection, sock, data):
                return False
        return True

    def _forward(self, connection: _Connection, source: socket.socket, data: bytes) -> bool:
        """Deliver ``data`` according to the current mode; False to end the connection."""
        mode = self._mode
        if mode in ("reset", "refuse"):
            return False
        if mode == "blackhole":
            return True
        if mode == "delay" and connection.cut.wait(self._delay_seconds):
            return False
        peer = connection.peer_of(source)
        if peer is not None:
            peer.sendall(data)
        return True
