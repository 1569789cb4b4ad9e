"""The pages a person opens in a browser: the API docs (Swagger UI at `/docs`, ReDoc at
`/redoc`) and the playground (`/playground`), every asset served by Steward itself.

Swagger UI's and ReDoc's bundles come from the `fastapi-offline` package, which ships them
in its wheel: the docs work on a machine with no internet, and no third party learns who
reads them. The playground is static HTML, CSS and JavaScript with no build step
(`steward/playground/`). All of them are public: they hold no data, and every call they make
goes through the API with the visitor's own credentials.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
PLAYGROUND = Path(__file__).resolve().parent.parent / "playground"
DOCS_STATIC = "/docs/static"
PLAYGROUND_STATIC = "/playground/static"
OAUTH2_REDIRECT = "/docs/oauth2-redirect"
# Keep the bearer token across reloads, show how long each call took; validatorUrl None:
# Swagger UI would otherwise send the document to swagger.io's validator.
SWAGGER_UI_PARAMETERS = {"persistAuthorization": True, "displayRequestDuration": True,
                         "validatorUrl": None}  # fmt: skip


def install(app: FastAPI) -> None:
    """Add `/docs`, `/redoc`, `/playground` and their assets (the app is built with
    `docs_url=None, redoc_url=None`, so FastAPI's CDN-bound pages do not exist)."""
    app.mount(DOCS_STATIC, StaticFiles(directory=DOCS_ASSETS), name="docs-static")
    app.mount(PLAYGROUND_STATIC, StaticFiles(directory=PLAYGROUND), name="playground-static")
    title = app.title

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{title} - API docs",
            oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT}",
            swagger_js_url=f"{root}{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )

    @app.get(OAUTH2_REDIRECT, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{title} - API reference",
            redoc_js_url=f"{root}{DOCS_STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
            with_google_fonts=False,
        )

    @app.get("/playground", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(PLAYGROUND / "index.html", media_type="text/html")
