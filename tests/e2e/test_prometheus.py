"""Against a real Prometheus (Debian's `prometheus`): three supervisors in two groups on
PostgreSQL, running every mode, scraped every second with the shipped rules loaded.

- Each node's live /metrics passes `promtool check metrics`, and answers OpenMetrics to
  a scraper that asks for it.
- Every PromQL expression of the dashboard (its variables set to "All") and every metric
  selector of the rules returns data, and every rule evaluates without error; the names
  they read are exported by the live nodes, and every family the nodes export is on a
  dashboard panel.
- East's group leader node stops while its only peer is cut off from the database:
  SupervisorNoLeader goes pending and fires only after its `for:` window (30 s). The
  global leader, on the same node, is handed over to the west node meanwhile:
  SupervisorTwoLeaders never fires, and no "no leader" fires for it.

About 60 s, most of it the no-leader window; not `serial`: nothing here is judged against
load except that window's lower bound, which only a faster-than-promised alert breaks.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.support.fleet import Fleet, Node, ProbeLog, _toml, made_fleets
from tests.support.prometheus import DASHBOARD, RULES, PrometheusServer, require_tool

pytestmark = pytest.mark.slow

NO_LEADER_FOR = 30.0  # supervisor/alerts.yml, SupervisorNoLeader's `for:`
SLACK = 15.0  # a few scrapes and evaluations, process start-up on a loaded machine

# Dashboard expressions with no data on a healthy fleet, and why. (None: every panel has
# data, because every series a panel needs exists from the start.)
ONLY_AFTER_A_FAILURE: dict[str, str] = {}

WORKERS = """
[workers.web]
command = ["sleep", "100000"]

[workers.glead]
command = ["sleep", "100000"]
mode = "global-leader"

[workers.gl]
command = ["sleep", "100000"]
mode = "group-leader"

[workers.tick]
command = ["true"]
mode = "cron"
cron = "@every 2s"

[workers.coord]
command = ["sleep", "100000"]
mode = "coordinated"
stable_window = "1s"
"""


class MetricsFleet(Fleet):
    """Nodes with metrics on a free loopback port and a worker of every mode."""

    def config(self, name: str, *, group: str, mode: str, probe: ProbeLog, database_url: str,
               worker_env: Mapping[str, str]) -> str:
        return (f"node_id = {_toml(name)}\n"
                f"group = {_toml(group)}\n"
                f"database_url = {_toml(database_url)}\n\n"
                f"{self.timings.toml()}\n"
                '[metrics]\nhost = "127.0.0.1"\nport = 0\n'
                + WORKERS)


@pytest.fixture
def fleet(tmp_path: Path, pg_url: str) -> Iterator[MetricsFleet]:
    with made_fleets(lambda: MetricsFleet(tmp_path, pg_url)) as make:
        yield make()


def metrics_address(node: Node) -> str:
    """host:port of the node's metrics endpoint (it listens on port 0 and says which)."""
    return node.expect(r"metrics on http://[\d.]+:\d+").rsplit("/", 1)[-1]


def scrape(address: str, accept: str = "") -> tuple[str, str]:
    request = urllib.request.Request(f"http://{address}/metrics",
                                     headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=5) as answer:
        return answer.read().decode(), answer.headers["Content-Type"]


def wait_for_sample(address: str, pattern: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, scrape(address)[0], re.M):
        if time.monotonic() > deadline:
            raise AssertionError(f"{address}: no {pattern!r} after {timeout}s")
        time.sleep(0.2)


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) with the variables set to All and Grafana's intervals fixed."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = re.sub(r"\$(job|instance|group|worker)\b", ".*", target["expr"])
            expr = expr.replace("$__rate_interval", "15s").replace("$__range", "5m")
            found.append((panel["title"], expr))
    return found


