"""Search filters and the SQL that finds the documents they admit.

Filtering happens in SQLite (the metadata lives there as JSON) and the matching row ids then
restrict the FAISS search, so a filtered search still returns k hits when k documents match.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.errors import InputError


@dataclass
class Filter:
    """Exact-match filters; hits still number k when k matching documents exist."""

    lang: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return self.lang is None and not self.metadata


def filter_sql(flt: Filter) -> tuple[str, list[Any]]:
    """The WHERE condition over ``docs`` admitting what ``flt`` admits, and its arguments; keys
    and values are checked here, since they come straight from requests."""
    clauses: list[str] = []
    args: list[Any] = []
    if flt.lang is not None:
        clauses.append("lang = ?")
        args.append(flt.lang)
    for key, value in flt.metadata.items():
        if not key or '"' in key or "\\" in key:
            raise InputError(f"invalid metadata filter key {key!r}")
        if value is not None and not isinstance(value, str | int | float):
            raise InputError(f"metadata filter {key!r} must be a string, number, boolean or null")
        # CASE: rows whose metadata is not valid JSON (stored before it was checked) never match
        # instead of making SQLite fail the whole query.
        if value is None:
            clauses.append("CASE WHEN json_valid(metadata) THEN json_type(metadata, ?) END = 'null'")
            args.append(f'$."{key}"')
            continue
        clauses.append("CASE WHEN json_valid(metadata) THEN json_extract(metadata, ?) END = ?")
        args += [f'$."{key}"', int(value) if isinstance(value, bool) else value]
    return " AND ".join(clauses), args
