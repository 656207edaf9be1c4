"""Errors a user can fix (bad paths, corrupt files, wrong options, unknown names).

Each carries the HTTP status it stands for, so the service maps all of them with one handler
and a command line turns them into a one-line message and exit code 2. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import ClassVar


class InputError(ValueError):
    """Bad input from the user: a missing or corrupt file, an unknown option value."""

    status: ClassVar[int] = 400

    def __init__(self, message: str, param: str | None = None) -> None:
        """``param``: the request field the error is about, where there is one (the service's
        error body names it, so a route need not catch and re-raise to say which field)."""
        super().__init__(message)
        self.param = param

    def headers(self) -> Mapping[str, str]:
        """Response headers the service adds (``Retry-After`` for a full queue)."""
        return {}


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during, nearest first, each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


class NotFound(InputError):
    """A name that does not exist (404)."""

    status = 404


class Conflict(InputError):
    """A request that clashes with the current state (409)."""

    status = 409
