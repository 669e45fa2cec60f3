"""Issue 12, no sockets: what the metrics endpoint accepts as a request head, and how
far `raise_nofile_limit` raises the supervisor's descriptor limit."""

from __future__ import annotations

import resource

import pytest

from supervisor import processes
from supervisor.http import _parse_head
from supervisor.processes import child_setup, raise_nofile_limit


@pytest.mark.parametrize(("head", "parsed"), [
    (b"GET /healthz HTTP/1.1\r\n\r\n", ("GET", "/healthz")),
    (b"HEAD /metrics?name[]=x HTTP/1.0\r\nHost: h:9464\r\nAccept: */*\r\n\r\n",
     ("HEAD", "/metrics?name[]=x")),
    (b"GET / HTTP/1.1\r\nX-Empty:\r\nX-Tab:\ta\r\nX-Latin: caf\xe9\r\n\r\n", ("GET", "/")),
])
def test_well_formed_heads(head: bytes, parsed: tuple[str, str]):
    assert _parse_head(head) == parsed


@pytest.mark.parametrize("head", [
    b"\r\n\r\n",
    b"get /healthz HTTP/1.1\r\n\r\n",
    b"GET  /healthz HTTP/1.1\r\n\r\n",
    b"GET /healthz HTTP/2.0\r\n\r\n",
    b"GET http://x/healthz HTTP/1.1\r\n\r\n",
    b"GET /a b HTTP/1.1\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\n continued\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nName : value\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nX: a\rb\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nX: \x1b[31m\r\n\r\n",
])
def test_malformed_heads(head: bytes):
    assert _parse_head(head) is None


class FakeLimits:
    def __init__(self, soft: int, hard: int, refuse: bool = False) -> None:
        self.limits, self.refuse = (soft, hard), refuse

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE
        if self.refuse:
            raise ValueError("not allowed")
        self.limits = limits


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    def install(soft: int, hard: int, refuse: bool = False) -> FakeLimits:
        fake = FakeLimits(soft, hard, refuse)
        monkeypatch.setattr(resource, "getrlimit", fake.getrlimit)
        monkeypatch.setattr(resource, "setrlimit", fake.setrlimit)
        return fake

    monkeypatch.setattr(processes.Limits, "child_nofile", None)
    return install


@pytest.mark.parametrize(("soft", "hard", "raised"), [
    (1024, 4096, 4096),  # up to the hard limit
    (1024, 1_048_576, 65536),  # bounded: a huge hard limit is not taken whole
    (1024, resource.RLIM_INFINITY, 65536),
])
def test_the_soft_limit_is_raised_to_the_hard_one_bounded(limits, soft, hard, raised):
    fake = limits(soft, hard)
    assert raise_nofile_limit() == (soft, raised)
    assert fake.limits == (raised, hard)  # the hard limit is never touched
    assert processes.Limits.child_nofile == soft  # children get it back


@pytest.mark.parametrize(("soft", "hard"), [
    (65536, 1_048_576),  # already at the bound
    (4096, 4096),  # nothing to raise
    (resource.RLIM_INFINITY, resource.RLIM_INFINITY),
])
def test_nothing_changes_when_there_is_nothing_to_raise(limits, soft, hard):
    fake = limits(soft, hard)
    assert raise_nofile_limit() == (soft, soft)
    assert fake.limits == (soft, hard)
    assert processes.Limits.child_nofile is None  # children inherit ours, which is theirs


def test_a_refused_raise_is_not_an_error(limits):
    limits(1024, 4096, refuse=True)
    assert raise_nofile_limit() == (1024, 1024)
    assert processes.Limits.child_nofile is None


def test_raising_twice_keeps_the_first_original_for_children(limits):
    fake = limits(1024, 8192)
    raise_nofile_limit(ceiling=2048)
    raise_nofile_limit()
    assert fake.limits == (8192, 8192)
    assert processes.Limits.child_nofile == 1024


def test_the_pre_exec_hook_lowers_the_soft_limit_only(limits, monkeypatch):
    fake = limits(65536, 1_048_576)
    monkeypatch.setattr(processes, "_prctl", None)  # no PDEATHSIG on the test process
    # Run here, not in a child: the parent pid it checks is this process's parent.
    child_setup(processes.os.getppid(), None, 1024)()
    assert fake.limits == (1024, 1_048_576)
