"""The control socket's server end, run inside `supervisor run` as a side task.

Opening (`ControlServer.open`, before any worker starts):
- the supervisor's own directory (the default path) is created 0700 and must belong to
  this uid; the directory of a configured path must belong to this uid or to root;
- an existing socket must belong to this uid; if a supervisor answers on it (two
  supervisors with one node_id on one host) this one refuses to start; if nobody does
  it is stale (its supervisor died) and is replaced;
- the socket is bound 0600 (under a umask, then chmod) and removed on a clean exit,
  if it is still the one this process bound.

Every connection's peer is checked with SO_PEERCRED: the supervisor's own uid or root,
else it is answered `refused` and closed. Requests and answers: supervisor.control.protocol.
What the requests do is the supervisor's (`handle`, a callable): this module knows no
worker, only the log buffers it serves `logs` from.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from supervisor.control.logbuffer import Follower, LogBuffers
from supervisor.control.paths import SocketPath
from supervisor.control.protocol import (
    INTERNAL,
    MAX_REQUEST,
    REFUSED,
    ProtocolError,
    Request,
    check_worker,
    encode,
    ok,
    parse_request,
)

log = logging.getLogger("supervisor")

Handle = Callable[[Request], Awaitable[dict[str, Any]]]
EXIT_RUNTIME = 1
EXIT_INVALID = 2
_LIVE_PROBE = 1.0  # seconds to wait for a connection to an existing socket
_REFUSED_LINGER = 2.0  # seconds a refused peer has to read its answer
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class ControlRefused(Exception):
    """The control socket cannot be opened: the supervisor must not start. `code` is its
    exit code (1: another supervisor runs there; 2: a path or ownership problem)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
    return int(_CRED.unpack(raw)[1])


