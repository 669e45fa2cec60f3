"""`supervisor healthcheck`: asks /healthz on the metrics address the file configures."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from supervisor.cli import main


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path == "/healthz"
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b"ok" if ok else b"")

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def answering() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def config(tmp_path: Path, metrics: str) -> Path:
    path = tmp_path / "supervisor.toml"
    path.write_text(f'[metrics]\n{metrics}\n[workers.w]\ncommand = ["true"]\n')
    return path


def healthcheck(path: Path, **env: str) -> tuple[int, str]:
    done = CliRunner().invoke(main, ["healthcheck", "-c", str(path), "--timeout", "2"], env=env)
    return done.exit_code, done.output


def test_a_supervisor_answering_on_the_files_port_is_healthy(tmp_path, answering) -> None:
    code, output = healthcheck(config(tmp_path, f"port = {answering}"))
    assert (code, output.strip()) == (0, f"healthy: http://127.0.0.1:{answering}/healthz")


def test_the_port_follows_a_supervisor_variable_too(tmp_path, answering) -> None:
    code, _ = healthcheck(config(tmp_path, "port = 1"), SUPERVISOR_METRICS__PORT=str(answering))
    assert code == 0


def test_nothing_listening_is_unhealthy(tmp_path) -> None:
    code, output = healthcheck(config(tmp_path, f"port = {free_port()}"))
    assert code == 1 and "unhealthy" in output


@pytest.mark.parametrize(("metrics", "why"), [("enabled = false", "metrics are disabled"),
                                             ("port = 0", "metrics.port is 0")])
def test_no_fixed_address_to_ask_is_a_config_problem(tmp_path, metrics: str, why: str) -> None:
    code, output = healthcheck(config(tmp_path, metrics))
    assert code == 2 and why in output
