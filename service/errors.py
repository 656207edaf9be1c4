"""One JSON error envelope for every 4xx/5xx: ``{"error": {"type", "message", "param"}}``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.disk import DISK_FULL_MESSAGE, is_disk_full
from core.errors import InputError
from core.failures import SYSTEM_ERRORS, describe

log = logging.getLogger("dapsearch")


class APIError(Exception):
    """Raised by handlers for a client error they detect themselves."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        type_: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type_ or _type_for(status)
        self.headers = dict(headers or {})


def _type_for(status: int) -> str:
    return {
        400: "invalid_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        409: "conflict",
        413: "too_large",
        415: "unsupported_media_type",
        431: "too_large",
        422: "validation_error",
        429: "overloaded",
        503: "unavailable",
        507: "insufficient_storage",
    }.get(status, "error" if status < 500 else "internal_error")


def envelope(
    status: int,
    message: str,
    param: str | None = None,
    type_: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"type": type_ or _type_for(status), "message": message, "param": param}}
    return JSONResponse(status_code=status, content=body, headers=dict(headers or {}))


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return envelope(exc.status, exc.message, exc.param, exc.type, exc.headers)

    @app.exception_handler(InputError)
    async def _input_error(_: Request, exc: InputError) -> JSONResponse:
        """Every domain error, whatever its layer: its class says the status."""
        return envelope(exc.status, str(exc), exc.param, headers=exc.headers())

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        param = _loc_to_param(tuple(first.get("loc", ())))
        message = str(first.get("msg", "invalid request"))
        if param:
            message = f"{param}: {message}"
        return envelope(422, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return envelope(exc.status_code, str(exc.detail), headers=exc.headers)

    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if is_disk_full(exc):  # any write, anywhere: the operator's to fix, said as such
            log.error("disk full on %s %s: %s", request.method, request.url.path, exc)
            return envelope(507, DISK_FULL_MESSAGE)
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        reason = describe(exc)  # an operator's problem (permissions, a removed folder) is named
        return envelope(
            500, f"the request failed: {reason}" if reason else "internal error; see the service log"
        )

    # Filesystem and database errors are answered where they are caught, like a client error (the
    # server-error middleware would answer, then raise again); anything else reaches the last one.
    for system_error in (*SYSTEM_ERRORS, Exception):
        app.add_exception_handler(system_error, _unexpected)
