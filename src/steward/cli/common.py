"""What every `steward` command shares: the Typer app, the console, settings that refuse to
start when wrong, and `engines_for()`, which finds PostgreSQL and Redis for an operator's
command in every mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from steward.settings import ConfigError, Settings, get_settings

cli = typer.Typer(
    help="Steward: a production backend for mobile apps and AI agents.",
    no_args_is_help=True,
    add_completion=False,
)
# Progress and verdicts go to stderr; what a script may read (tables) to stdout.
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def settings_or_exit() -> Settings:
    try:
        settings = get_settings()
        settings.check_production()
    except ConfigError as exc:
        console.print(f"[red]steward: refusing to start:[/red] {exc}")
        raise typer.Exit(3) from None
    except ValueError as exc:
        first = str(exc).splitlines()
        console.print(f"[red]steward: invalid settings:[/red] {' '.join(first[:3])}")
        raise typer.Exit(3) from None
    return settings


def settings_with_engines() -> Settings:
    """Settings for a process that `steward run` (or a deployment) gives the URLs to."""
    settings = settings_or_exit()
    try:
        settings.require_engines()
    except ConfigError as exc:
        console.print(f"[red]steward: {exc}[/red]")
        raise typer.Exit(3) from None
    return settings


def configure_logs(settings: Settings) -> None:
    from steward.platform.logging import configure_logging

    configure_logging(level=settings.log_level, json=settings.json_logs)


@contextmanager
def engines_for(settings: Settings, *, migrate: bool = True) -> Iterator[Settings]:
    """Settings with database and Redis URLs for an operator's command (`steward user`,
    `steward migrate`): the configured URLs; else the engines of the `steward run` that
    holds the data folder; else the embedded engines, started for this command only (and
    migrated, when `migrate`, so that a fresh folder works) and stopped after it."""
    if settings.database_url and settings.redis_url:
        yield settings
        return
    from steward.engines import EmbeddedEngines, EngineError, running

    found = running(settings.data_dir)
    if found is not None:
        console.print(
            f"[dim]using the embedded engines of the steward run in {settings.data_dir} "
            f"(pid {found.pid})[/dim]"
        )
        yield with_urls(settings, found.urls.database_url, found.urls.redis_url)
        return
    engines = EmbeddedEngines(settings.data_dir)
    try:
        with console.status(f"starting the embedded engines in {engines.data_dir}"):
            urls = engines.start()
            if migrate:
                from steward.platform import migrations

                migrations.upgrade(urls.database_url)
    except EngineError as exc:
        console.print(f"[red]steward: {exc}[/red]")
        raise typer.Exit(2) from None
    try:
        yield with_urls(settings, urls.database_url, urls.redis_url)
    finally:
        engines.stop()


def with_urls(settings: Settings, database_url: str, redis_url: str) -> Settings:
    """`settings` with these engine URLs wherever it has none of its own."""
    return settings.model_copy(update={"database_url": settings.database_url or database_url,
                                       "redis_url": settings.redis_url or redis_url})  # fmt: skip
