"""ASGI middleware: request body limit and per-route metrics (pure ASGI: no body buffering)."""

from __future__ import annotations

import re
import time
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import admin_refusal
from service.errors import APIError, envelope
from service.metrics import Metrics
from service.settings import Settings

# Uploads are streamed to disk by the admin router, which enforces its own (much larger) limit.
_UPLOAD_PATH = re.compile(r"/admin/collections/[^/]+/documents")


class BodyTooLarge(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes (DAPSEARCH_MAX_BODY_BYTES)")


class BodyLimit:
    """413 for bodies over ``limit`` bytes, by Content-Length up front or counted while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _UPLOAD_PATH.fullmatch(scope["path"]):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                error = BodyTooLarge(self.limit)
                await envelope(413, error.message)(scope, receive, send)
                return
        received = 0
        too_large = False

        async def counted() -> Message:
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # Stop reading: the app sees a disconnect, and its own reply is replaced below.
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            if not too_large:
                await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not too_large:  # whatever the app made of the cut-off body is replaced by the 413
                raise
        if too_large:
            await envelope(413, BodyTooLarge(self.limit).message)(scope, receive, send)


class AdminGate:
    """/admin requests without a valid key are answered from their headers, before the body is
    read or validated: no 422 (or 413) tells an unauthenticated client how its body was judged."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == "/admin" or path.startswith("/admin/"):
            header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
            refusal = admin_refusal(None if header is None else header.decode("latin-1"), self.settings)
            if refusal is not None:
                response = envelope(refusal.status, refusal.message, headers=refusal.headers)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RouteMetrics:
    """Count and time every request by its route template (not the raw path: bounded labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.request_seconds.labels(template, method).observe(time.perf_counter() - started)
            self.metrics.requests.labels(template, method, str(status)).inc()


def install_middleware(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(AdminGate, settings=settings)  # outside BodyLimit: no 413 before the key
    app.add_middleware(RouteMetrics, metrics=metrics)
