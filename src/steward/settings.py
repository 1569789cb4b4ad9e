"""Configuration: the one place settings are read, from the environment or a `.env` file.

One flat set of fields, the environment variables one for one (README's table follows it),
grouped by comments; those of the account lifecycle (email, social sign-in, push) are a mixin
in settings_lifecycle.py, which keeps their names (nesting would make them `EMAIL__...`)."""

from __future__ import annotations

import enum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    Field,
    PositiveInt,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from steward.settings_lifecycle import AccountLifecycleSettings
from steward.settings_providers import Prices, ProviderConfig

DEFAULT_SECRET_KEY = "dev-secret-change-me-0123456789abcdef"  # noqa: S105 - the refused default


class Environment(enum.StrEnum):
    DEV = "dev"
    STAGING = "staging"
    PROD = "prod"


class ConfigError(RuntimeError):
    """Settings that must not be used to start the service; the message is one line."""


class Settings(BaseSettings, AccountLifecycleSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        secrets_dir=None,
    )

    environment: Environment = Environment.DEV
    app_name: str = "Steward"

    # Engines. Unset URLs mean "use the embedded engines" (`steward run` only).
    database_url: str | None = None
    redis_url: str | None = None
    celery_broker_url: str | None = None
    data_dir: Path = Path(".steward")

    # Secrets. `*_FILE` variants let orchestrators mount secrets as files.
    secret_key: SecretStr = SecretStr(DEFAULT_SECRET_KEY)
    secret_key_file: Path | None = None
    # argon2id cost (argon2-cffi's defaults); production refuses less than OWASP's minimum
    # (19 MiB, 2 passes). Lower only for tests: each sign-in verifies one hash.
    password_hash_time_cost: int = Field(default=3, ge=1, le=10)
    password_hash_memory_kib: int = Field(default=65_536, ge=8, le=1_048_576)
    api_key: SecretStr | None = None
    api_key_file: Path | None = None

    # Tokens
    access_token_ttl_s: int = Field(default=900, ge=30, le=86_400)
    refresh_token_ttl_s: int = Field(default=30 * 86_400, ge=300)
    jwt_issuer: str = "steward"
    jwt_audience: str = "steward-api"

    # HTTP
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # The API process's garbage collector (gc.set_threshold). CPython's own are (700, 10, 10);
    # the third is how many middle-generation collections precede a full one. A full
    # collection walks every object the process holds (11-35 ms under a hundred streams,
    # on the request path's one event loop) and the request path leaves almost no cycles
    # for it to find (bench/RESULTS.md), so it runs ten times less often here.
    gc_thresholds: tuple[PositiveInt, PositiveInt, PositiveInt] = (700, 10, 100)

    # PostgreSQL pool
    db_pool_size: int = Field(default=20, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    db_pool_timeout_s: float = Field(default=5.0, gt=0)
    db_pool_recycle_s: int = Field(default=1800, ge=-1)
    # asyncpg's pre-ping costs three round trips (BEGIN, ping, ROLLBACK) on every checkout,
    # about a third of a simple request's database time. Off by default: a connection that
    # died is detected on use, and SQLAlchemy then invalidates the whole pool at once.
    db_pool_pre_ping: bool = False
    db_connect_timeout_s: float = Field(default=5.0, gt=0)
    db_statement_timeout_ms: int = Field(default=15_000, ge=0)
    # The client's own limit per statement: the server's statement_timeout cannot fire when
    # the server is frozen or unreachable; past this the request is a 503.
    db_command_timeout_s: float = Field(default=10.0, gt=0)

    # Redis pool
    redis_max_connections: int = Field(default=100, ge=1)
    redis_socket_timeout_s: float = Field(default=2.0, gt=0)
    redis_connect_timeout_s: float = Field(default=2.0, gt=0)
    # The request path's deadline per Redis call (limits, cache, principals, lockout), and
    # its circuit breaker: consecutive failures that open it, seconds before a probe.
    redis_request_timeout_s: float = Field(default=0.25, gt=0, le=5)
    redis_breaker_failures: int = Field(default=3, ge=1)
    redis_breaker_reset_s: float = Field(default=5.0, gt=0)

    # Protection
    rate_limit_enabled: bool = True
    rate_limit_anonymous: str = "60/minute"
    rate_limit_authenticated: str = "600/minute"
    # Sign-in attempts per client IP: a ceiling for abuse, loose enough for a carrier NAT;
    # guessing one account's password is stopped by the lockout below instead.
    rate_limit_login: str = "60/minute"
    rate_limit_register: str = "20/hour"
    login_lockout_failures: int = Field(default=5, ge=1, le=100)
    login_lockout_base_s: float = Field(default=30.0, gt=0)
    login_lockout_max_s: float = Field(default=900.0, gt=0)
    rate_limit_assistant: str = "30/minute"
    rate_limit_email: str = Field(
        default="3/hour", description="verification resends and reset requests per account"
    )
    rate_limit_fail_open: bool = True
    rate_limit_login_fail_open: bool = False
    # Requests' worth of budget a process may take from Redis in one round trip and admit
    # locally (at most a sixteenth of what is left); 0 asks Redis on every request.
    rate_limit_max_lease: int = Field(default=50, ge=0, le=10_000)
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cache_enabled: bool = True
    cache_ttl_s: float = Field(default=60.0, gt=0)
    # Each API process also keeps hot entries in memory for up to this long (0 turns the
    # near cache off); invalidations reach every process over Redis Pub/Sub at once, this
    # only bounds a copy's age should that channel fail silently.
    cache_local_ttl_s: float = Field(default=5.0, ge=0)

    # Shutdown (SIGTERM): readiness fails at once; open assistant streams may go on this long,
    # then get a final `error` event saying where to resume. Under uvicorn the process waits
    # for in-flight requests a few seconds longer than this.
    shutdown_grace_s: float = Field(default=10.0, ge=0, le=300)

    # Realtime
    realtime_heartbeat_s: float = Field(default=15.0, gt=0)
    realtime_max_lifetime_s: float = Field(default=3600.0, gt=0)
    realtime_queue_size: int = Field(default=100, ge=1)
    realtime_catchup_s: int = Field(
        default=86_400, ge=60, description="how long a user's events stay for a device to catch up"
    )
    realtime_catchup_max: int = Field(
        default=1000, ge=10, description="events kept per user for catching up (approximately)"
    )

    # Webhooks
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_max_retries: int = Field(default=8, ge=0, le=20)
    webhook_retry_base_s: float = Field(default=5.0, gt=0)
    webhook_allow_private: bool = Field(
        default=False, description="allow webhook URLs on private/loopback addresses"
    )

    # Jobs (cron expressions: minute hour day-of-month month day-of-week, UTC)
    schedule_reminders: str = "* * * * *"
    schedule_cleanup: str = "17 3 * * *"
    schedule_reap_runs: str = "*/5 * * * *"
    schedule_outbox: str = "every 30s"
    schedule_reap_ingestion: str = "*/5 * * * *"
    job_retention_s: float = Field(
        default=172_800.0, gt=0, description="how long a sent job's record (and status) stays"
    )
    outbox_sweep_after_s: float = Field(
        default=10.0, gt=0, description="how long a recorded job may stay unsent before the "
        "sweeper sends it (its own send after commit normally takes milliseconds)",
    )  # fmt: skip
    worker_queues: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["default", "reminders", "ingest", "assistant"]
    )
    task_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="extra modules with Celery tasks to load"
    )

    # Assistant. ASSISTANT_PROVIDERS is a JSON object {name: ProviderConfig}; without one,
    # the offline provider answers (and says so in every reply).
    assistant_providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    assistant_provider: str | None = Field(
        default=None, description="the default provider; else the first configured, else offline"
    )
    assistant_fallback_provider: str | None = None
    assistant_prompt_name: str = "assistant"
    assistant_max_tool_rounds: int = Field(default=4, ge=0, le=20)
    assistant_max_input_tokens: int = Field(default=4000, ge=16)
    assistant_retry_base_s: float = Field(default=0.5, gt=0)
    assistant_retry_max_s: float = Field(default=8.0, gt=0)
    assistant_breaker_failures: int = Field(default=5, ge=1)
    assistant_breaker_reset_s: float = Field(default=30.0, gt=0)
    assistant_offline_delay_s: float = Field(default=0.02, ge=0)
    assistant_daily_tokens_per_user: int | None = Field(
        default=None, ge=1, description="a user's tokens per UTC day, all keys together"
    )
    assistant_daily_tokens_per_key: int | None = Field(
        default=None, ge=1, description="an API key's tokens per UTC day"
    )
    assistant_daily_cost_per_user: float | None = Field(
        default=None, gt=0, description="a user's spend per UTC day, in the prices' currency"
    )
    assistant_daily_cost_per_key: float | None = Field(
        default=None, gt=0, description="an API key's spend per UTC day"
    )
    run_stream_ttl_s: int = Field(
        default=3600, ge=1, description="how long a finished run's events stay"
    )
    run_stream_maxlen: int = Field(default=10_000, ge=100)

    # Knowledge. EMBEDDING_PROVIDERS is a JSON object {name: ProviderConfig} of
    # OpenAI-compatible embeddings endpoints; without one, the offline embedder is used.
    embedding_providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    embedding_provider: str | None = Field(
        default=None, description="the embedder; else the first configured, else offline"
    )
    knowledge_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024,
                                     description="the largest upload accepted")  # fmt: skip
    knowledge_chunk_tokens: int = Field(default=300, ge=32, le=8000)
    knowledge_chunk_overlap_tokens: int = Field(default=50, ge=0, le=1000)
    knowledge_embed_batch: int = Field(default=64, ge=1, le=2048,
                                       description="chunks per embedding task")  # fmt: skip
    knowledge_max_chunks: int = Field(default=5000, ge=1,
                                      description="a document with more fails")  # fmt: skip
    knowledge_stuck_after_s: int = Field(
        default=1800, ge=60, description="an unfinished ingestion this old is marked failed"
    )

    # Observability
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console", "auto"] = "auto"
    access_log: bool = True
    prometheus_multiproc_dir: Path | None = None
    tracing: bool = Field(default=False, description="spans and trace ids in logs, no export")
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP collector base URL; setting it turns tracing on"
    )
    otel_service_name: str = "steward"
    worker_metrics_port: int = Field(
        default=0, ge=0, le=65535,
        description="a Celery worker serves its /metrics here (0: not served)",
    )  # fmt: skip
    worker_metrics_host: str = Field(
        default="127.0.0.1", description="address the worker's metrics server binds"
    )
    readiness_timeout_s: float = Field(default=2.0, gt=0)

    @field_validator("cors_origins", "trusted_proxies", "worker_queues", "task_modules",
                     mode="before")  # fmt: skip
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator(
        "rate_limit_anonymous", "rate_limit_authenticated", "rate_limit_login",
        "rate_limit_register", "rate_limit_assistant", "rate_limit_email",
    )  # fmt: skip
    @classmethod
    def _rate_limit_spec(cls, value: str) -> str:
        from limits import parse

        try:
            parse(value)
        except ValueError:
            raise ValueError(f"not a rate limit like '60/minute': {value!r}") from None
        return value

    @field_validator(
        "schedule_reminders",
        "schedule_cleanup",
        "schedule_reap_runs",
        "schedule_outbox",
        "schedule_reap_ingestion",
    )
    @classmethod
    def _cron(cls, value: str) -> str:
        if value.startswith("every "):
            seconds = value[6:].rstrip("s")
            if not seconds.replace(".", "", 1).isdigit() or float(seconds) <= 0:
                raise ValueError(f"not an interval like 'every 30s': {value!r}")
            return value
        if len(value.split()) != 5:
            raise ValueError(f"not a 5-field cron expression (or 'every 30s'): {value!r}")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for network in value:
            ipaddress.ip_network(network, strict=False)
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _read_secret_files(self) -> Settings:
        if self.secret_key_file is not None:
            self.secret_key = SecretStr(self.secret_key_file.read_text().strip())
        if self.api_key_file is not None:
            self.api_key = SecretStr(self.api_key_file.read_text().strip())
        if self.api_key is not None and not self.api_key.get_secret_value():
            self.api_key = None
        return self

    @model_validator(mode="after")
    def _known_providers(self) -> Settings:
        known = {*self.assistant_providers, "offline"}
        for field in ("assistant_provider", "assistant_fallback_provider"):
            name = getattr(self, field)
            if name is not None and name not in known:
                raise ValueError(f"{field.upper()}={name!r} is not in ASSISTANT_PROVIDERS")
        for name, config in self.assistant_providers.items():
            for model in (config.model, *config.models):
                window, output = config.limits(model)
                if output >= window:
                    raise ValueError(f"{name}/{model}: max_output_tokens {output} leaves no "
                                     f"room for input in a context window of {window}")  # fmt: skip
        currencies = {prices.currency for prices in self._prices()}
        if len(currencies) > 1:
            # Costs are added up per day and held against one quota: one unit for all.
            raise ValueError(f"ASSISTANT_PROVIDERS prices use more than one currency: "
                             f"{sorted(currencies)}; convert them to one")  # fmt: skip
        cost_quotas = (self.assistant_daily_cost_per_user, self.assistant_daily_cost_per_key)
        if not currencies and any(quota is not None for quota in cost_quotas):
            raise ValueError("a daily cost quota needs prices in ASSISTANT_PROVIDERS")
        embedder = self.embedding_provider
        if embedder is not None and embedder not in {*self.embedding_providers, "offline"}:
            raise ValueError(f"EMBEDDING_PROVIDER={embedder!r} is not in EMBEDDING_PROVIDERS")
        if self.knowledge_chunk_overlap_tokens * 2 >= self.knowledge_chunk_tokens:
            raise ValueError("KNOWLEDGE_CHUNK_OVERLAP_TOKENS must be under half the chunk size")
        return self

    @property
    def default_provider(self) -> str:
        """Offline only when nothing real is configured, or when asked for by name."""
        if self.assistant_provider is not None:
            return self.assistant_provider
        return next(iter(self.assistant_providers), "offline")

    @property
    def currency(self) -> str | None:
        """The currency of every configured price; None when no provider has prices."""
        return next((prices.currency for prices in self._prices()), None)

    def _prices(self) -> list[Prices]:
        return [
            prices
            for config in self.assistant_providers.values()
            for prices in (config.prices, *(spec.prices for spec in config.per_model.values()))
            if prices is not None
        ]

    @property
    def default_embedder(self) -> str:
        if self.embedding_provider is not None:
            return self.embedding_provider
        return next(iter(self.embedding_providers), "offline")

    @property
    def is_prod(self) -> bool:
        return self.environment is Environment.PROD

    @property
    def json_logs(self) -> bool:
        if self.log_format == "auto":
            return self.environment is not Environment.DEV
        return self.log_format == "json"

    @property
    def broker_url(self) -> str | None:
        """The Celery broker: its own URL, else the Redis one."""
        return self.celery_broker_url or self.redis_url

    def check_production(self) -> None:
        """Refuse settings that must never reach production; raise ConfigError with one line."""
        if not self.is_prod:
            return
        secret = self.secret_key.get_secret_value()
        if secret == DEFAULT_SECRET_KEY:
            raise ConfigError("SECRET_KEY is the built-in default; set a random one (>= 32 chars)")
        if len(secret) < 32:
            raise ConfigError("SECRET_KEY is shorter than 32 characters")
        missing = [
            name
            for name, value in (("DATABASE_URL", self.database_url), ("REDIS_URL", self.redis_url))
            if not value
        ]
        if missing:
            raise ConfigError(f"{', '.join(missing)} must be set when ENVIRONMENT=prod")
        if self.api_key is not None and len(self.api_key.get_secret_value()) < 16:
            raise ConfigError("API_KEY is shorter than 16 characters")
        if self.password_hash_memory_kib < 19_456 or self.password_hash_time_cost < 2:
            raise ConfigError(
                "PASSWORD_HASH_MEMORY_KIB >= 19456 and PASSWORD_HASH_TIME_COST >= 2 in production"
            )

    def require_engines(self) -> tuple[str, str]:
        """The database and Redis URLs, or a ConfigError saying how to get them."""
        if not self.database_url or not self.redis_url:
            raise ConfigError(
                "DATABASE_URL and REDIS_URL must be set (or start with `steward run`, "
                "which provides embedded engines)"
            )
        return self.database_url, self.redis_url


@lru_cache
def get_settings() -> Settings:
    """Settings read once per process; tests build their own `Settings(...)` instead."""
    return Settings()