def answers(path: str, timeout: float = _LIVE_PROBE) -> bool:
    """True if something accepts connections on the socket at `path`."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(path)
    except TimeoutError:
        return True  # a listener whose backlog is full is alive
    except OSError:
        return False
    finally:
        probe.close()
    return True


class ControlServer:
    """The node's control socket: `open()` it, `serve()` it as a task, `close()` it."""

    def __init__(self, where: SocketPath, handle: Handle, logs: LogBuffers,
                 known: Callable[[], list[str]], *, node_id: str) -> None:
        self.where = where
        self._handle = handle
        self._logs = logs
        self._known = known
        self._node_id = node_id
        self._uid = os.getuid()
        self._sock: socket.socket | None = None
        self._bound: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def path(self) -> str:
        return str(self.where.path)

    # --- opening and closing ---------------------------------------------------------------

    def open(self) -> None:
        """Bind the socket, or raise ControlRefused (nothing else has started yet)."""
        self._check_directory()
        self._clear_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # never a moment with a socket others may connect to
        try:
            sock.bind(self.path)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise ControlRefused(EXIT_RUNTIME, f"control socket {self.path}: another "
                                     "supervisor took it while this one was starting") from None
            raise ControlRefused(EXIT_INVALID, f"control socket {self.path}: "
                                 f"{exc.strerror or exc}") from None
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        sock.setblocking(False)
        found = os.lstat(self.path)
        self._bound = (found.st_dev, found.st_ino)
        self._sock = sock

    def _check_directory(self) -> None:
        directory = self.where.path.parent
        if self.where.own_dir:
            try:
                os.mkdir(directory, 0o700)
            except FileExistsError:
                pass
            except OSError as exc:
                raise ControlRefused(EXIT_INVALID, f"control socket directory {directory}: "
                                     f"{exc.strerror or exc} (set control_socket to a "
                                     "writable place)") from None
        else:
            try:
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise ControlRefused(EXIT_INVALID, f"control socket directory {directory}: "
                                     f"{exc.strerror or exc}") from None
        try:
            found = os.lstat(directory)
        except OSError as exc:
            raise ControlRefused(EXIT_INVALID, f"control socket directory {directory}: "
                                 f"{exc.strerror or exc}") from None
        if not stat.S_ISDIR(found.st_mode):
            raise ControlRefused(EXIT_INVALID, f"control socket directory {directory} is not "
                                 "a directory (a symbolic link is refused too)")
        owners = (self._uid,) if self.where.own_dir else (self._uid, 0)
        if found.st_uid not in owners:
            raise ControlRefused(EXIT_INVALID, (
                f"control socket directory {directory} belongs to uid {found.st_uid}, not to "
                f"this supervisor's uid {self._uid}: refusing to start (another user could "
                "replace the socket)"))
        if self.where.own_dir and found.st_mode & 0o077:
            os.chmod(directory, 0o700)

    def _clear_stale(self) -> None:
        try:
            found = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(found.st_mode):
            raise ControlRefused(EXIT_INVALID, f"control socket {self.path} exists and is "
                                 "not a socket: refusing to replace it")
        if found.st_uid != self._uid:
            raise ControlRefused(EXIT_INVALID, (
                f"control socket {self.path} belongs to uid {found.st_uid}, not to this "
                f"supervisor's uid {self._uid}: refusing to start"))
        if answers(self.path):
            raise ControlRefused(EXIT_RUNTIME, (
                f"a supervisor is already running for node {self._node_id} on this host "
                f"(it answers on {self.path}): two supervisors with one node_id on one host "
                "would compete for the same rows; refusing to start"))
        log.info("replacing the stale control socket %s (its supervisor is gone)", self.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def close(self) -> None:
        """Remove the socket, if it is still the one this process bound."""
        for writer in list(self._writers):
            writer.close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._bound is not None:
            with contextlib.suppress(OSError):
                found = os.lstat(self.path)
                if (found.st_dev, found.st_ino) == self._bound:
                    os.unlink(self.path)
            self._bound = None

    # --- serving ---------------------------------------------------------------------------

    async def serve(self) -> None:
        """Answer connections until cancelled; the socket is removed on the way out."""
        if self._sock is None:
            raise RuntimeError("ControlServer.serve() before open()")
        server = await asyncio.start_unix_server(self._connection, sock=self._sock,
                                                 limit=MAX_REQUEST)
        try:
            async with server:
                await server.serve_forever()
        finally:
            self.close()

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            sock = writer.get_extra_info("socket")
            uid = peer_uid(sock)
            if uid not in (self._uid, 0):
                log.warning("control socket: refused a connection from uid %d", uid)
                writer.write(encode(ProtocolError(
                    REFUSED, f"uid {uid} may not control this supervisor (uid "
                             f"{self._uid}); only its own user and root may").answer()))
                await writer.drain()
                # Read what it sent (unanswered) until it closes, briefly: closing with
                # unread data resets the connection, and the refusal would be lost.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_REFUSED_LINGER):
                        while await reader.read(MAX_REQUEST):
                            pass
                return
            await self._requests(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _requests(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                line = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                writer.write(encode(ProtocolError(
                    "bad_request", f"a request is at most {MAX_REQUEST} bytes").answer()))
                await writer.drain()
                return
            if not line:
                return
            if not line.strip():
                continue
            try:
                request = parse_request(line)
                if request.cmd == "logs":
                    await self._logs_request(request, reader, writer)
                    if request.follow:
                        return
                    continue
                answer = await self._handle(request)
            except ProtocolError as exc:
                answer = exc.answer()
            except Exception:  # a bug: answered and logged, the supervisor goes on
                log.exception("control socket: the request %r failed", line[:200])
                answer = ProtocolError(INTERNAL, "the supervisor failed to answer this "
                                       "request (see its log)").answer()
            writer.write(encode(answer))
            await writer.drain()

    async def _logs_request(self, request: Request, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        name = check_worker(request.worker, self._known(), allow_all=False)[0]
        follower = self._logs.follow(name) if request.follow else None
        try:
            lines = [line.to_json() for line in self._logs.tail(name, request.lines)]
            writer.write(encode(ok(worker=name, lines=lines, follow=request.follow)))
            await writer.drain()
            if follower is not None:
                await self._follow(follower, reader, writer)
        finally:
            if follower is not None:
                self._logs.unfollow(name, follower)

    async def _follow(self, follower: Follower, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        """New lines until the client closes its end (it sends nothing more)."""
        closed = asyncio.ensure_future(reader.read(1))
        try:
            while True:
                getter = asyncio.ensure_future(follower.queue.get())
                await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    return
                dropped, line = getter.result()
                if dropped:
                    writer.write(encode({"dropped": dropped}))
                writer.write(encode(line.to_json()))
                await writer.drain()
        finally:
            closed.cancel()
