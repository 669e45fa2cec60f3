"""The deployment examples are valid for the tools that load them, offline.

examples/kubernetes/ against the Kubernetes API schemas (kubernetes-validate, strict),
examples/compose/ against the compose specification (check-jsonschema's vendored schema)
and Grafana's provisioning format, examples/systemd/ with `systemd-analyze verify`; every
supervisor.toml they carry passes `supervisor check`. Each validator is also shown a
broken file, so that a test that passes means the tool looked.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from supervisor.config import parse_config
from tests.conftest import SUPERVISOR_BIN
from tests.support.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "examples" / "kubernetes"
COMPOSE = ROOT / "examples" / "compose"
UNIT = ROOT / "examples" / "systemd" / "fleet-supervisor.service"
# 1.31: the first release where unhealthyPodEvictionPolicy is GA; 1.37: the newest shipped.
KUBERNETES_VERSIONS = ["1.31.0", "1.37.0"]


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kube(kind: str) -> dict[str, Any]:
    found = [doc for path in sorted(KUBE.glob("*.yaml")) for doc in _documents(path)
             if doc["kind"] == kind]
    assert len(found) == 1, (kind, found)
    return found[0]


def _check(toml: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "supervisor.toml"
    path.write_text(toml)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_")}
    return subprocess.run([str(SUPERVISOR_BIN), "check", "-c", str(path)], env=clean | env,
                          capture_output=True, text=True, timeout=60, check=False)


def _largest_stop_timeout(toml: str) -> float:
    settings = parse_config(toml, environ={})
    return max(worker.stop_timeout for worker in settings.workers.values())


# --- Kubernetes -----------------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_kubernetes_manifests_validate_strictly_against_the_api_schemas(
        version: str) -> None:
    tool = require_tool("kubernetes-validate")
    files = sorted(str(p) for p in KUBE.glob("*.yaml"))
    assert len(files) == 4, files
    done = subprocess.run([tool, "--strict", "-k", version, *files], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(" passed ") == 4, done.stdout


def test_kubernetes_validate_refuses_a_field_the_api_does_not_have(tmp_path: Path) -> None:
    tool = require_tool("kubernetes-validate")
    pdb = (KUBE / "pdb.yaml").read_text().replace("unhealthyPodEvictionPolicy",
                                                  "unhealthyPodEvictionPolicyy")
    (tmp_path / "pdb.yaml").write_text(pdb)
    done = subprocess.run([tool, "--strict", "-k", KUBERNETES_VERSIONS[0],
                           str(tmp_path / "pdb.yaml")], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode != 0, done.stdout + done.stderr


def test_the_configmaps_toml_passes_supervisor_check_with_the_pods_environment(
        tmp_path: Path) -> None:
    toml = _kube("ConfigMap")["data"]["supervisor.toml"]
    done = _check(toml, tmp_path, SUPERVISOR_NODE_ID="fleet-supervisor-eu-7d9c-x2x4z",
                  SUPERVISOR_GROUP="eu",
                  SUPERVISOR_DATABASE_URL=_kube("Secret")["stringData"]["url"])
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_deployment_names_each_node_after_its_pod_and_its_group_after_a_label() -> None:
    pod = _kube("Deployment")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {item["name"]: item.get("valueFrom", {}) for item in container["env"]}
    assert env["SUPERVISOR_NODE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    label = re.fullmatch(r"metadata\.labels\['(.+)'\]",
                         env["SUPERVISOR_GROUP"]["fieldRef"]["fieldPath"])
    assert label and label[1] in pod["metadata"]["labels"], env
    assert env["SUPERVISOR_DATABASE_URL"]["secretKeyRef"]["name"] == \
        _kube("Secret")["metadata"]["name"]


def test_the_deployment_probes_health_and_readiness_and_is_scraped_on_the_metrics_port() -> None:
    pod = _kube("Deployment")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    port = parse_config(_kube("ConfigMap")["data"]["supervisor.toml"], environ={}).metrics.port
    assert container["ports"] == [{"name": "metrics", "containerPort": port}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)


def test_the_pods_stop_time_is_above_the_largest_stop_timeout_and_drains_are_never_blocked(
        ) -> None:
    pod = _kube("Deployment")["spec"]["template"]["spec"]
    largest = _largest_stop_timeout(_kube("ConfigMap")["data"]["supervisor.toml"])
    assert pod["terminationGracePeriodSeconds"] > largest + 5, largest
    pdb = _kube("PodDisruptionBudget")["spec"]
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert pdb["selector"]["matchLabels"] == \
        _kube("Deployment")["spec"]["selector"]["matchLabels"]


def test_the_pod_runs_as_user_10001_without_privileges_on_a_read_only_root() -> None:
    pod = _kube("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    # the image's working directory (Dockerfile: WORKDIR /var/lib/supervisor) is writable
    assert mounts["/var/lib/supervisor"] in empty and mounts["/tmp"] in empty, mounts


# --- compose and Grafana ------------------------------------------------------------------

def test_the_compose_file_validates_against_the_compose_specification() -> None:
    tool = require_tool("check-jsonschema")
    done = subprocess.run([tool, "--builtin-schema", "vendor.compose-spec",
                           str(COMPOSE / "compose.yaml")], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_schema_refuses_a_misspelt_key(tmp_path: Path) -> None:
    tool = require_tool("check-jsonschema")
    broken = (COMPOSE / "compose.yaml").read_text().replace("stop_grace_period:",
                                                            "stop_grace_periods:")
    (tmp_path / "compose.yaml").write_text(broken)
    done = subprocess.run([tool, "--builtin-schema", "vendor.compose-spec",
                           str(tmp_path / "compose.yaml")], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode != 0, done.stdout


def test_the_compose_fleet_is_three_nodes_in_two_groups_scraped_by_prometheus_with_the_rules(
        tmp_path: Path) -> None:
    compose = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    services = compose["services"]
    nodes = {name: s for name, s in services.items() if name.startswith("node-")}
    groups = {s["environment"]["SUPERVISOR_GROUP"] for s in nodes.values()}
    assert len(nodes) == 3 and len(groups) == 2, nodes
    assert "postgres" in services["node-1"]["depends_on"]
    toml = (COMPOSE / "supervisor.toml").read_text()
    url = services["node-1"]["environment"]["SUPERVISOR_DATABASE_URL"]
    assert _check(toml, tmp_path, SUPERVISOR_DATABASE_URL=url).returncode == 0
    grace = services["node-1"]["stop_grace_period"]
    assert int(grace.removesuffix("s")) > _largest_stop_timeout(toml)
    prometheus = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    port = parse_config(toml, environ={}).metrics.port
    assert sorted(job["static_configs"][0]["targets"]) == [f"{n}:{port}" for n in sorted(nodes)]
    mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"])
    assert mounts["../../config/alerts.yml"] in prometheus["rule_files"]
    for source in [*mounts, *(v.split(":")[0] for v in services["grafana"]["volumes"])]:
        assert (COMPOSE / source).resolve().is_relative_to(ROOT), source


def test_grafanas_provisioning_files_have_what_a_stock_grafana_loads() -> None:
    compose = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    volumes = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    provisioning = COMPOSE / next(s for s, t in volumes.items()
                                  if t == "/etc/grafana/provisioning")
    (datasources,) = [yaml.safe_load(p.read_text())
                      for p in (provisioning / "datasources").glob("*.yaml")]
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy"
    assert source["url"] == "http://prometheus:9090" and source["name"]
    (dashboards,) = [yaml.safe_load(p.read_text())
                     for p in (provisioning / "dashboards").glob("*.yaml")]
    assert dashboards["apiVersion"] == 1
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file" and provider["name"]
    # the provider's folder is where compose mounts the shipped dashboard
    dashboard = next(s for s, t in volumes.items() if t.endswith(".json"))
    assert (COMPOSE / dashboard).resolve() == ROOT / "grafana" / "dashboard.json"
    target = next(t for t in volumes.values() if t.endswith(".json"))
    assert Path(target).parent == Path(provider["options"]["path"])


# --- systemd ------------------------------------------------------------------------------

def _unit(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` on the unit with ExecStart pointed at this venv's supervisor
    (the unit's /opt/fleet-supervisor/bin/supervisor does not exist here)."""
    tool = require_tool("systemd-analyze")
    path = tmp_path / UNIT.name
    path.write_text(text.replace("/opt/fleet-supervisor/bin/supervisor", str(SUPERVISOR_BIN)))
    return subprocess.run([tool, "verify", "--man=no", str(path)], capture_output=True,
                          text=True, timeout=120, check=False)


