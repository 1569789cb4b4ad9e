"""`steward doctor`: is this installation fit to run? Each check gives a verdict (ok, warn,
fail) and says what to do; the exit code is 1 when any check fails.

Checks: configuration, where the engines are, PostgreSQL (and pgvector), migrations, Redis,
the broker, each assistant and embedding provider, and whether an API answers on HOST:PORT.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import typer
from rich.table import Table

from steward.cli.common import cli, console, out, settings_or_exit, with_urls
from steward.settings import DEFAULT_SECRET_KEY, ConfigError, Settings
from steward.settings_providers import ProviderConfig

Verdict = Literal["ok", "warn", "fail"]
_MARK = {
    "ok": "[green]✓ ok[/green]",
    "warn": "[yellow]! warn[/yellow]",
    "fail": "[red]✗ fail[/red]",
}
CHECK_TIMEOUT_S = 5.0
_OFFLINE = {
    "assistant": "offline (ASSISTANT_PROVIDERS unset): deterministic replies, no network",
    "embedder": "offline (EMBEDDING_PROVIDERS unset): WordLlama in-process, fine to try, "
    "weaker than a hosted model",
}


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    verdict: Verdict
    detail: str


def _configuration(settings: Settings) -> Finding:
    try:
        settings.check_production()
    except ConfigError as exc:
        return Finding("configuration", "fail", str(exc))
    if settings.secret_key.get_secret_value() == DEFAULT_SECRET_KEY:
        return Finding("configuration", "warn",
                       f"{settings.environment.value}; SECRET_KEY is the built-in default "
                       "(fine on a laptop, refused in production)")  # fmt: skip
    return Finding("configuration", "ok", f"{settings.environment.value} environment")


def _locate_engines(settings: Settings) -> tuple[Finding, Settings | None]:
    if settings.database_url and settings.redis_url:
        return Finding("engines", "ok", "DATABASE_URL and REDIS_URL are set"), settings
    from steward.engines import running

    found = running(settings.data_dir)
    if found is None:
        return Finding("engines", "fail",
                       f"embedded engines are not running in {settings.data_dir.resolve()} and no "
                       "URLs are set: start `make run` (or `steward run`), or set DATABASE_URL "
                       "and REDIS_URL"), None  # fmt: skip
    ready = with_urls(settings, found.urls.database_url, found.urls.redis_url)
    return Finding("engines", "ok", f"embedded, held by steward run pid {found.pid} in "
                                    f"{settings.data_dir.resolve()}"), ready  # fmt: skip


async def _postgres(settings: Settings) -> list[Finding]:
    from alembic.script import ScriptDirectory
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from steward.platform.migrations import alembic_config

    assert settings.database_url is not None
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            version = (await conn.execute(text("SHOW server_version"))).scalar_one()
            vector = (await conn.execute(text(
                "SELECT installed_version FROM pg_available_extensions WHERE name = 'vector'"
            ))).first()  # fmt: skip
            exists = text("SELECT to_regclass('alembic_version') IS NOT NULL")
            current = None
            if (await conn.execute(exists)).scalar_one():
                stamp = text("SELECT version_num FROM alembic_version")
                current = (await conn.execute(stamp)).scalar_one_or_none()
    finally:
        await engine.dispose()
    findings = [Finding("postgres", "ok", f"PostgreSQL {version}")]
    if vector is None:
        findings.append(Finding("pgvector", "warn", "not available: knowledge search is "
                                                   "lexical only (install pgvector)"))  # fmt: skip
    else:
        findings.append(Finding("pgvector", "ok", f"vector {vector[0] or 'available'}"))
    head = ScriptDirectory.from_config(alembic_config(settings.database_url)).get_current_head()
    if current == head:
        findings.append(Finding("migrations", "ok", f"at head ({head})"))
    else:
        behind = f"at {current or 'nothing'}, head is {head}: run `steward migrate`"
        findings.append(Finding("migrations", "fail", behind))
    return findings


async def _redis(settings: Settings) -> Finding:
    from redis.asyncio import Redis

    assert settings.redis_url is not None
    client = Redis.from_url(settings.redis_url, socket_timeout=CHECK_TIMEOUT_S)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    name = "Valkey" if "valkey_version" in info else "Redis"
    return Finding("redis", "ok", f"{name} {info.get('valkey_version') or info['redis_version']}")


async def _broker(settings: Settings) -> Finding:
    from steward.platform.health import check_broker

    url = settings.broker_url
    assert url is not None
    await check_broker(url, CHECK_TIMEOUT_S)
    scheme = url.split("://", 1)[0]
    return Finding("broker", "ok", f"{scheme} broker answers")


async def _provider(kind: str, name: str, config: ProviderConfig) -> Finding:
    """Reach the provider's `/models` with its key: proves DNS, TLS, the route and the key."""
    import openai

    from steward.assistant.provider_errors import translate

    check = f"{kind} {name}"
    client = openai.AsyncOpenAI(base_url=config.base_url, api_key=config.resolved_key() or "unused",
                                max_retries=0, timeout=CHECK_TIMEOUT_S)  # fmt: skip
    started = time.monotonic()
    try:
        await client.models.list()
    except openai.NotFoundError:
        return Finding(check, "ok", f"{config.base_url} reachable (it has no /models)")
    except Exception as exc:  # noqa: BLE001 - every failure is a verdict
        error = translate(exc, name, endpoint=config.base_url)
        if error.status in (401, 403):
            return Finding(
                check, "fail", f"{config.base_url} refused the key (HTTP {error.status})"
            )
        return Finding(check, "fail", str(error))
    finally:
        await client.close()
    took = (time.monotonic() - started) * 1000
    return Finding(check, "ok", f"{config.base_url} answered in {took:.0f} ms "
                                f"(model {config.model})")  # fmt: skip


