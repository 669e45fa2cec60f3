"""A TCP proxy for fault tests: forwards, or swallows traffic like a cut cable.

`TcpProxy(host, port)` listens on 127.0.0.1 at an ephemeral port (`.port`) and
forwards every connection to the target. `blackhole()` makes it read and drop every
byte in both directions without closing anything, so peers see silence, never an
error: writes succeed, reads wait forever. Connections accepted while blackholed
are not connected upstream and get nothing. `refuse()` plays a database server that
stopped: every open connection is reset, and new ones are reset as they arrive.
`heal()` restores forwarding for new connections and closes (with a reset) the
connections that lost bytes, since their streams are broken, as a cable cut long
enough for TCP to give up. `delay(seconds)` plays a slow network or a slow server:
every chunk of bytes, in both directions, is held that long after it arrived before it
is passed on, in order; nothing is lost, and each connection waits only for its own
bytes. `heal()` ends the delay too: bytes still held are passed on at once.

Threads, blocking sockets: one thread accepts; each direction of each connection has a
reader, which never waits for the other side, and a sender, which holds each chunk
until it is due. Nothing here is fast; it does not need to be.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections import deque
from types import TracebackType

_CHUNK = 65536
_CONNECT_TIMEOUT = 5.0


def _reset(sock: socket.socket) -> None:
    """Close with RST rather than FIN: the peer learns at once that the stream is gone."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class _Lane:
    """One direction of one connection: chunks read, each with when it arrived, in order.

    `None` as a chunk is the end of the stream (the reader saw EOF or an error)."""

    def __init__(self) -> None:
        self.ready = threading.Condition()
        self.chunks: deque[tuple[float, bytes | None]] = deque()

    def put(self, data: bytes | None) -> None:
        with self.ready:
            self.chunks.append((time.monotonic(), data))
            self.ready.notify_all()

    def wake(self) -> None:
        with self.ready:
            self.ready.notify_all()


class _Connection:
    """A client socket and, once connected, its upstream socket."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.tainted = False  # lost bytes to a blackhole: unusable after heal
        self.closed = False
        self.lanes: list[_Lane] = []

    def close(self) -> None:
        self.closed = True
        for sock in (self.client, self.upstream):
            if sock is not None:
                _reset(sock)


class TcpProxy:
    """Forward 127.0.0.1:<port> to host:port, with a switch that cuts the cable."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._lock = threading.Lock()
        self._blackholed = False
        self._refusing = False
        self._delay = 0.0
        self._connections: list[_Connection] = []
        self._threads: list[threading.Thread] = []
        self._threads_lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closing = False
        self._spawn(self._accept_loop)

    # -- the switch ---------------------------------------------------------------

    @property
    def blackholed(self) -> bool:
        return self._blackholed

    def blackhole(self) -> None:
        """From now on, drop every byte in both directions; close nothing."""
        with self._lock:
            self._blackholed = True
            for conn in self._connections:
                conn.tainted = True

    @property
    def delayed(self) -> float:
        return self._delay

    def delay(self, seconds: float) -> None:
        """From now on, hold every chunk `seconds` after it arrived (both ways, in order)."""
        if seconds < 0:
            raise ValueError(f"a delay cannot be negative: {seconds}")
        with self._lock:
            self._delay = seconds
            lanes = [lane for conn in self._connections for lane in conn.lanes]
        for lane in lanes:
            lane.wake()

    def refuse(self) -> None:
        """The server is gone: reset every connection now and each new one at once."""
        with self._lock:
            self._refusing = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()

    def heal(self) -> None:
        """Forward again, without delay; connections that lost bytes are reset so their
        peers reconnect."""
        with self._lock:
            self._blackholed = False
            self._refusing = False
            self._delay = 0.0
            broken = [conn for conn in self._connections if conn.tainted]
            self._connections = [conn for conn in self._connections if not conn.tainted]
            lanes = [lane for conn in self._connections for lane in conn.lanes]
        for conn in broken:
            conn.close()
        for lane in lanes:
            lane.wake()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            connections, self._connections = self._connections, []
        _reset(self._listener)
        for conn in connections:
            conn.close()
        with self._threads_lock:
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- the machinery ------------------------------------------------------------

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        with self._threads_lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            conn = _Connection(client)
            with self._lock:
                if self._closing:
                    conn.close()
                    return
                if self._refusing:
                    conn.close()
                    continue
                self._connections.append(conn)
                conn.tainted = self._blackholed
            self._spawn(self._serve, conn)

    def _serve(self, conn: _Connection) -> None:
        if conn.tainted:  # accepted during a blackhole: swallow, never connect upstream
            self._pump(conn, conn.client, None)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=_CONNECT_TIMEOUT)
        except OSError:
            conn.close()
            return
        upstream.settimeout(None)
        up, down = _Lane(), _Lane()
        with self._lock:
            conn.upstream = upstream
            if conn.closed:
                _reset(upstream)
                return
            conn.lanes = [up, down]
        self._spawn(self._send, conn, up, upstream)
        self._spawn(self._send, conn, down, conn.client)
        self._spawn(self._pump, conn, upstream, down)
        self._pump(conn, conn.client, up)

    def _pump(self, conn: _Connection, src: socket.socket, lane: _Lane | None) -> None:
        """Read from src into its lane as fast as bytes come: never waits for the sender."""
        while True:
            try:
                data = src.recv(_CHUNK)
            except OSError:
                data = b""
            if not data:
                break
            if conn.tainted or lane is None:
                continue  # the cut cable: bytes vanish, nobody is told
            lane.put(data)
        if lane is not None:
            lane.put(None)

    def _send(self, conn: _Connection, lane: _Lane, dst: socket.socket) -> None:
        """Pass each chunk of the lane on once it is due (arrival + the delay now in force);
        at the end of the stream, close the connection (unless a blackhole owns it)."""
        while True:
            with lane.ready:
                while True:
                    if conn.closed:
                        return
                    if lane.chunks:
                        arrived, data = lane.chunks[0]
                        wait = arrived + self._delay - time.monotonic()
                        if wait <= 0:
                            lane.chunks.popleft()
                            break
                        lane.ready.wait(timeout=wait)
                    else:
                        lane.ready.wait()
            if data is None:
                break
            if conn.tainted:
                continue  # held back when the cable was cut: lost with the rest
            try:
                dst.sendall(data)
            except OSError:
                break
        if not conn.tainted:
            conn.close()
