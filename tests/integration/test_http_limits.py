"""The metrics port is not a way in (issue 12): a real HealthServer on an event loop,
real sockets. Connections are bounded in number, size, time and in what they can
raise; and the supervisor's own descriptor limit is raised while children keep theirs.
"""

from __future__ import annotations

import asyncio
import gc
import re
import resource
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from supervisor import http
from supervisor.http import HealthServer
from tests.conftest import BASE_CONFIG, PYTHON

LIMIT = 64  # http._MAX_CONNECTIONS, spelled out: the issue asks for a bound of this order
WAIT = 5.0  # a deadline for what should happen at once; reached only when a test fails


def serving(test: Callable[[HealthServer, int], Awaitable[Any]],
            metrics: Callable[[], bytes] = lambda: b"up 1\n") -> tuple[Any, list[dict[str, Any]]]:
    """Run `test(server, port)` against a started server on a fresh loop; its result and
    whatever reached the loop's exception handler (an unhandled asyncio traceback)."""
    unhandled: list[dict[str, Any]] = []

    async def main() -> Any:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))
        server = HealthServer("127.0.0.1", 0, lambda _accept: (metrics(), "text/plain"))
        port = await server.start()
        serve = asyncio.create_task(server.serve())
        try:
            return await test(server, port)
        finally:
            serve.cancel()
            await asyncio.gather(serve, return_exceptions=True)
            await asyncio.sleep(0.05)  # let the handlers see their connections end
            gc.collect()  # "Task exception was never retrieved" shows up at collection

    return asyncio.run(main()), unhandled