def test_systemd_analyze_verifies_the_unit_without_a_warning(tmp_path: Path) -> None:
    done = _unit(tmp_path, UNIT.read_text())
    assert done.returncode == 0, done.stderr
    assert UNIT.name not in done.stdout + done.stderr, done.stdout + done.stderr


def test_systemd_analyze_warns_about_a_misspelt_setting(tmp_path: Path) -> None:
    done = _unit(tmp_path, UNIT.read_text().replace("KillMode=mixed", "KillMode=mixd"))
    assert "mixd" in done.stdout + done.stderr, done.stdout + done.stderr


def test_the_unit_lets_the_supervisor_stop_its_children_before_systemd_kills_any() -> None:
    service = _unit_settings(UNIT.read_text())
    assert service["KillMode"] == "mixed" and service["Restart"] == "on-failure"
    assert service["Type"] in ("exec", "simple")  # no sd_notify: readiness is /readyz
    assert service["User"] and service["User"] != "root"
    assert service["EnvironmentFile"].lstrip("-")
    toml = (ROOT / "config" / "supervisor.toml").read_text()
    assert int(service["TimeoutStopSec"]) > _largest_stop_timeout(toml)
    assert service["ExecStart"].split()[1:3] == ["run", "-c"]


def _unit_settings(text: str) -> dict[str, str]:
    section = text.split("[Service]", 1)[1].split("\n[", 1)[0]
    settings = {}
    for line in section.splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            settings[key] = value
    return settings


def test_every_shipped_example_config_parses() -> None:
    for path in [COMPOSE / "supervisor.toml", ROOT / "examples" / "container" / "supervisor.toml"]:
        tomllib.loads(path.read_text())
        parse_config(path.read_text(), environ={})
