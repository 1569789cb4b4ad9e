"""The ASGI application: `create_app()` wires routers, middleware, error handlers and lifespan."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from steward import __version__
from steward.accounts import hooks
from steward.accounts import router as accounts_router
from steward.assistant import routes as assistant_routes
from steward.assistant import streams, tokens
from steward.assistant.runs import ActiveRuns
from steward.assistant.streams import RunFollowers
from steward.jobs import router as jobs_router
from steward.knowledge import router as knowledge_router
from steward.notifications import account_mail
from steward.notifications import router as realtime_router
from steward.platform import errors, health, openapi, pages, tracing
from steward.platform.api import API_V1
from steward.platform.logging import configure_logging
from steward.platform.metrics import MetricsMiddleware, watch_event_loop
from steward.platform.middleware import (
    BodySizeLimitMiddleware,
    RequestContextMiddleware,
    SecurityHeadersMiddleware,
)
from steward.platform.proxies import parse_networks
from steward.platform.resources import Resources
from steward.settings import ConfigError, Settings, get_settings
from steward.todos import router as todos_router

log = structlog.get_logger(__name__)


def _middleware(settings: Settings) -> list[Middleware]:
    """Outermost first. Metrics see every status, including the 500s made just inside."""
    stack = [
        Middleware(MetricsMiddleware),
        Middleware(
            RequestContextMiddleware,
            access_log=settings.access_log,
            trusted_proxies=parse_networks(settings.trusted_proxies),
        ),
        Middleware(SecurityHeadersMiddleware, hsts=settings.is_prod),
    ]
    if settings.cors_origins:
        stack.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST", "PATCH", "PUT", "DELETE", "OPTIONS"],
                allow_headers=[
                    "Authorization",
                    "Content-Type",
                    "X-API-Key",
                    "X-Request-ID",
                    "Idempotency-Key",
                    "If-Match",
                    "Last-Event-ID",
                ],
                expose_headers=[
                    "X-Request-ID",
                    "ETag",
                    "Retry-After",
                    "RateLimit",
                    "RateLimit-Policy",
                    "Location",
                ],
                allow_credentials=False,
                max_age=600,
            )
        )
    # Document uploads carry their own limit (plus room for the multipart envelope).
    uploads = {f"{API_V1}/knowledge/documents": settings.knowledge_max_bytes + 65_536}
    stack.append(Middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes,
                            per_path=uploads, openai_prefixes=("/v1/",)))  # fmt: skip
    return stack


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application; raises ConfigError when the settings are unsafe to run."""
    settings = settings or get_settings()
    settings.check_production()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resources = Resources.open(settings)
        app.state.resources = resources
        app.state.active_runs = runs = ActiveRuns()
        app.state.run_followers = followers = RunFollowers(resources.redis)
        loop_watch = asyncio.create_task(watch_event_loop(), name="event-loop-lag")
        near_cache = asyncio.create_task(
            resources.cache.follow_invalidations(), name="cache-invalidations"
        )
        # In a thread, so that start-up does not wait for it; the first run would otherwise.
        tokenizer = asyncio.create_task(asyncio.to_thread(tokens.load), name="tokenizer-load")
        # Everything allocated so far lives as long as the process: move it out of the
        # collector's view so that full collections stay short under load (lower p99).
        gc.collect()
        gc.freeze()
        gc.set_threshold(*settings.gc_thresholds)
        log.info("app.started", environment=settings.environment.value, version=__version__)
        try:
            yield
        finally:
            # Runs in flight end as "cancelled" (recorded, and told to their readers).
            loop_watch.cancel()
            near_cache.cancel()
            await asyncio.gather(tokenizer, return_exceptions=True)
            await runs.cancel_all()
            await followers.aclose()
            await resources.close()
            log.info("app.stopped")

    app = FastAPI(
        title=settings.app_name,
        version=__version__,
        summary="Accounts, todos, a streaming assistant, knowledge search and background jobs.",
        lifespan=lifespan,
        middleware=_middleware(settings),
        docs_url=None,  # platform/pages.py serves them, without a CDN
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    errors.install_handlers(app)
    openapi.install(app)
    pages.install(app)
    tracing.instrument(app, settings)
    # Cross-domain reactions to account changes (accounts imports no other domain).
    hooks.on_user_created(account_mail.user_created)
    hooks.on_user_deleted(streams.forget_user)
    # Probes hit these constantly: routes of the app itself match before any included router.
    for route in health.router.routes:
        assert isinstance(route, APIRoute)
        app.add_api_route(
            route.path, route.endpoint, methods=sorted(route.methods or ()), summary=route.summary,
            response_model=route.response_model, responses=route.responses, tags=route.tags,
            response_class=route.response_class,
        )  # fmt: skip
    for router in (
        *accounts_router.routers,
        todos_router.router,
        realtime_router.router,
        realtime_router.notifications,
        realtime_router.account_mail_routes,
        realtime_router.devices_routes,
        jobs_router.router,
        knowledge_router.router,
        *assistant_routes.routers,
    ):
        app.include_router(router)
    return app


def _module_app() -> FastAPI:
    settings = get_settings()
    configure_logging(level=settings.log_level, json=settings.json_logs)
    try:
        return create_app(settings)
    except ConfigError as exc:
        # One line on stderr and a non-zero exit, under uvicorn and gunicorn alike.
        raise SystemExit(f"steward: refusing to start: {exc}") from None


def __getattr__(name: str) -> FastAPI:
    # `steward.app:app` for uvicorn/gunicorn, built on first access so that importing
    # `create_app` (tests, tools) never reads the process environment.
    if name == "app":
        application = _module_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
