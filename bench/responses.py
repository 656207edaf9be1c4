"""What writing an /embed response costs: FastAPI's own path (the pydantic response model, then
pydantic's JSON writer) against ``VectorJSONResponse`` (orjson straight from float32 arrays).

Both produce a body that ``EmbedResponse`` validates; the table gives time per response, the
body size and the ratio, for 1, 8 and 32 vectors of 384 dimensions, measured in one run.

    .venv/bin/python bench/responses.py
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from machine import cpu_flags, cpu_model, version

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pydantic import TypeAdapter  # noqa: E402

from service.responses import VectorJSONResponse  # noqa: E402
from service.schemas import EmbedResponse, Usage  # noqa: E402

ADAPTER = TypeAdapter(EmbedResponse)


def through_pydantic(vectors: np.ndarray) -> bytes:
    """What FastAPI does with a returned model: validate it, then write it with pydantic."""
    model = EmbedResponse(
        model="m", dim=384, embeddings=vectors.tolist(), truncated=[], usage=Usage(tokens=99)
    )
    return ADAPTER.dump_json(model)


def through_orjson(vectors: np.ndarray) -> bytes:
    payload = {"model": "m", "dim": 384, "embeddings": vectors, "truncated": [], "usage": {"tokens": 99}}
    return bytes(VectorJSONResponse(payload).body)


def per_call_ms(write: Callable[[], bytes], seconds: float) -> float:
    write()
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        write()
        calls += 1
    return 1000 * elapsed / calls


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=1.0, help="time per cell")
    args = p.parse_args(argv)
    print(
        f"CPU: {cpu_model()} ({cpu_flags()}), Python {platform.python_version()}, "
        f"pydantic {version('pydantic')}, orjson {version('orjson')}"
    )
    rng = np.random.default_rng(0)
    print("\n| vectors | pydantic ms | orjson ms | speed-up | pydantic kB | orjson kB |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in (1, 8, 32):
        vectors = rng.standard_normal((n, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

        slow, fast = through_pydantic(vectors), through_orjson(vectors)
        for body in (slow, fast):
            parsed = EmbedResponse.model_validate_json(body)
            assert np.array_equal(np.array(parsed.embeddings, dtype=np.float32), vectors)
        a = per_call_ms(functools.partial(through_pydantic, vectors), args.seconds)
        b = per_call_ms(functools.partial(through_orjson, vectors), args.seconds)
        print(f"| {n} | {a:.3f} | {b:.3f} | {a / b:.1f}× | {len(slow) / 1000:.1f} | {len(fast) / 1000:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
