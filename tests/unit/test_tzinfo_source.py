"""Which zone data zoneinfo uses, judged on a temporary TZPATH and a fake tzdata package."""

from __future__ import annotations

import importlib
import sys
import zoneinfo
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from supervisor import __version__
from supervisor.store import Holder, NodeFacts
from supervisor.tzinfo_source import (
    NodeZoneData,
    ZoneData,
    by_version,
    differ_warning,
    system_source,
    this_process,
    zone_data,
)

# UTC as a TZif version 2 file, which zoneinfo really loads: a header (magic, version, 15
# reserved bytes, six counts: no UT/standard indicators, leap seconds or transitions, one
# local time type, 4 bytes of abbreviations), that type (offset 0, not DST, "UTC"), the
# same block again for 64-bit readers, and the POSIX TZ footer.
_COUNTS = b"".join(n.to_bytes(4, "big") for n in (0, 0, 0, 0, 1, 4))
_BLOCK = b"TZif2" + bytes(15) + _COUNTS + bytes(6) + b"UTC\x00"
UTC_TZIF = _BLOCK + _BLOCK + b"\nUTC0\n"


@pytest.fixture
def tzpath() -> Iterator[Callable[..., None]]:
    """Point zoneinfo at the given directories; put the process's TZPATH back after."""
    saved = zoneinfo.TZPATH

    def point(*dirs: Path) -> None:
        zoneinfo.reset_tzpath([str(d) for d in dirs])

    yield point
    zoneinfo.reset_tzpath(saved)


@pytest.fixture
def isolated_tzdata() -> Iterator[None]:
    """Forget the imported tzdata package so a test can import a fake one (or none)."""
    saved = {k: v for k, v in sys.modules.items() if k == "tzdata" or k.startswith("tzdata.")}
    for name in saved:
        del sys.modules[name]
    yield
    for name in [k for k in sys.modules if k == "tzdata" or k.startswith("tzdata.")]:
        del sys.modules[name]
    sys.modules.update(saved)
    importlib.invalidate_caches()


def zone_dir(root: Path, *, zi: str | None = None, version_file: str | None = None,
             utc: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if utc:
        (root / "UTC").write_bytes(UTC_TZIF)
    if zi is not None:
        (root / "tzdata.zi").write_text(zi)
    if version_file is not None:
        (root / "+VERSION").write_text(version_file)
    return root


def fake_tzdata(monkeypatch: pytest.MonkeyPatch, root: Path, *, iana: str | None,
                dist_version: str | None = None) -> None:
    """A tzdata package first on sys.path: IANA_VERSION, a dist-info, and the UTC zone."""
    package = root / "tzdata"
    (package / "zoneinfo").mkdir(parents=True)
    (package / "__init__.py").write_text(
        f"IANA_VERSION = {iana!r}\n" if iana is not None else "")
    (package / "zoneinfo" / "__init__.py").write_text("")
    (package / "zoneinfo" / "UTC").write_bytes(UTC_TZIF)
    if dist_version is not None:
        info = root / f"tzdata-{dist_version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: tzdata\nVersion: {dist_version}\n")
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()


def test_the_system_files_version_is_the_first_line_of_tzdata_zi(tmp_path, tzpath):
    data = zone_dir(tmp_path / "z", zi="# version 2099a\n# Some zone data\n")
    tzpath(data)
    found = zone_data()
    assert found.version == "2099a"
    assert found.source.startswith("system:") and len(found.source) <= 32
    assert str(data).endswith(found.source.removeprefix("system:").removeprefix("..."))


def test_plus_version_is_read_where_tzdata_zi_is_missing(tmp_path, tzpath):
    tzpath(zone_dir(tmp_path / "z", version_file="2099b\n"))
    assert zone_data().version == "2099b"


def test_a_directory_whose_version_cannot_be_read_is_unknown(tmp_path, tzpath):
    tzpath(zone_dir(tmp_path / "z", zi="not a version line\n"))
    assert zone_data().version == "unknown"


def test_the_first_tzpath_directory_that_has_the_zone_wins_as_in_zoneinfo(tmp_path, tzpath):
    empty = tmp_path / "empty"  # exists, but holds no zone files: zoneinfo looks further
    empty.mkdir()
    (empty / "tzdata.zi").write_text("# version 1999a\n")
    first = zone_dir(tmp_path / "first", zi="# version 2099c\n")
    second = zone_dir(tmp_path / "second", zi="# version 2099d\n")
    tzpath(tmp_path / "missing", empty, first, second)
    assert zone_data().version == "2099c"
    assert zoneinfo.ZoneInfo.no_cache("UTC").utcoffset(None) is not None  # a real zone file


