"""Debian's `prometheus` package in tests: promtool, and a real Prometheus server.

`require_tool` skips the calling test when the binary is missing, and fails it when
CI=true (.ci/run installs the package), as tests.databases.require_backend does for
database servers. `PrometheusServer` runs `prometheus` on a free loopback port with a
config the test writes, and answers PromQL through its HTTP API.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "supervisor" / "alerts.yml"
RULE_TESTS = REPO / "tests" / "data" / "alerts_test.yml"
DASHBOARD = REPO / "grafana" / "dashboard.json"


def require_tool(name: str) -> str:
    """The path of `name` (promtool, prometheus); skip without it, fail when CI=true."""
    path = shutil.which(name)
    if path is not None:
        return path
    reason = f"{name} is not installed (apt-get install prometheus)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: these tests must run, not skip)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusServer:
    """`prometheus` scraping `targets` every second with the shipped rules loaded."""

    def __init__(self, directory: Path, targets: list[str], *, interval: str = "1s") -> None:
        self.directory = directory
        self.port = free_port()
        config = directory / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {interval}\n"
            f"  evaluation_interval: {interval}\n"
            f"  scrape_timeout: {interval}\n"
            f"rule_files: [{json.dumps(str(RULES))}]\n"
            "scrape_configs:\n"
            "  - job_name: supervisor\n"
            f"    static_configs: [{{targets: {json.dumps(targets)}}}]\n"
        )
        self.log = (directory / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [require_tool("prometheus"), f"--config.file={config}",
             f"--storage.tsdb.path={directory / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=directory,
        )

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as exc:  # a bad query: say which, and why
            why = exc.read().decode(errors="replace")
            raise AssertionError(f"{path} {params}: {why}") from None
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else []
        return result

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("prometheus did not start:\n" + self.output()) from None
                time.sleep(0.1)

    def output(self) -> str:
        self.log.flush()
        return (self.directory / "prometheus.log").read_text(errors="replace")[-5000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
