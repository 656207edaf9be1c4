"""/docs and /redoc render with no internet: every file they load is served by the app itself.

The product runs where no CDN can be reached, so the pages must reference local paths only (no
Google Fonts for ReDoc, no Swagger validator badge, a local favicon). Started on the dummy
encoder, like the model-free tests.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.types import ASGIApp

from model.encoder import Encoder
from service.app import create_app
from service.settings import Settings

pytestmark = pytest.mark.anyio

PAGES = ("/docs", "/redoc")
# What a browser fetches on its own from a page: the URL attributes of these tags.
FETCHED = {"script": "src", "link": "href", "img": "src", "iframe": "src", "source": "src"}
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


@pytest.fixture(scope="module")
async def app(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ASGIApp]:
    """The real app, started (with admin keys set: the docs stay public all the same)."""
    home = tmp_path_factory.mktemp("home")
    settings = Settings(home=home, admin_keys="k1", demo=False, redis_url=None)
    app = create_app(settings, Encoder.dummy(dim=32, max_length=16, batch_size=4))
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        yield manager.app


@pytest.fixture(scope="module")
async def client(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    """No Authorization header: what a browser opening /docs sends."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        with anyio.fail_after(30):
            while (await client.get("/health/ready")).status_code != 200:
                await anyio.sleep(0.01)
        yield client


class Fetched(HTMLParser):
    """Collects the URLs a browser would load from a page (scripts, stylesheets, icons)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        name = FETCHED.get(tag)
        self.urls += [value for key, value in attrs if key == name and value is not None]


def fetched(html: str) -> list[str]:
    parser = Fetched()
    parser.feed(html)
    return parser.urls


async def page(client: httpx.AsyncClient, path: str) -> str:
    r = await client.get(path)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    return r.text


@pytest.mark.parametrize("path", PAGES)
async def test_the_pages_reference_local_files_only(client: httpx.AsyncClient, path: str) -> None:
    html = await page(client, path)
    urls = fetched(html)
    assert any(url.endswith(".js") for url in urls), urls  # the UI itself
    assert all(url.startswith("/") and not url.startswith("//") for url in urls), urls
    # Not in an attribute, nor in the inline script (a font, a validator, a spec elsewhere).
    assert not re.search(r"(?i)https?://|//[a-z0-9-]+\.[a-z]", html), html
    assert "fonts.googleapis" not in html


@pytest.mark.parametrize("path", PAGES)
async def test_every_file_a_page_loads_is_served(client: httpx.AsyncClient, path: str) -> None:
    for url in fetched(await page(client, path)):
        r = await client.get(url)
        assert r.status_code == 200, url
        expected = CONTENT_TYPES[Path(url).suffix]
        assert r.headers["content-type"].startswith(expected), (url, r.headers["content-type"])
        # The real bundles (Swagger UI's is over a megabyte), not a stub or an error page.
        assert len(r.content) > (100_000 if expected != "image/png" else 1_000), url


async def test_the_pages_load_the_spec_this_app_serves(client: httpx.AsyncClient) -> None:
    assert "url: '/openapi.json'" in await page(client, "/docs")
    assert 'spec-url="/openapi.json"' in await page(client, "/redoc")
    assert (await client.get("/openapi.json")).json()["info"]["title"] == "dapsearch"


async def test_swagger_ui_shows_no_validator_badge(client: httpx.AsyncClient) -> None:
    """Swagger UI's default badge is an image from an outside validator, sent the spec's URL."""
    assert '"validatorUrl": null' in await page(client, "/docs")


@pytest.mark.parametrize("path", [*PAGES, "/docs/oauth2-redirect"])
async def test_the_pages_load_images_from_the_app_only(client: httpx.AsyncClient, path: str) -> None:
    """ReDoc's bundle itself shows its vendor's logo from a CDN: the browser is told not to fetch it."""
    r = await client.get(path)
    assert r.headers["content-security-policy"] == "img-src 'self' data:"


async def test_the_oauth2_redirect_page_is_self_contained(client: httpx.AsyncClient) -> None:
    html = await page(client, "/docs/oauth2-redirect")
    assert fetched(html) == []
    assert not re.search(r"(?i)https?://", html)


async def test_the_files_are_outside_the_api(client: httpx.AsyncClient) -> None:
    """Not operations in the schema; no directory listing; nothing outside the package's folder."""
    spec = (await client.get("/openapi.json")).json()
    assert not [p for p in spec["paths"] if p.startswith(("/docs", "/redoc"))]
    for url in ("/docs-assets/", "/docs-assets/missing.js", "/docs-assets/../__init__.py"):
        assert (await client.get(url)).status_code == 404, url


async def test_behind_a_path_prefix_the_pages_point_under_it(app: ASGIApp) -> None:
    """A proxy that serves the app under /api (uvicorn --root-path): the files are found there."""
    transport = httpx.ASGITransport(app=app, root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as prefixed:
        for path in PAGES:
            html = await page(prefixed, f"/api{path}")
            urls = fetched(html)
            assert urls and all(url.startswith("/api/docs-assets/") for url in urls), urls
            assert 'spec-url="/api/openapi.json"' in html or "url: '/api/openapi.json'" in html
            for url in urls:
                assert (await prefixed.get(url)).status_code == 200, url
