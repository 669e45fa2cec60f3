"""Where a node's control socket lives: one rule, used by `supervisor run` and by the
commands that talk to it (`supervisor ps -c FILE` finds the socket of FILE's node).

- `control_socket` set in the file (or SUPERVISOR_CONTROL_SOCKET): that path; a relative
  one is relative to the file's directory.
- Else `$XDG_RUNTIME_DIR/fleet-supervisor/<node>.sock` when XDG_RUNTIME_DIR is set; else
  `/run/user/<uid>/fleet-supervisor/<node>.sock` when that runtime directory exists; else
  `<tmp>/fleet-supervisor-<uid>/<node>.sock`. The directory is the supervisor's own,
  created 0700.

`<node>` is the node_id with every byte outside `[A-Za-z0-9_-]` (dots too)
written as `%XX`, so that node ids can neither collide nor climb out of the directory;
one whose path would not fit in a socket address (sun_path: 107 bytes) is cut and
ended with a hash of the whole id. Pure functions of their arguments.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SUN_PATH_MAX = 107  # bytes of a Unix socket's path (sun_path is 108 with its NUL)
DIR_NAME = "fleet-supervisor"
SUFFIX = ".sock"
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_HASH = 16  # hex digits of the hash that ends a shortened name


class SocketPathError(ValueError):
    """The socket's path cannot be used (too long for a socket address)."""


@dataclass(frozen=True)
class SocketPath:
    path: Path
    own_dir: bool  # the directory is the supervisor's own (default): created 0700, ours only


def encode_node(node_id: str) -> str:
    """A file name for `node_id`: reversible, no "/" nor NUL, never "." or "..".

    >>> encode_node("web-1")
    'web-1'
    >>> encode_node("a/b.c")
    'a%2Fb%2Ec'
    """
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in node_id.encode())


def fitted_name(directory: Path, node_id: str) -> str:
    """`<encoded node_id>.sock`, cut and ended with a hash when the whole path would
    exceed sun_path."""
    name = encode_node(node_id)
    room = SUN_PATH_MAX - len(os.fsencode(directory)) - 1 - len(SUFFIX)
    if len(name) <= room:
        return name + SUFFIX
    digest = hashlib.sha256(node_id.encode()).hexdigest()[:_HASH]
    keep = max(0, room - _HASH - 1)
    head = name[:keep]
    if "%" in head[-2:]:  # never cut inside a %XX escape
        head = head[:head.rindex("%")]
    return f"{head}~{digest}{SUFFIX}"


def runtime_dir(environ: Mapping[str, str], uid: int, *,
                run_user: Path = Path("/run/user"), tmp: str | None = None) -> Path:
    """The supervisor's own directory for sockets of this uid."""
    xdg = environ.get("XDG_RUNTIME_DIR", "")
    if xdg:
        return Path(xdg) / DIR_NAME
    user_run = run_user / str(uid)
    if user_run.is_dir():
        return user_run / DIR_NAME
    return Path(tmp if tmp is not None else tempfile.gettempdir()) / f"{DIR_NAME}-{uid}"


def socket_path(configured: str, node_id: str, *, base_dir: Path,
                environ: Mapping[str, str], uid: int,
                run_user: Path = Path("/run/user"), tmp: str | None = None) -> SocketPath:
    """The control socket of node `node_id`; SocketPathError when it cannot be a socket."""
    if configured:
        path = base_dir / configured  # an absolute `configured` stays as it is
        own = False
    else:
        directory = runtime_dir(environ, uid, run_user=run_user, tmp=tmp)
        path, own = directory / fitted_name(directory, node_id), True
    size = len(os.fsencode(path))
    if size > SUN_PATH_MAX:
        raise SocketPathError(
            f"control_socket: {str(path)!r} is {size} bytes; a Unix socket's path holds at "
            f"most {SUN_PATH_MAX}: set a shorter control_socket")
    return SocketPath(path, own)
