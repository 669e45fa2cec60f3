"""A TCP proxy for fault tests: forwards, or swallows traffic like a cut cable.

`TcpProxy(host, port)` listens on 127.0.0.1 at an ephemeral port (`.port`) and
forwards every connection to the target. `blackhole()` makes it read and drop every
byte in both directions without closing anything, so peers see silence, never an
error: writes succeed, reads wait forever. Connections accepted while blackholed
are not connected upstream and get nothing. `heal()` restores forwarding for new
connections and closes (with a reset) the connections that lost bytes, since
their streams are broken, as a cable cut long enough for TCP to give up.

Threads, blocking sockets: one thread accepts, two pump each connection. Nothing
here is fast; it does not need to be.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
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


class _Connection:
    """A client socket and, once connected, its upstream socket."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.tainted = False  # lost bytes to a blackhole: unusable after heal
        self.closed = False

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

    def heal(self) -> None:
        """Forward again; connections that lost bytes are reset so their peers reconnect."""
        with self._lock:
            self._blackholed = False
            broken = [conn for conn in self._connections if conn.tainted]
            self._connections = [conn for conn in self._connections if not conn.tainted]
        for conn in broken:
            conn.close()

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
        with self._lock:
            conn.upstream = upstream
            if conn.closed:
                _reset(upstream)
                return
        self._spawn(self._pump, conn, upstream, conn.client)
        self._pump(conn, conn.client, upstream)

    def _pump(self, conn: _Connection, src: socket.socket, dst: socket.socket | None) -> None:
        while True:
            try:
                data = src.recv(_CHUNK)
            except OSError:
                data = b""
            if not data:
                break
            if conn.tainted or dst is None:
                continue  # the cut cable: bytes vanish, nobody is told
            try:
                dst.sendall(data)
            except OSError:
                break
        if not conn.tainted:
            conn.close()
