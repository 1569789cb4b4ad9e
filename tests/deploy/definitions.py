"""The deployment files read as a deployer's machine would run them: each Steward service's
command, environment, working folder and writable folders, from compose (with the image's
Dockerfile), the Kubernetes manifests and the systemd units.

`localize` then maps what only exists in a container or on a server to this machine, and
nothing else: engine URLs to the suite's engines, the image's and the units' absolute paths
into a fresh folder standing for the container's or server's file system (so a folder the
definition never creates does not exist), ports to free ones, and /app or /opt/steward to
this checkout and its virtualenv."""

from __future__ import annotations

import json
import re
import secrets
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
VENV_BIN = ROOT / ".venv" / "bin"


@dataclass
class Service:
    source: str  # compose, kubernetes, systemd
    name: str  # api, worker, beat, migrate
    argv: list[str]
    env: dict[str, str]
    # Folders the definition provides (volumes, emptyDirs, RuntimeDirectory), as declared.
    provided: list[str] = field(default_factory=list)
    user: int | str | None = None


def _dockerfile() -> tuple[dict[str, str], list[str], str | None]:
    """The final stage's ENV, CMD and USER."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    final = text[text.rindex("\nFROM ") :]
    env: dict[str, str] = {}
    cmd: list[str] = []
    user: str | None = None
    for line in final.splitlines():
        if line.startswith("ENV "):
            for part in shlex.split(line[4:]):
                name, _, value = part.partition("=")
                env[name] = value
        elif line.startswith("CMD "):
            cmd = json.loads(line[4:])
        elif line.startswith("USER "):
            user = line[5:].strip()
    return env, cmd, user


def _role(argv: list[str]) -> str:
    joined = " ".join(argv)
    for role in ("migrate", "worker", "beat"):
        if re.search(rf"\b{role}\b", joined):
            return role
    return "api"


def compose() -> list[Service]:
    spec = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    image_env, image_cmd, image_user = _dockerfile()
    services = []
    for name, service in spec["services"].items():
        if service.get("image") != "steward:latest":
            continue
        argv = service.get("command") or image_cmd
        env = {**image_env, **{k: str(v) for k, v in service.get("environment", {}).items()}}
        provided = [entry.split(":")[0] for entry in service.get("tmpfs", [])]
        services.append(Service("compose", _role(argv), argv, env, provided, image_user))
        assert _role(argv) == name or name not in ("api", "worker", "beat", "migrate"), name
    return services


def kubernetes() -> list[Service]:
    documents = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "steward.yaml").read_text()) if d]
    config_maps = {d["metadata"]["name"]: d["data"] for d in documents if d["kind"] == "ConfigMap"}
    image_env, image_cmd, _ = _dockerfile()
    services = []
    for document in documents:
        if document["kind"] not in ("Deployment", "Job"):
            continue
        pod = document["spec"]["template"]["spec"]
        for container in pod["containers"]:
            env = dict(image_env)
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    env.update(config_maps[source["configMapRef"]["name"]])
                # secretRef: the Secret made at install time; `localize` supplies its keys.
            env.update({item["name"]: str(item["value"]) for item in container.get("env", [])})
            argv = container.get("command") or image_cmd
            provided = [mount["mountPath"] for mount in container.get("volumeMounts", [])]
            user = pod.get("securityContext", {}).get("runAsUser")
            services.append(Service("kubernetes", _role(argv), argv, env, provided, user))
    return services


def _unit(path: Path) -> dict[str, list[str]]:
    entries: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            entries.setdefault(key.strip(), []).append(value.strip())
    return entries


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines())
    return {p[0]: p[1] for p in pairs if len(p) == 2 and not p[0].startswith("#")}


def systemd(instance: str = "8001") -> list[Service]:
    services = []
    for path in sorted((DEPLOY / "systemd").glob("*.service")):
        unit = _unit(path)
        expand = lambda value: value.replace("%i", instance)  # noqa: E731
        env: dict[str, str] = {}
        for env_file in unit.get("EnvironmentFile", []):
            assert env_file == "/etc/steward/steward.env", env_file
            env.update(_env_file(DEPLOY / "systemd" / "steward.env.example"))
        for assignments in unit.get("Environment", []):
            for part in shlex.split(expand(assignments)):
                name, _, value = part.partition("=")
                env[name] = value
        argv = shlex.split(expand(unit["ExecStart"][0]))
        provided = [f"/run/{expand(d)}" for d in unit.get("RuntimeDirectory", [])]
        services.append(Service("systemd", _role(argv), argv, env, provided, unit["User"][0]))
    return services


def all_services() -> dict[str, list[Service]]:
    return {"compose": compose(), "kubernetes": kubernetes(), "systemd": systemd()}


def localize(
    service: Service, *, root: Path, database_url: str, redis_url: str, broker_url: str,
    ports: dict[str, int],
) -> tuple[list[str], dict[str, str]]:  # fmt: skip
    """The argv and environment to run `service` here (see the module's docstring)."""
    for folder in service.provided:
        (root / folder.lstrip("/")).mkdir(parents=True, exist_ok=True, mode=0o777)
        (root / folder.lstrip("/")).chmod(0o777)
    env: dict[str, Any] = dict(service.env)
    env.update(
        DATABASE_URL=database_url, REDIS_URL=redis_url, CELERY_BROKER_URL=broker_url,
        SECRET_KEY=secrets.token_hex(32),
    )  # fmt: skip
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)  # the collector is not part of this test
    if "PORT" in env or service.name == "api":
        env["PORT"] = str(ports["api"])
    if "WORKER_METRICS_PORT" in env:
        env["WORKER_METRICS_PORT"] = str(ports["worker_metrics"])
    for name, value in list(env.items()):
        if value.startswith(("/tmp/", "/run/", "/var/")):
            env[name] = str(root / value.lstrip("/"))
    env["PATH"] = f"{VENV_BIN}:/usr/bin:/bin"
    env["HOME"] = str(root / "home")  # none of the roles has a writable home
    argv = list(service.argv)
    program = argv[0].removeprefix("/opt/steward/.venv/bin/")
    argv[0] = str(VENV_BIN / program)
    return argv, {k: str(v) for k, v in env.items()}
