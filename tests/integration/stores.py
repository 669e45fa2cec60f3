"""Helpers shared by the store conformance suites (leases and cron)."""

from __future__ import annotations

import os
import secrets

import pytest

from supervisor.store import Holder

EPS = 1e-3  # times are stored with at least microsecond precision


def approx(value: float) -> object:
    return pytest.approx(value, abs=EPS)


def make_holder(node: str = "node-a", group: str = "g1") -> Holder:
    return Holder(node_id=node, group=group, pid=os.getpid(), nonce=secrets.token_hex(8))