def variable_queries() -> list[tuple[str, str, str]]:
    """(variable, selector, label) of each `label_values(selector, label)` variable."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((.*), (\w+)\)", var["definition"])
            assert match is not None, var["definition"]
            found.append((var["name"], re.sub(r"\$\w+", ".*", match[1]), match[2]))
    return found


def rule_selectors() -> set[str]:
    """Every metric selector (name and matchers) the rules read."""
    text = re.sub(r"^\s*#.*$", "", RULES.read_text(), flags=re.M)
    return set(re.findall(r"\bsupervisor_[a-z0-9_]+(?:\{[^}]*\})?", text))


def exported_families(bodies: list[str]) -> set[str]:
    return {m for body in bodies for m in re.findall(r"^# TYPE (\S+) ", body, re.M)}


def exported_names(bodies: list[str]) -> set[str]:
    return {m for body in bodies for m in re.findall(r"^(supervisor_[a-z0-9_]+)", body, re.M)}


def check_live_endpoints(addresses: list[str]) -> list[str]:
    """promtool check metrics on every node; OpenMetrics when asked. The text bodies."""
    promtool = require_tool("promtool")
    bodies = []
    for address in addresses:
        body, content_type = scrape(address)
        assert content_type.startswith("text/plain"), content_type
        done = subprocess.run([promtool, "check", "metrics"], input=body, text=True,
                              capture_output=True, timeout=30, check=False)
        assert done.returncode == 0, f"{address}: {done.stdout}{done.stderr}"
        assert "_created" not in body
        open_body, open_type = scrape(address, "application/openmetrics-text;version=1.0.0,"
                                      "text/plain;version=0.0.4;q=0.5")
        assert open_type.startswith("application/openmetrics-text"), open_type
        assert open_body.endswith("# EOF\n")
        bodies.append(body)
    return bodies


def check_names(bodies: list[str]) -> None:
    families, names = exported_families(bodies), exported_names(bodies)
    used = {n for _, expr in dashboard_exprs() for n in re.findall(r"supervisor_[a-z0-9_]+", expr)}
    used |= {s.split("{")[0] for s in rule_selectors()}
    assert used - names == set(), "the dashboard or the rules read names no node exports"
    shown = {n for _, expr in dashboard_exprs() for n in re.findall(r"supervisor_[a-z0-9_]+", expr)}
    missing = {f for f in families if not any(n == f or n.startswith(f + "_") for n in shown)}
    assert missing == set(), "families the nodes export that no dashboard panel shows"


def wait_for_data(prom: PrometheusServer, timeout: float) -> dict[str, str]:
    """Poll every dashboard expression, variable and rule selector until all have data
    (or the deadline): what is still empty, each with where it comes from."""
    deadline = time.monotonic() + timeout
    while True:
        empty: dict[str, str] = {}
        for title, expr in dashboard_exprs():
            if expr not in ONLY_AFTER_A_FAILURE and not prom.query(expr):
                empty[expr] = f"dashboard panel {title!r}"
        for name, selector, label in variable_queries():
            if not any(label in r["metric"] for r in prom.query(selector)):
                empty[selector] = f"dashboard variable {name}"
        for selector in rule_selectors():
            if not prom.query(selector):
                empty[selector] = "alert rules"
        if not empty or time.monotonic() > deadline:
            return empty
        time.sleep(1.0)


def alerts(prom: PrometheusServer) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = prom.api("alerts")["alerts"]
    return found


def test_dashboard_and_rules_on_a_real_prometheus(fleet: MetricsFleet, tmp_path: Path) -> None:
    require_tool("prometheus")
    n1 = fleet.node("n1", group="east")
    a1 = metrics_address(n1)
    # n1 first, so that it holds both the group lease of east and the global lease.
    wait_for_sample(a1, r'^supervisor_leader\{group="east",worker="gl"\} 1\.0$', 20)
    wait_for_sample(a1, r'^supervisor_leader\{group="east",worker="glead"\} 1\.0$', 20)
    n2 = fleet.node("n2", group="east", via_proxy=True)
    n3 = fleet.node("n3", group="west")
    addresses = [a1, metrics_address(n2), metrics_address(n3)]
    check_live_endpoints(addresses)

    prom = PrometheusServer(tmp_path, addresses)
    try:
        prom.wait_ready()
        empty = wait_for_data(prom, timeout=30)
        assert empty == {}, f"no data on a healthy fleet: {empty}\n{prom.output()}"
        check_names(check_live_endpoints(addresses))  # the fleet has run every mode now
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        assert len(rules) >= 10
        bad = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
        assert bad == {}, f"rules that do not evaluate: {bad}"
        assert [a for a in alerts(prom) if a["state"] == "firing"] == []

        # East's leader stops while its only peer cannot reach the database.
        assert n2.proxy is not None
        n2.proxy.blackhole()
        n1.running.signal(signal.SIGTERM)
        stopped = time.monotonic()
        fired = watch_alerts(prom, stopped, timeout=NO_LEADER_FOR + 2 * SLACK)
    finally:
        prom.close()
    print(f"SupervisorNoLeader fired {fired:.1f}s after the leader's node was stopped")
    assert fired >= NO_LEADER_FOR - 2.0, f"SupervisorNoLeader fired after {fired:.1f}s"
    wait_for_sample(addresses[2], r'^supervisor_leader\{group="west",worker="glead"\} 1\.0$', 5)
    assert n1.running.wait(timeout=20) == 0


def watch_alerts(prom: PrometheusServer, stopped: float, timeout: float) -> float:
    """Until SupervisorNoLeader fires for gl in east: how long after the stop it did.
    Meanwhile SupervisorTwoLeaders never fires, nor "no leader" for anything else."""
    pending_seen = False
    while True:
        now = alerts(prom)
        two = [a for a in now if a["labels"]["alertname"] == "SupervisorTwoLeaders"
               and a["state"] == "firing"]
        assert two == [], f"two leaders fired: {two}"
        no_leader = [a for a in now if a["labels"]["alertname"] == "SupervisorNoLeader"]
        others = [a for a in no_leader if a["state"] == "firing" and (
            a["labels"].get("worker") != "gl" or a["labels"].get("group") != "east")]
        assert others == [], f"no leader fired for a worker that was handed over: {others}"
        states = {a["state"] for a in no_leader}
        pending_seen |= "pending" in states
        if "firing" in states:
            assert pending_seen, "SupervisorNoLeader fired without going pending first"
            return time.monotonic() - stopped
        if time.monotonic() - stopped > timeout:
            raise AssertionError(f"SupervisorNoLeader did not fire within {timeout}s: {now}\n"
                                 + prom.output())
        time.sleep(0.5)
