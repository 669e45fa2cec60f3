"""A small HTTP server on the event loop: /metrics, /healthz, /readyz.

/metrics answers in the format the scraper's Accept header asks for (OpenMetrics for
Prometheus, else the Prometheus text format): the metrics callable chooses.

It runs on the supervisor's own loop, so /healthz answering 200 proves the main
loop is alive (a wedged loop answers nothing). prometheus-client's
start_http_server would answer every path with metrics, and take a thread.

The port listens on 0.0.0.0 by default, so it must not be a way in. Every connection
is bounded in what it may cost the supervisor:

- at most `_MAX_CONNECTIONS` are open at once. A new one beyond that evicts the oldest
  connection that has not yet sent its whole request head (an idle or slow client), so
  a flood of idle connections cannot lock out a prober that sends its request at once;
  if none is idle (all are being answered), the new connection is closed at once;
- the whole request head must arrive within `_REQUEST_TIMEOUT` seconds, else the
  connection is dropped without an answer; the answer must be taken by the client
  within `_WRITE_TIMEOUT` seconds, else it is cut off;
- a head longer than `_MAX_REQUEST` bytes gets 431, a malformed one 400, a method
  other than GET or HEAD 405; every answer closes the connection (one request each);
- no exception escapes a connection's handler (asyncio would print it as a bare
  traceback): a failing metrics callable gets 500 and one log line.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable

log = logging.getLogger("supervisor")

_MAX_REQUEST = 8192  # bytes of request head (request line and headers)
_REQUEST_TIMEOUT = 5.0  # seconds for the whole request head
_WRITE_TIMEOUT = 5.0  # seconds for the client to take the whole answer
_MAX_CONNECTIONS = 64  # open at once; each costs a file descriptor

_REQUEST_LINE = re.compile(rb"([A-Z]{1,16}) (/[\x21-\x7e]*) HTTP/1\.[01]")
_HEADER = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*")

Response = tuple[str, str, bytes]  # status line, content type, body

_BAD_REQUEST: Response = ("400 Bad Request", "text/plain", b"bad request\n")
_TOO_LARGE: Response = ("431 Request Header Fields Too Large", "text/plain",
                        b"request head too large\n")


class HealthServer:
    def __init__(
        self,
        host: str,
        port: int,
        metrics: Callable[[str], tuple[bytes, str]],
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.host = host
        self.port = port
        self._metrics = metrics
        self._ready = ready
        self._server: asyncio.Server | None = None
        # Open connections, oldest first: True once the request head is in (being answered).
        self._open: dict[asyncio.StreamWriter, bool] = {}

    @property
    def connections(self) -> int:
        """Connections open now (never more than `_MAX_CONNECTIONS`)."""
        return len(self._open)

    async def start(self) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port,
                                                  limit=_MAX_REQUEST)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)
        return self.port

    async def serve(self) -> None:
        """Serve until cancelled (starting first if `start` was not awaited)."""
        server = self._server
        if server is None:
            await self.start()
            return await self.serve()
        try:
            await server.serve_forever()
        finally:
            server.close()
            for writer in list(self._open):
                writer.transport.abort()
            self._open.clear()

    def _admit(self, writer: asyncio.StreamWriter) -> bool:
        """Make room for a new connection: evict the oldest one still waiting for its
        request head; False if all are being answered."""
        if len(self._open) >= _MAX_CONNECTIONS:
            idle = next((w for w, answering in self._open.items() if not answering), None)
            if idle is None:
                return False
            del self._open[idle]
            idle.transport.abort()
        self._open[writer] = False
        return True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        transport = writer.transport
        try:
            if self._admit(writer):
                await self._exchange(reader, writer)
        except (TimeoutError, ConnectionError):
            pass  # a slow or vanished client: nothing to say, nobody to say it to
        except Exception as exc:  # never a bare asyncio traceback, whatever the client sent
            log.warning("metrics endpoint: dropped a connection: %r", exc)
        finally:
            self._open.pop(writer, None)
            transport.abort()  # no-op once closed cleanly; frees the descriptor at once

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method = "GET"
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            response = _TOO_LARGE
        except asyncio.IncompleteReadError as exc:  # the client closed (or was evicted)
            if writer.transport.is_closing() or not exc.partial.strip():
                return
            response = _BAD_REQUEST  # a head cut short
        else:
            parsed = _parse_head(head)
            if parsed is None:
                response = _BAD_REQUEST
            else:
                method, path = parsed
                response = self._answer(method, path, _accept(head))
        if writer.transport.is_closing():
            return
        self._open[writer] = True
        status, ctype, body = response
        async with asyncio.timeout(_WRITE_TIMEOUT):
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode() + (b"" if method == "HEAD" else body)
            )
            writer.close()
            await writer.wait_closed()

    def _answer(self, method: str, path: str, accept: str) -> Response:
        try:
            return self._route(method, path, accept)
        except Exception as exc:
            log.warning("metrics endpoint: %s %s failed: %r", method, path.split("?", 1)[0], exc)
            return "500 Internal Server Error", "text/plain", b"internal error\n"

    def _route(self, method: str, path: str, accept: str) -> Response:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"method not allowed\n"
        path = path.split("?", 1)[0]
        if path == "/metrics":
            body, content_type = self._metrics(accept)  # OpenMetrics if the scraper asks
            return "200 OK", content_type, body
        if path == "/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == "/readyz":
            if self._ready():
                return "200 OK", "text/plain", b"ready\n"
            return "503 Service Unavailable", "text/plain", b"not ready\n"
        return "404 Not Found", "text/plain", b"not found\n"


def _parse_head(head: bytes) -> tuple[str, str] | None:
    """The method and target of a well-formed HTTP/1.x request head, else None."""
    lines = head[:-4].split(b"\r\n")
    request = _REQUEST_LINE.fullmatch(lines[0])
    if request is None or not all(_HEADER.fullmatch(line) for line in lines[1:]):
        return None
    return request[1].decode("ascii"), request[2].decode("ascii")


def _accept(head: bytes) -> str:
    """The Accept header of a well-formed request head ("" if none; several joined)."""
    fields = (line.split(b":", 1) for line in head[:-4].split(b"\r\n")[1:])
    return ", ".join(value.strip().decode("latin-1") for name, value in fields
                     if name.lower() == b"accept")
