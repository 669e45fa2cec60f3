"""The shipped examples do what their comments say."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import SUPERVISOR_BIN

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_cron_fleet_example_runs_max_run_per_tick_across_three_supervisors(
        tmp_path: Path) -> None:
    work = tmp_path / "examples"
    shutil.copytree(EXAMPLES, work, ignore=shutil.ignore_patterns("*.db*", "*.log"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_")}
    env.update(SUPERVISOR=str(SUPERVISOR_BIN), SUPERVISOR_METRICS__ENABLED="false")
    # 14 s: three supervisors start in 1 to 5 s on a loaded 2-core machine, and the test needs
    # at least one tick between the first and the last that all three were up for
    done = subprocess.run(["sh", str(work / "cron-fleet.sh"), "14"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    logs = "\n".join(p.read_text() for p in sorted(work.glob("node-*.log")))
    assert done.returncode == 0, done.stdout + done.stderr + logs
    assert "succeeded" in done.stdout, done.stdout
    history = subprocess.run(
        [str(SUPERVISOR_BIN), "history", "-c", "cron.toml", "report", "--json"],
        env=env, cwd=work, capture_output=True, text=True, timeout=30, check=True)
    runs: dict[str, list[dict[str, object]]] = defaultdict(list)
    for row in json.loads(history.stdout):
        if row["kind"] == "run" and row["slot"] != -1:
            runs[str(row["tick"])].append(row)
    assert len(runs) >= 3, history.stdout + logs
    for tick, rows in runs.items():
        assert len(rows) <= 2, (tick, rows)
        assert len({r["node_id"] for r in rows}) == len(rows), (tick, rows)
    # the ticks after the first and before the last: all three were up, so exactly two
    inner = sorted(runs)[1:-1]
    assert inner, history.stdout
    for tick in inner:
        assert len(runs[tick]) == 2, (tick, runs[tick], logs)
