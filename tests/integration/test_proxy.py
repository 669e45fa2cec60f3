"""The fault tests' TCP proxy: it forwards, it swallows like a cut cable, it heals."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.proxy import TcpProxy


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A tiny echo server on 127.0.0.1 that sends back every byte it gets."""
    server = socket.create_server(("127.0.0.1", 0))
    peers: list[socket.socket] = []

    def echo(peer: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := peer.recv(65536):
                peer.sendall(data)

    def accept() -> None:
        while True:
            try:
                peer, _ = server.accept()
            except OSError:
                return
            peers.append(peer)
            threading.Thread(target=echo, args=(peer,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()
    for peer in peers:
        peer.close()


def connect(proxy: TcpProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=2.0)


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def test_forwards_both_ways(echo_port: int) -> None:
    with TcpProxy("127.0.0.1", echo_port) as proxy, connect(proxy) as sock:
        assert roundtrip(sock, b"hello") == b"hello"
        big = bytes(range(256)) * 2048  # 512 KiB: more than one chunk each way
        assert roundtrip(sock, big) == big


def test_blackhole_swallows_without_closing(echo_port: int) -> None:
    with TcpProxy("127.0.0.1", echo_port) as proxy, connect(proxy) as sock:
        assert roundtrip(sock, b"before") == b"before"
        proxy.blackhole()
        sock.settimeout(0.3)
        sock.sendall(b"into the void")  # the write succeeds: nobody says anything
        with pytest.raises(TimeoutError):
            sock.recv(100)


def test_new_connections_during_blackhole_are_accepted_and_get_nothing(echo_port: int) -> None:
    with TcpProxy("127.0.0.1", echo_port) as proxy:
        proxy.blackhole()
        with connect(proxy) as sock:
            sock.settimeout(0.3)
            sock.sendall(b"anyone?")
            with pytest.raises(TimeoutError):
                sock.recv(100)


def test_heal_serves_new_connections_and_resets_the_broken_ones(echo_port: int) -> None:
    with TcpProxy("127.0.0.1", echo_port) as proxy, connect(proxy) as old:
        assert roundtrip(old, b"x") == b"x"
        proxy.blackhole()
        old.sendall(b"lost")
        proxy.heal()
        with connect(proxy) as new:
            assert roundtrip(new, b"after") == b"after"
        # The old stream lost bytes; it is ended rather than left to hang.
        with pytest.raises((ConnectionResetError, ConnectionAbortedError)):
            while old.recv(100):
                pass
            raise ConnectionResetError("closed")


def test_unreachable_target_closes_the_client() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    # Reset or EOF, never a hang (that would be a TimeoutError). The reset
    # can come so fast that the client's own connect() sees it (EPIPE or
    # ECONNRESET from a non-blocking connect), which is just as good.
    with TcpProxy("127.0.0.1", port) as proxy:
        try:
            sock = connect(proxy)
        except (ConnectionResetError, BrokenPipeError):
            return
        with sock, contextlib.suppress(ConnectionResetError):
            assert sock.recv(100) == b""


def test_close_ends_every_connection(echo_port: int) -> None:
    proxy = TcpProxy("127.0.0.1", echo_port)
    sock = connect(proxy)
    assert roundtrip(sock, b"x") == b"x"
    proxy.close()
    with sock, contextlib.suppress(ConnectionResetError):
        assert sock.recv(100) == b""
    with pytest.raises(OSError):
        connect(proxy).close()


DELAY = 0.4


def test_delay_holds_every_chunk_both_ways_in_order_and_heal_ends_it(echo_port: int) -> None:
    with TcpProxy("127.0.0.1", echo_port) as proxy, connect(proxy) as sock:
        assert roundtrip(sock, b"warm") == b"warm"
        proxy.delay(DELAY)
        sock.settimeout(10)
        started = time.monotonic()
        assert roundtrip(sock, b"slow") == b"slow"
        # Held on the way there and again on the way back.
        assert time.monotonic() - started >= 2 * DELAY
        # Chunks sent at different times come back whole and in order, none lost.
        payload = b""
        for i in range(20):
            piece = bytes([i]) * (1000 + 997 * i)
            sock.sendall(piece)
            payload += piece
            time.sleep(0.01)  # separate chunks, arriving while earlier ones are held
        received = b""
        while len(received) < len(payload):
            chunk = sock.recv(65536)
            assert chunk, "the proxy closed a delayed stream"
            received += chunk
        assert received == payload
        proxy.heal()
        assert proxy.delayed == 0
        started = time.monotonic()
        assert roundtrip(sock, b"fast") == b"fast"
        assert time.monotonic() - started < DELAY


def test_a_delayed_connection_waits_only_for_its_own_bytes(echo_port: int) -> None:
    """Two connections in flight at once each take one delay each way, not two: one
    connection's held bytes never hold another's."""
    with TcpProxy("127.0.0.1", echo_port) as proxy, connect(proxy) as a, connect(proxy) as b:
        proxy.delay(DELAY)
        a.settimeout(10)
        b.settimeout(10)
        started = time.monotonic()
        a.sendall(b"a")
        b.sendall(b"b")
        assert a.recv(10) == b"a"
        assert b.recv(10) == b"b"
        took = time.monotonic() - started
        assert 2 * DELAY <= took < 4 * DELAY, took


def test_heal_passes_on_held_bytes_at_once(echo_port: int) -> None:
    with TcpProxy("127.0.0.1", echo_port) as proxy, connect(proxy) as sock:
        proxy.delay(30.0)
        sock.settimeout(5)
        sock.sendall(b"held")
        with pytest.raises(TimeoutError):
            sock.settimeout(0.3)
            sock.recv(10)
        sock.settimeout(5)
        proxy.heal()
        assert sock.recv(10) == b"held"  # within the 5 s timeout, not after 30 s
