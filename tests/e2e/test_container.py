"""The container image: its Dockerfiles lint clean, and what they install runs as PID 1.

No Docker engine runs here, so the image is built by performing its Dockerfile's steps
(tests/support/dockerfile.py) into a directory standing for its root filesystem: the
base image's, then the derived example's (examples/container/, the user's own worker
package). The image's ENTRYPOINT + CMD then runs as PID 1 of a new PID namespace, as in
a container, judged on what a container runtime would see.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Running, wait_until
from tests.support.dockerfile import Image, instructions, new_image
from tests.support.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "examples" / "container" / "Dockerfile"]
ORPHAN_SECONDS = "2.71828"  # the orphan's `sleep` argument: how the test finds it in /proc
# A worker whose shell leaves an orphan behind: the subshell exits at once, and the
# kernel re-parents its background `sleep` to PID 1, which must reap it when it ends.
ORPHAN_WORKER = f"""
[workers.orphan-maker]
command = ["sh", "-c", "(exec sleep {ORPHAN_SECONDS} &); exec sleep 1000"]
restart = "never"
stop_timeout = "5s"
"""


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_passes_the_dockerfile_at_its_default_threshold(dockerfile: Path) -> None:
    hadolint = require_tool("hadolint")
    done = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_fails_a_dockerfile_left_as_root_with_unpinned_packages() -> None:
    """The lint can fail: a final USER root and unpinned pip packages are findings."""
    hadolint = require_tool("hadolint")
    bad = "FROM python:3.11-slim\nUSER root\nRUN pip install requests\n"
    done = subprocess.run([hadolint, "--no-color", "-"], input=bad, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode != 0, done.stdout


def test_the_image_runs_as_a_numeric_non_root_user_with_deps_before_the_source() -> None:
    steps = instructions((ROOT / "Dockerfile").read_text())
    users = [rest for word, rest in steps if word == "USER"]
    assert users == ["10001:10001"], users
    base = next(rest for word, rest in steps if word == "FROM")
    assert base.startswith("python:3.11.") and base != "python:3.11-slim", base
    deps = steps.index(("RUN", "sh install.sh deps"))
    source = steps.index(("COPY", "--chown=10001:10001 supervisor ./supervisor"))
    assert deps < source < steps.index(("RUN", "sh install.sh app")), steps
    labels = [rest for word, rest in steps if word == "LABEL"]
    assert "org.opencontainers.image.title" in " ".join(labels), labels


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/status") as fh:
                if f"\nPPid:\t{pid}\n" in fh.read():
                    found.append(int(entry))
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def _healthcheck(image: Image, env: dict[str, str]) -> int:
    return subprocess.run(image.healthcheck, env=env, capture_output=True, timeout=30,
                          check=False).returncode


def _build(tmp_path: Path) -> Image:
    image = new_image(tmp_path / "rootfs")
    image.build(ROOT / "Dockerfile", ROOT)
    image.build(ROOT / "examples" / "container" / "Dockerfile", ROOT / "examples" / "container")
    return image


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_image_built_from_its_steps_runs_as_pid_1_reaps_orphans_and_stops_on_sigterm(
        tmp_path: Path) -> None:
    unshare = require_tool("unshare")
    image = _build(tmp_path)
    # the root-only step is the user's creation, nothing that installs
    assert [step for step in image.root_steps if "pip" in step] == [], image.root_steps
    assert image.user == "10001:10001"
    # both database drivers, the extras `postgres` and `mysql`: one image for every database
    drivers = subprocess.run([f"{image.env['VIRTUAL_ENV']}/bin/python", "-c",
                              "import psycopg, pymysql"], capture_output=True, text=True,
                             timeout=60, check=False)
    assert drivers.returncode == 0, drivers.stderr
    config = Path(image.cmd[-1])
    assert config.is_file(), image.cmd  # the derived image's COPY put its file there
    config.write_text(config.read_text() + ORPHAN_WORKER)
    port = _free_port()
    env = {k: v for k, v in image.env.items() if not k.startswith("SUPERVISOR_")}
    env.update(SUPERVISOR_METRICS__PORT=str(port), SUPERVISOR_METRICS__HOST="127.0.0.1",
               SUPERVISOR_NODE_ID="container-1")
    assert _healthcheck(image, env) != 0  # nothing listens yet: the check can fail
    argv = [unshare, "--pid", "--fork", "--mount-proc", *image.entrypoint, *image.cmd]
    running = Running(argv, env, image.workdir)
    try:
        running.expect(r"hello-fleet: hello up on node container-1", timeout=60)
        running.expect(r"hello-fleet: singleton up on node container-1", timeout=60,
                       after_start=True)
        pid1 = _children(running.proc.pid)
        assert len(pid1) == 1, pid1
        supervisor = pid1[0]
        orphans: list[int] = []

        def orphan_adopted() -> bool:
            orphans[:] = [pid for pid in _children(supervisor)
                          if _cmdline(pid) == ["sleep", ORPHAN_SECONDS]]
            return bool(orphans)

        wait_until(orphan_adopted, 30, "the orphaned sleep re-parented to the supervisor")
        wait_until(lambda: not os.path.exists(f"/proc/{orphans[0]}"), 30,
                   "the orphan reaped after it ended (no zombie left)")
        wait_until(lambda: _healthcheck(image, env) == 0, 30, "the HEALTHCHECK command to pass")
        started = time.monotonic()
        os.kill(supervisor, signal.SIGTERM)
        code = running.wait(timeout=30)
        took = time.monotonic() - started
    finally:
        if running.proc.poll() is None:
            running.kill_all()
        running.close()
    assert code == 0, running.text()
    assert took < 10, (took, running.text())  # within the largest stop_timeout (10 s)
    assert "hello-fleet: stopping cleanly" in running.text()
    assert _healthcheck(image, env) != 0