async def _api(settings: Settings) -> Finding:
    import httpx

    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host  # noqa: S104
    url = f"http://{host}:{settings.port}"
    try:
        async with httpx.AsyncClient(timeout=CHECK_TIMEOUT_S) as http:
            ready = await http.get(f"{url}/ready")
    except httpx.TransportError:
        return Finding("api", "warn", f"nothing answers at {url} (not started, or elsewhere)")
    if ready.status_code == 200:
        return Finding("api", "ok", f"ready at {url}")
    return Finding("api", "fail", f"{url}/ready answered {ready.status_code}: "
                                  f"{ready.json().get('detail', '')}")  # fmt: skip


Probe = Callable[[], Awaitable[Finding | list[Finding]]]


async def _guard(check: str, probe: Probe) -> list[Finding]:
    try:
        found = await asyncio.wait_for(probe(), CHECK_TIMEOUT_S * 2)
    except Exception as exc:  # noqa: BLE001 - every failure is a verdict
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return [Finding(check, "fail", f"{type(exc).__name__}: {reason}")]
    return found if isinstance(found, list) else [found]


async def examine(settings: Settings) -> list[Finding]:
    findings = [_configuration(settings)]
    where, ready = _locate_engines(settings)
    findings.append(where)
    probes: list[tuple[str, Probe]] = []
    if ready is not None:
        probes += [("postgres", lambda: _postgres(ready)), ("redis", lambda: _redis(ready))]
        if ready.broker_url != ready.redis_url:
            probes.append(("broker", lambda: _broker(ready)))
    for kind, configured in (("assistant", settings.assistant_providers),
                             ("embedder", settings.embedding_providers)):  # fmt: skip
        for name, config in configured.items():
            probes.append((f"{kind} {name}", functools.partial(_provider, kind, name, config)))
        if not configured:
            findings.append(Finding(kind, "warn", _OFFLINE[kind]))
    probes.append(("api", lambda: _api(settings)))
    for found in await asyncio.gather(*(_guard(name, probe) for name, probe in probes)):
        findings += found
    return findings


@cli.command()
def doctor() -> None:
    """Check configuration, engines, migrations, broker, providers and the API; exit 1 on
    any failure."""
    settings = settings_or_exit()
    with console.status("checking…"):
        findings = asyncio.run(examine(settings))
    table = Table("check", "verdict", "detail", title="steward doctor")
    for finding in findings:
        table.add_row(finding.check, _MARK[finding.verdict], finding.detail)
    out.print(table)
    failed = [f.check for f in findings if f.verdict == "fail"]
    if failed:
        console.print(f"[red]{len(failed)} check(s) failed: {', '.join(failed)}[/red]")
        raise typer.Exit(1)
    console.print("[green]all checks passed[/green]")