async def exchange(port: int, data: bytes, *, half_close: bool = False) -> bytes:
    """Send `data`, read the answer to the end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        if half_close:
            writer.write_eof()
        async with asyncio.timeout(WAIT):
            return await reader.read()
    finally:
        writer.close()


def status_of(answer: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", answer)
    return int(match[1]) if match else None


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        async with asyncio.timeout(within):
            return await reader.read(1) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def test_a_flood_of_idle_connections_is_bounded_and_healthz_still_answers_at_once():
    flood = 3 * LIMIT

    async def test(server: HealthServer, port: int) -> tuple[int, int, float, int]:
        idle = []
        try:
            for _ in range(flood):
                idle.append(await asyncio.open_connection("127.0.0.1", port))
            # Every connection beyond the bound is closed by the server right away; the
            # others would wait out the request timeout (5 s), far beyond this 1 s.
            dropped = sum(await asyncio.gather(*(closed_by_server(r, 1.0) for r, _ in idle)))
            started = time.monotonic()
            answer = await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            took = time.monotonic() - started
            return dropped, status_of(answer) or 0, took, getattr(server, "connections", -1)
        finally:
            for _, writer in idle:
                writer.close()

    (dropped, status, took, open_now), unhandled = serving(test)
    assert dropped >= flood - LIMIT, f"only {dropped} of {flood} idle connections were closed"
    assert status == 200
    assert took < 1.0, f"/healthz took {took:.2f}s behind a flood of idle connections"
    assert 0 <= open_now <= LIMIT
    assert unhandled == []


def test_a_client_that_sends_its_head_slowly_is_dropped_after_the_timeout(monkeypatch):
    monkeypatch.setattr(http, "_REQUEST_TIMEOUT", 0.5)

    async def test(server: HealthServer, port: int) -> tuple[float, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        got = b""
        async with asyncio.timeout(WAIT):
            while True:  # a header line every 0.1 s: the head never ends
                writer.write(b"X-Slow: yes\r\n")
                try:
                    async with asyncio.timeout(0.1):
                        got = await reader.read()
                    break  # the server closed the connection
                except TimeoutError:
                    continue
                except ConnectionError:
                    break
        took = time.monotonic() - started
        writer.close()
        return took, got

    (took, got), unhandled = serving(test)
    assert 0.4 <= took < 2.0, f"dropped after {took:.2f}s, with a timeout of 0.5 s"
    assert got == b""
    assert unhandled == []


def test_a_client_that_does_not_read_its_answer_is_cut_off(monkeypatch):
    monkeypatch.setattr(http, "_REQUEST_TIMEOUT", 0.5)
    monkeypatch.setattr(http, "_WRITE_TIMEOUT", 0.5, raising=False)
    body = b"x" * (32 * 1024 * 1024)  # far more than the socket buffers hold

    async def test(server: HealthServer, port: int) -> tuple[int, int]:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
        await asyncio.sleep(1.5)  # not reading: the server must give up by now
        received = 0
        async with asyncio.timeout(3 * WAIT):
            while chunk := await reader.read(1 << 20):
                received += len(chunk)
        writer.close()
        return received, getattr(server, "connections", -1)

    (received, open_now), unhandled = serving(test, metrics=lambda: body)
    assert received < len(body), "the server waited for ever on a client that did not read"
    assert open_now == 0
    assert unhandled == []


def test_an_over_long_request_head_gets_431():
    head = b"GET /healthz HTTP/1.1\r\nX-Long: " + b"a" * 10_000 + b"\r\n\r\n"
    answers, unhandled = serving(lambda _server, port: asyncio.gather(
        exchange(port, head),
        exchange(port, b"GET /" + b"a" * 10_000),  # a request line that never ends
    ))
    assert [status_of(answer) for answer in answers] == [431, 431]
    assert unhandled == []


@pytest.mark.parametrize("garbage", [
    b"hello there\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
    b"GET /healthz\r\n\r\n",
    b"GET healthz HTTP/1.1\r\n\r\n",
    b"GET /healthz HTTP/1.1 extra\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nno colon in this header\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nX-Bad: a\x00b\r\n\r\n",
    b"GET /heal\x1bthz HTTP/1.1\r\n\r\n",
], ids=["words", "tls", "no-version", "no-slash", "extra", "no-colon", "nul", "escape"])
def test_a_malformed_request_gets_400(garbage: bytes):
    answer, unhandled = serving(lambda _server, port: exchange(port, garbage))
    assert status_of(answer) == 400, answer
    assert unhandled == []


def test_a_request_head_cut_short_gets_400():
    answer, unhandled = serving(
        lambda _server, port: exchange(port, b"GET /healthz HTTP/1.1\r\nHost", half_close=True))
    assert status_of(answer) == 400, answer
    assert unhandled == []


def test_a_failing_metrics_callable_gets_500_and_no_asyncio_traceback(caplog):
    def broken() -> bytes:
        raise RuntimeError("registry on fire")

    answer, unhandled = serving(
        lambda _server, port: exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n"), metrics=broken)
    assert status_of(answer) == 500, answer
    assert unhandled == []
    assert "registry on fire" in caplog.text


def test_well_formed_requests_are_still_answered():
    requests = {
        b"GET /healthz HTTP/1.1\r\nHost: localhost:9464\r\nUser-Agent: curl/8\r\n\r\n": 200,
        b"GET /metrics?x=1 HTTP/1.0\r\n\r\n": 200,
        b"HEAD /readyz HTTP/1.1\r\n\r\n": 200,
        b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n": 405,
        b"GET /nothing HTTP/1.1\r\n\r\n": 404,
    }

    answers, unhandled = serving(lambda _server, port: asyncio.gather(
        *(exchange(port, request) for request in requests)))
    assert [status_of(answer) for answer in answers] == list(requests.values())
    assert answers[1].endswith(b"\r\n\r\nup 1\n")
    assert answers[2].endswith(b"\r\n\r\n")  # HEAD: no body
    assert unhandled == []


# -- the descriptor limit: raised for the supervisor, the original for its children ------

LIMITS_WORKER = (
    "import os, resource, time; "
    "mine = resource.getrlimit(resource.RLIMIT_NOFILE)[0]; "
    "path = f\"/proc/{os.getppid()}/limits\"; "
    "line = [x for x in open(path) if x.startswith(\"Max open files\")][0]; "
    "print(\"nofile\", mine, line.split()[3], flush=True); "
    "time.sleep(60)"
)
LOWER_THEN_EXEC = (
    "import os, resource, sys; "
    "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def test_the_supervisor_raises_its_descriptor_limit_and_children_get_the_original(
        supervisor_run):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard RLIMIT_NOFILE ({hard}) leaves nothing to raise")
    config = BASE_CONFIG + f"""
[workers.limits]
command = ["{PYTHON}", "-c", '{LIMITS_WORKER}']
"""
    run = supervisor_run(config, prefix=[PYTHON, "-c", LOWER_THEN_EXEC])
    match = run.expect(r"^limits \| nofile (\d+) (\d+)$")
    child, supervisor = int(match[1]), int(match[2])
    expected = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    assert child == 256, "the child must get the soft limit the supervisor was started with"
    assert supervisor == expected, "the supervisor must raise its own soft limit"