def test_pythontzpath_is_honoured_as_zoneinfo_reads_it(tmp_path, tzpath, monkeypatch):
    data = zone_dir(tmp_path / "z", zi="# version 2099e\n")
    monkeypatch.setenv("PYTHONTZPATH", str(data))
    zoneinfo.reset_tzpath()  # what zoneinfo does at import
    assert list(zoneinfo.TZPATH) == [str(data)]
    assert zone_data() == ZoneData(system_source(str(data)), "2099e")


def test_an_empty_pythontzpath_makes_zoneinfo_use_the_tzdata_package(
        tmp_path, tzpath, monkeypatch, isolated_tzdata):
    fake_tzdata(monkeypatch, tmp_path / "site", iana="2099f", dist_version="2099.6")
    monkeypatch.setenv("PYTHONTZPATH", "")
    zoneinfo.reset_tzpath()
    assert zoneinfo.TZPATH == ()
    assert zone_data() == ZoneData("tzdata", "2099f")


def test_system_files_win_over_an_installed_tzdata_package(
        tmp_path, tzpath, monkeypatch, isolated_tzdata):
    fake_tzdata(monkeypatch, tmp_path / "site", iana="2099f")
    tzpath(zone_dir(tmp_path / "z", zi="# version 2098a\n"))
    assert zone_data().version == "2098a"


def test_the_package_falls_back_to_its_distribution_version_without_iana_version(
        tmp_path, tzpath, monkeypatch, isolated_tzdata):
    fake_tzdata(monkeypatch, tmp_path / "site", iana=None, dist_version="2099.7")
    tzpath(tmp_path / "no-such-dir")
    assert zone_data() == ZoneData("tzdata", "2099.7")


def test_no_system_files_and_no_package_is_none_and_unknown(
        tmp_path, tzpath, monkeypatch, isolated_tzdata):
    monkeypatch.setitem(sys.modules, "tzdata", None)  # import tzdata raises ImportError
    tzpath(tmp_path / "no-such-dir")
    assert zone_data() == ZoneData("none", "unknown")


def test_a_long_system_path_is_shortened_to_its_column_keeping_its_end():
    assert system_source("/usr/share/zoneinfo") == "system:/usr/share/zoneinfo"
    long = "/opt/very/long/prefix/of/a/custom/image/share/zoneinfo"
    shortened = system_source(long)
    assert len(shortened) == 32 and shortened.startswith("system:...")
    assert long.endswith(shortened.removeprefix("system:..."))


def test_this_process_reads_once(tmp_path, tzpath):
    this_process.cache_clear()
    try:
        first = this_process()
        tzpath(zone_dir(tmp_path / "z", zi="# version 2099g\n"))
        assert this_process() is first  # the cached answer, not a second read
    finally:
        this_process.cache_clear()


def test_a_nodes_facts_are_its_release_and_zone_data_and_no_part_of_its_identity():
    facts = NodeFacts.of_this_process()
    zone = this_process()
    assert facts == NodeFacts(__version__, zone.source, zone.version)
    plain = Holder("node-a", "g", 1, "nonce")
    assert Holder("node-a", "g", 1, "nonce", facts) == plain
    assert hash(Holder("node-a", "g", 1, "nonce", facts)) == hash(plain)


def node(label: str, source: str | None, version: str | None) -> NodeZoneData:
    return NodeZoneData(label, source, version)


def test_no_warning_when_every_node_reports_the_same_version_from_any_source():
    nodes = [node("a", "system:/usr/share/zoneinfo", "2024a"), node("b", "tzdata", "2024a")]
    assert differ_warning(nodes) is None
    assert list(by_version(nodes)) == ["2024a"]


def test_nodes_of_older_releases_and_unknown_versions_are_no_warning_by_themselves():
    nodes = [node("a", "tzdata", "2024a"), node("old", None, None),
             node("odd", "system:/x", "unknown")]
    assert differ_warning(nodes) is None


def test_the_warning_names_which_nodes_use_which_version_and_what_can_happen():
    nodes = [node("a", "system:/usr/share/zoneinfo", "2024a"), node("b", "tzdata", "2025b"),
             node("c", "tzdata", "2024a"), node("old", None, None)]
    warning = differ_warning(nodes)
    assert warning is not None
    assert warning.startswith("warning: live nodes use different time-zone data: ")
    assert "2024a (system:/usr/share/zoneinfo, tzdata) on a, c; 2025b (tzdata) on b." in warning
    assert "different instants on different nodes" in warning
    assert "old" not in warning.split(". Cron")[0]
