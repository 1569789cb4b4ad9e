"""docs/OPERATIONS.md lists every metric Steward exposes, with its type and labels: adding,
renaming or relabelling one without the catalogue fails here."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

from prometheus_client import REGISTRY

import steward
from steward.jobs.metrics import QueueDepth

CATALOGUE = Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md"
ROW = re.compile(
    r"^\| `(?P<name>[a-z_]+)` \| (?P<type>\w+) \| (?P<labels>[^|]+) \| (?P<meaning>[^|]+) \|$"
)


def _exposed() -> dict[str, tuple[str, tuple[str, ...]]]:
    for module in pkgutil.walk_packages(steward.__path__, "steward."):
        if module.name != "steward.__main__":
            importlib.import_module(module.name)
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for collector in list(REGISTRY._collector_to_names):
        name = getattr(collector, "_name", None)
        if not name or not name.startswith(("steward_", "http_")):
            continue
        kind = collector._type  # type: ignore[attr-defined]
        full = f"{name}_total" if kind == "counter" else name
        found[full] = (kind, tuple(collector._labelnames))  # type: ignore[attr-defined]
    for family in QueueDepth("redis://unused", ()).describe():
        found[family.name] = (family.type, ("queue",))
    return found


def _catalogued() -> dict[str, tuple[str, tuple[str, ...]]]:
    rows = {}
    for line in CATALOGUE.read_text().splitlines():
        if match := ROW.match(line):
            labels = match["labels"].strip()
            names = () if labels == "-" else tuple(p.strip() for p in labels.split(","))
            rows[match["name"]] = (match["type"], names)
    return rows


def test_every_metric_is_catalogued_with_its_type_and_labels() -> None:
    exposed, catalogued = _exposed(), _catalogued()
    assert len(exposed) > 25
    assert exposed == catalogued
