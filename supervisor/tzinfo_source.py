"""Which time-zone data this process's `zoneinfo` uses, and the fleet's view of it.

Two nodes whose zone data differ compute different instants for one wall time in a
zone whose rules changed between their versions, so each node reports its data in its
membership row and `supervisor status` warns when the fleet's versions differ.

Where zoneinfo looks (CPython's `zoneinfo._tzpath.find_tzfile`, then
`zoneinfo._common.load_tzdata`), for each key: the first directory of `zoneinfo.TZPATH`
that has a file of that name, else the `tzdata` package. TZPATH is the interpreter's
build default (e.g. /usr/share/zoneinfo first) unless PYTHONTZPATH was set when
zoneinfo was imported (`PYTHONTZPATH=""`: no directory, the package only), or a
program called `zoneinfo.reset_tzpath`. The source is judged by the key "UTC", which
every complete copy of the data has; a directory holding only some zones (rare) makes
zoneinfo take the others from the package.

Versions: the system files' `tzdata.zi` opens with "# version 2024a" (or a `+VERSION`
file says it); the package has `tzdata.IANA_VERSION` ("2024a") and its distribution's
version ("2024.1"). "unknown" when none is readable.

Reading the data is cheap but not free (a few stats and one short read):
`this_process()` does it once per process.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

FIELD_WIDTH = 32  # the membership row's columns (fs_members.tz_source, tz_version)
PROBE_KEY = "UTC"
UNKNOWN = "unknown"
NONE = "none"  # neither a TZPATH directory nor the tzdata package has the data


@dataclass(frozen=True)
class ZoneData:
    """Where zoneinfo loads zones from and which IANA release that is.

    source: "system:<directory>" (shortened to FIELD_WIDTH), "tzdata" (the package),
    or "none". version: "2024a", or "unknown"."""

    source: str
    version: str


def zone_data(key: str = PROBE_KEY) -> ZoneData:
    """Where zoneinfo would load `key` from right now, and that data's version."""
    for directory in zoneinfo.TZPATH:
        if os.path.isfile(os.path.join(directory, key)):
            return ZoneData(system_source(directory), system_version(directory))
    if _package_has(key):
        return ZoneData("tzdata", package_version())
    return ZoneData(NONE, UNKNOWN)


@functools.cache
def this_process() -> ZoneData:
    """`zone_data()`, read once per process."""
    return zone_data()


def system_source(directory: str) -> str:
    """The source of a directory, "system:/usr/share/zoneinfo"; a long path keeps its
    end, which tells more."""
    text = f"system:{directory}"
    if len(text) <= FIELD_WIDTH:
        return text
    return "system:..." + directory[-(FIELD_WIDTH - len("system:...")):]


def system_version(directory: str) -> str:
    """The release of a zoneinfo directory: `tzdata.zi`'s first line, else `+VERSION`."""
    first = _first_line(os.path.join(directory, "tzdata.zi"))
    if first is not None and first.startswith("# version "):
        return _fit(first.removeprefix("# version ").strip())
    plain = _first_line(os.path.join(directory, "+VERSION"))
    return _fit(plain.strip()) if plain and plain.strip() else UNKNOWN


def package_version() -> str:
    """The tzdata package's IANA release ("2024a"), else its distribution's version."""
    try:
        iana = getattr(importlib.import_module("tzdata"), "IANA_VERSION", None)
    except ImportError:
        iana = None
    if isinstance(iana, str) and iana:
        return _fit(iana)
    try:
        return _fit(importlib.metadata.version("tzdata"))
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN


def _package_has(key: str) -> bool:
    """As `zoneinfo._common.load_tzdata` looks a key up in the tzdata package."""
    *parents, name = key.split("/")
    try:
        return resources.files(".".join(["tzdata.zoneinfo", *parents])).joinpath(name).is_file()
    except (ImportError, FileNotFoundError, UnicodeEncodeError):
        return False


def _first_line(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.readline(200)
    except OSError:
        return None


def _fit(text: str) -> str:
    return text[:FIELD_WIDTH]


# --- the fleet ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeZoneData:
    """One live node's report; None fields: a node of an older release, which says nothing."""

    label: str  # how status names the node
    source: str | None
    version: str | None


def by_version(nodes: Sequence[NodeZoneData]) -> dict[str, list[NodeZoneData]]:
    """The nodes that report a known version, by version, in order of first appearance.
    More than one key: the fleet's zone data differ."""
    groups: dict[str, list[NodeZoneData]] = {}
    for node in nodes:
        if node.version is not None and node.version != UNKNOWN:
            groups.setdefault(node.version, []).append(node)
    return groups


def differ_warning(nodes: Sequence[NodeZoneData]) -> str | None:
    """One line for `status` when live nodes report different zone data versions; None
    when they agree (nodes that report none, or an unknown version, are left out:
    nothing to compare)."""
    groups = by_version(nodes)
    if len(groups) < 2:
        return None
    parts = []
    for version, members in sorted(groups.items()):
        sources = sorted({m.source or UNKNOWN for m in members})
        parts.append(f"{version} ({', '.join(sources)}) on {', '.join(m.label for m in members)}")
    return ("warning: live nodes use different time-zone data: " + "; ".join(parts)
            + ". Cron ticks in zones whose rules differ between these versions can fire at"
            " different instants on different nodes; give every node the same zone data"
            " (see README, time zones).")
