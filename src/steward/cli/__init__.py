"""The `steward` command. Each module adds its commands to the one Typer app:
`run` (run, api, worker, beat, migrate), `users` (user ...), `doctor`."""

from __future__ import annotations

from steward.cli import doctor, run, users
from steward.cli.common import cli

__all__ = ["cli", "doctor", "main", "run", "users"]


def main() -> None:
    cli()
