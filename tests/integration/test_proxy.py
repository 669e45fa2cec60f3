"""The fault tests' TCP proxy: it forwards, it swallows like a cut cable, it heals."""

from __future__ import annotations

import contextlib
import socket
import threading
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
    # Reset or EOF, never a hang (that would be a TimeoutError).
    with (TcpProxy("127.0.0.1", port) as proxy, connect(proxy) as sock,
          contextlib.suppress(ConnectionResetError)):
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
