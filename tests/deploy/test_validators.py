"""The deployment files checked by their own validators, and for what a deployment needs:
compose against the Compose Specification, the Kubernetes manifests against the API schemas
(strict), the Dockerfile by hadolint, the units by systemd-analyze, the nginx site by
`nginx -t`, Prometheus' configuration and rules by promtool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.deploy.conftest import require_tool
from tests.deploy.definitions import DEPLOY, ROOT
from tests.deploy.nginx import check_config, configure

VENV_BIN = Path(sys.executable).parent


def _run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd)


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def test_compose_follows_the_compose_specification() -> None:
    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
    validator = jsonschema.Draft201909Validator(schema)  # the draft its $schema names
    errors = [
        f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(_compose())
    ]
    assert errors == []


def test_compose_brings_up_everything_with_its_files() -> None:
    services = _compose()["services"]
    assert {"api", "worker", "beat", "migrate", "postgres", "valkey", "rabbitmq", "nginx",
            "prometheus", "grafana", "otel-collector"} <= set(services)  # fmt: skip
    assert services["postgres"]["image"].startswith("pgvector/pgvector:")
    assert services["api"]["environment"]["CELERY_BROKER_URL"].startswith("amqp://")
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which is missing"
    grafana = DEPLOY / "grafana"
    assert list((grafana / "provisioning" / "datasources").glob("*.yml"))
    assert list((grafana / "provisioning" / "dashboards").glob("*.yml"))
    assert list((grafana / "dashboards").glob("*.json"))


def test_kubernetes_manifests_pass_strict_schema_validation() -> None:
    result = _run(str(VENV_BIN / "kubernetes-validate"), "--strict", "--quiet",
                  "deploy/k8s/steward.yaml")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_manifests_hold_what_a_cluster_needs() -> None:
    documents = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "steward.yaml").read_text()) if d]
    by_kind: dict[str, dict[str, Any]] = {}
    for document in documents:
        by_kind.setdefault(document["kind"], {})[document["metadata"]["name"]] = document
    deployments = by_kind["Deployment"]
    assert set(deployments) == {"steward-api", "steward-worker", "steward-beat"}
    assert deployments["steward-beat"]["spec"]["replicas"] == 1
    assert "steward-api" in by_kind["Service"] and "steward" in by_kind["ConfigMap"]
    assert set(by_kind["HorizontalPodAutoscaler"]) == {"steward-api", "steward-worker"}
    assert "steward-api" in by_kind["PodDisruptionBudget"]
    assert by_kind["Job"]["steward-migrate"]["spec"]["template"]["spec"]["containers"][0][
        "command"] == ["steward", "migrate"]  # fmt: skip
    api = deployments["steward-api"]["spec"]["template"]["spec"]["containers"][0]
    assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(api)
    assert api["readinessProbe"]["httpGet"]["path"] == "/ready"
    for kind in ("Deployment", "Job"):
        for name, document in by_kind[kind].items():
            pod = document["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, name
            for container in pod["containers"]:
                assert container["resources"]["requests"], name
                assert {"secretRef": {"name": "steward"}} in container["envFrom"], name
                assert container["securityContext"]["allowPrivilegeEscalation"] is False, name


def test_dockerfile_passes_hadolint() -> None:
    result = _run(str(VENV_BIN / "hadolint"), "deploy/Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    # A root file system holding the units, the programs they start and systemd's own units.
    root = tmp_path / "root"
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    shutil.copytree("/lib/systemd/system", root / "usr" / "lib" / "systemd" / "system",
                    symlinks=True)  # fmt: skip
    for program in ("gunicorn", "steward"):
        path = root / "opt" / "steward" / ".venv" / "bin" / program
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    (root / "bin").mkdir()
    shutil.copy("/bin/kill", root / "bin" / "kill")
    names = []
    for unit in (DEPLOY / "systemd").glob("*.service"):
        shutil.copy(unit, units / unit.name)
        names.append(unit.name.replace("@.", "@8001."))
    result = _run(analyze, "verify", f"--root={root}", *sorted(names), cwd=units)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_nginx_accepts_the_site(tmp_path: Path) -> None:
    binary = require_tool("nginx")
    site = configure(tmp_path, ["127.0.0.1:8001", "127.0.0.1:8002"])
    result = check_config(binary, site)
    assert result.returncode == 0, result.stderr
    text = (DEPLOY / "nginx" / "steward.conf").read_text()
    for directive in ("return 301 https://", "Strict-Transport-Security",
                      "/.well-known/acme-challenge/", "proxy_set_header Upgrade",
                      "X-Forwarded-For $remote_addr", "client_max_body_size"):  # fmt: skip
        assert directive in text, directive


def test_prometheus_configuration_and_rules(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    config = _run(promtool, "check", "config", "deploy/prometheus/prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    rules = _run(promtool, "check", "rules", "deploy/prometheus/alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    tests = _run(promtool, "test", "rules", "alerts_test.yml", cwd=DEPLOY / "prometheus")
    assert tests.returncode == 0, tests.stdout + tests.stderr


def test_the_dashboard_charts_only_metrics_that_exist() -> None:
    from tests.platform.test_metrics_catalogue import _catalogued

    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "steward.json").read_text())
    known = set(_catalogued())
    histograms = {name for name, (kind, _) in _catalogued().items() if kind == "histogram"}
    charted = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            for name in re.findall(r"\b(?:http|steward)_[a-z_]+\b", target["expr"]):
                base = re.sub(r"_(bucket|count|sum)$", "", name)
                assert name in known or base in histograms, (panel["title"], name)
                charted.add(name if name in known else base)
    assert charted == known, f"not on the dashboard: {sorted(known - charted)}"
