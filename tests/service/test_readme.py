"""The README's configuration table lists exactly the settings the code reads."""

from __future__ import annotations

import re
from pathlib import Path

from service.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_documented_and_nothing_else() -> None:
    documented = set(re.findall(r"^\| `(DAPSEARCH_[A-Z_]+)` \|", README.read_text(encoding="utf-8"), re.M))
    actual = {f"DAPSEARCH_{name.upper()}" for name in Settings.model_fields}
    assert documented == actual
