"""The client end of the control socket, for the commands of supervisor.cli_local.

Blocking and small: connect, write one request line, read the answer line (and, for
`logs --follow`, the lines after it).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from supervisor.control.protocol import Request, decode, encode


class NotRunning(Exception):
    """Nothing listens on the socket: no supervisor runs for that node."""


class ControlBroken(Exception):
    """The supervisor closed the connection or answered something that is not an answer."""


class Connection:
    """One connection to a supervisor's control socket."""

    def __init__(self, path: Path, timeout: float | None = None) -> None:
        """`timeout`: seconds to wait for each answer (None: as long as it takes)."""
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
            self._sock.close()
            raise NotRunning(str(path)) from exc
        except OSError:
            self._sock.close()
            raise
        self._file: BinaryIO = self._sock.makefile("rb")

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
            self._sock.close()

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def ask(self, request: Request) -> dict[str, Any]:
        """Send `request`; its answer."""
        self._sock.sendall(encode(request.to_json()))
        return self.read()

    def read(self) -> dict[str, Any]:
        line = self._file.readline()
        if not line:
            raise ControlBroken("the supervisor closed the connection")
        try:
            return decode(line)
        except ValueError as exc:
            raise ControlBroken(f"not an answer: {line[:200]!r}") from exc

    def stream(self) -> Iterator[dict[str, Any]]:
        """The lines after a `logs --follow` answer, until the supervisor closes."""
        while True:
            try:
                yield self.read()
            except ControlBroken:
                return
