"""Credentials in query strings are not written to the access log.

Clients of other search services pass keys as ``?api_key=...``; uvicorn's access log writes the
path with its query string as sent, so such a key would sit in every log file and log shipper.
Values of parameters whose names look like credentials are replaced before the line is written.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, urlencode

# Parameter names that carry secrets (matched case-insensitively, anywhere in the name).
SECRET_NAMES = re.compile(r"key|token|secret|passw|pwd|auth|sig|session|cookie|credential", re.IGNORECASE)
REDACTED = "[redacted]"


def redact_query(target: str) -> str:
    """``target`` (path and query) with the values of credential-like parameters replaced."""
    path, sep, query = target.partition("?")
    if not sep:
        return target
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(SECRET_NAMES.search(name) for name, _ in pairs):
        return target
    safe = [(name, REDACTED if SECRET_NAMES.search(name) else value) for name, value in pairs]
    return f"{path}?{urlencode(safe, safe='[]')}"


class RedactedQuery(logging.Filter):
    """On uvicorn's access logger: its third argument is the request target."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True


def redact_access_log(logger: logging.Logger | None = None) -> None:
    """Install the filter once (uvicorn's logging set-up keeps a logger's filters)."""
    target = logger or logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactedQuery) for f in target.filters):
        target.addFilter(RedactedQuery())
