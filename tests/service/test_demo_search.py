"""The README's example searches, run on the real demo collection and the served model: what
the README says they find is what they find."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from service.settings import Settings
from tests.service.conftest import started

README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLE = re.compile(r"-d '(\{\"collection\": \"demo\".*?\})'\n# (.*?)ids? ([\w, -]+)\n")

pytestmark = pytest.mark.real_model


def examples() -> list[tuple[dict[str, object], list[str]]]:
    found = [
        (json.loads(body), [i.strip() for i in ids.split(",")])
        for body, _, ids in EXAMPLE.findall(README.read_text(encoding="utf-8"))
    ]
    assert len(found) == 3, "the README shows three demo searches"
    return found


@pytest.mark.anyio
async def test_the_readme_demo_searches_find_what_it_says(tmp_path: Path, dap_model_dir: Path) -> None:
    """On the model ``make serve`` serves."""
    settings = Settings(home=tmp_path, model_dir=dap_model_dir, demo=True)
    async with started(settings, timeout=600) as (_, client):
        for body, ids in examples():
            r = await client.post("/search", json=body)
            assert r.status_code == 200, r.text
            hits = r.json()["results"][0]
            # The documents named, in any order (their scores are close; the order may differ by CPU).
            assert sorted(h["id"] for h in hits) == sorted(ids), (body, [(h["id"], h["score"]) for h in hits])
            top = hits[0]
            if top["id"] == "station-history":
                assert top["passage"]["start"] > 0 and "Ellen Tregarthen" in top["passage"]["text"]
            if body.get("highlight"):
                spans = top["highlights"]
                assert [top["passage"]["text"][a:b] for a, b in spans] == ["Kawira", "Njoroge"]
