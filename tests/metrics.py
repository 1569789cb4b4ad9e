"""Reading Prometheus expositions in tests."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def sample(exposition: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` whose labels include `labels` (summed when several
    match, as for a multiprocess gauge), or None when there is none."""
    values = [
        s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return sum(values) if values else None
