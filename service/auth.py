"""Bearer-key authentication of the ``/admin`` routes.

Admin routes create and delete collections and read server-side files, so they fail closed: with
no key configured they answer 503 unless ``DAPSEARCH_ADMIN_OPEN`` says this is a local setup.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.deps import SettingsDep
from service.errors import APIError
from service.settings import Settings

# Only declares the scheme in the OpenAPI document (the docs' "Authorize" button); the header is
# checked below, where a missing and a malformed header get distinct messages.
_bearer = HTTPBearer(auto_error=False, description="One of DAPSEARCH_ADMIN_KEYS.")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="dapsearch-admin"'}


def _matches(token: str, keys: list[str]) -> bool:
    """Compare with every key, without stopping early, so timing reveals neither key nor match."""
    given = token.encode("utf-8")
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key.encode("utf-8"))
    return found


def admin_refusal(header: str | None, settings: Settings) -> APIError | None:
    """Why a request with this Authorization header may not use /admin (None: it may).

    401 without a well-formed bearer token, 403 for a wrong one, 503 when admin is disabled.
    Checked from the headers alone, before the body is read (``service.middleware.AdminGate``),
    so a client without a key learns nothing from how its body would have been judged."""
    keys = [k.get_secret_value() for k in settings.admin_keys if k.get_secret_value()]
    if not keys:
        return None if settings.admin_open else APIError(503, "admin API disabled: set DAPSEARCH_ADMIN_KEYS")
    if header is None:
        return APIError(
            401, "missing Authorization header: use 'Authorization: Bearer <key>'", headers=_CHALLENGE
        )
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return APIError(
            401, "malformed Authorization header: use 'Authorization: Bearer <key>'", headers=_CHALLENGE
        )
    if not _matches(token, keys):
        return APIError(403, "invalid admin key")
    return None


async def require_admin(
    request: Request,
    settings: SettingsDep,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The same check as a dependency: declares the scheme in OpenAPI, and guards the routes
    even where the gate is not installed."""
    refusal = admin_refusal(request.headers.get("authorization"), settings)
    if refusal is not None:
        raise refusal


AdminDep = Depends(require_admin)
