"""Input checks shared by every route that takes texts, so limits and messages are the same everywhere."""

from __future__ import annotations

from collections.abc import Sequence

from service.errors import APIError
from service.settings import Settings


def check_texts(texts: Sequence[str], settings: Settings, param: str, max_count: int | None = None) -> None:
    """400/413 naming the offending item: too many, empty, too long, or not valid Unicode."""
    limit = settings.max_texts if max_count is None else max_count
    if len(texts) > limit:
        raise APIError(413, f"at most {limit} texts per request, got {len(texts)}", param)
    for i, text in enumerate(texts):
        where = f"{param}[{i}]"
        if not text.strip():
            raise APIError(422, f"{where} is empty", where)
        if len(text) > settings.max_text_chars:
            raise APIError(
                413, f"{where} has {len(text)} characters; the limit is {settings.max_text_chars}", where
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates from a JSON "\ud800" escape
            raise APIError(422, f"{where} is not valid Unicode (lone surrogate)", where) from None
