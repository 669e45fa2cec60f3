"""What a field of the spec accepts, written beside the field as `Annotated` metadata.

The dataclasses of `supervisor.spec` (and `supervisor.policy.Backoff`) are the one
declaration of the config's fields. The checks a file's value must pass sit on the
field as these markers; `supervisor.config` turns them into pydantic's, in the
short-lived validating child. Here they are inert data: the running supervisor
imports this module, never pydantic (nor annotated_types, which pulls in
typing_extensions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated


@dataclass(frozen=True)
class Duration:
    """A number of seconds that the file may also write as "500ms", "10s", "5m", "1h"."""


@dataclass(frozen=True)
class Limits:
    """Bounds a value must keep: `ge`/`le` for numbers, `min_length` for sequences."""

    ge: float | None = None
    le: float | None = None
    min_length: int | None = None


Seconds = Annotated[float, Duration()]
