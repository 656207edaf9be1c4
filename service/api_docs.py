"""/docs and /redoc with Swagger UI and ReDoc served by the app itself: the service runs offline.

FastAPI's own pages load both from a CDN (and ReDoc its fonts from Google), so they stay blank
with no internet. The files here come from the fastapi-offline package, which ships the current
Swagger UI and ReDoc bundles; the pages are FastAPI's, pointed at them. The app is made with
``docs_url=None, redoc_url=None`` and this adds the pages in their place, at the same paths.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS = "/docs"
REDOC = "/redoc"
OAUTH2_REDIRECT = "/docs/oauth2-redirect"
ASSETS = "/docs-assets"  # public like the pages: the middleware gates /admin only
FILES = Path(fastapi_offline.__file__).parent / "static"

# Swagger UI shows a badge by default: an image from an outside validator, sent the spec's URL.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}
# Images from this app only (and the data: icons in Swagger UI's CSS): ReDoc's sidebar loads its
# vendor's logo from a CDN, a request that offline only fails and online leaves the network.
PAGE_HEADERS = {"Content-Security-Policy": "img-src 'self' data:"}


def install_docs(app: FastAPI) -> None:
    """Mount the files and add the three pages; none of them is an operation in the schema."""
    app.mount(ASSETS, StaticFiles(directory=FILES), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    def here(request: Request, path: str) -> str:
        """Behind a proxy's path prefix (uvicorn --root-path), the URL the browser must ask for."""
        root: str = request.scope.get("root_path", "")
        return root.rstrip("/") + path

    def page(response: HTMLResponse) -> HTMLResponse:
        response.headers.update(PAGE_HEADERS)
        return response

    @app.get(DOCS, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return page(
            get_swagger_ui_html(
                openapi_url=here(request, openapi_url),
                title=f"{app.title} - Swagger UI",
                swagger_js_url=here(request, f"{ASSETS}/swagger-ui-bundle.js"),
                swagger_css_url=here(request, f"{ASSETS}/swagger-ui.css"),
                swagger_favicon_url=here(request, f"{ASSETS}/favicon.png"),
                oauth2_redirect_url=here(request, OAUTH2_REDIRECT),
                swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
            )
        )

    @app.get(OAUTH2_REDIRECT, include_in_schema=False)
    async def swagger_ui_oauth2_redirect() -> HTMLResponse:
        return page(get_swagger_ui_oauth2_redirect_html())

    @app.get(REDOC, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return page(
            get_redoc_html(
                openapi_url=here(request, openapi_url),
                title=f"{app.title} - ReDoc",
                redoc_js_url=here(request, f"{ASSETS}/redoc.standalone.js"),
                redoc_favicon_url=here(request, f"{ASSETS}/favicon.png"),
                with_google_fonts=False,
            )
        )
