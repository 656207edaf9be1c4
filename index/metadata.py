"""A document's metadata: nesting bounded on the way in, and always servable on the way out."""

from __future__ import annotations

import json
from typing import Any

MAX_METADATA_DEPTH = 32  # nested objects and arrays in a document's metadata
UNSERVABLE_METADATA = (
    f"this document's stored metadata is nested more than {MAX_METADATA_DEPTH} levels deep or unreadable; "
    "ingest the document again to replace it"
)


def metadata_depth(value: Any) -> int:
    """Levels of nested objects and arrays in ``value``; walked with a stack, so any depth counts."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def servable(text: str) -> dict[str, Any]:
    """Stored metadata as a search may return it. Metadata stored before nesting was bounded
    could break every response that holds it (the JSON writer and the cache's parser stop at a
    few hundred levels): such a document is served with a note in its place, never a 500."""
    try:
        value = json.loads(text)
    except (RecursionError, ValueError):
        value = None
    if isinstance(value, dict) and metadata_depth(value) <= MAX_METADATA_DEPTH:
        return value
    return {"_unservable": UNSERVABLE_METADATA}
