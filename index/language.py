"""The language of a document that came without one, from py3langid (its model ships inside
its wheel: nothing is downloaded at run time)."""

from __future__ import annotations

import threading

SAMPLE_CHARS = 2000  # enough text to decide; a long document is not read whole
_lock = threading.Lock()  # the first call loads the model; later ones only read it


def _classify(text: str) -> str:
    from py3langid import langid

    with _lock:
        langid._get_identifier()
    lang, _ = langid.classify(text)
    return str(lang)


def detect(text: str) -> str | None:
    """An ISO 639-1 code, or None for text without letters (numbers, emoji, punctuation)."""
    sample = text[:SAMPLE_CHARS]
    if not any(ch.isalpha() for ch in sample):
        return None
    return _classify(sample)
