"""The compose stack on a real Docker engine, built offline: `make docker-test` (CI runs it).

docker/engine.sh gives an engine (the configured one, or Debian's dockerd started for this run and
stopped by its pid afterwards) and the Debian base images; the wheels come from docker/wheelhouse/,
filled with `pip download` when empty. The stack is the repository's docker-compose.yml with one
writer, two api replicas and Redis, in a project of its own; `docker-compose down -v` runs whatever
happens, and the last test checks that it leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.docker_e2e

REPO = Path(__file__).resolve().parents[2]
ENGINE = REPO / "docker" / "engine.sh"
WHEELHOUSE = REPO / "docker" / "wheelhouse"
DOCKER = "/usr/bin/docker"
PROJECT = f"dapsearch-e2e-{os.getpid()}"
# The packages are the layers of pyproject.toml's import contract, so a new one reaches the image.
PACKAGES = tuple(
    tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["root_packages"]
)
CONTEXT = ("pyproject.toml", "README.md", *PACKAGES, "docker-compose.yml", ".dockerignore")
# Build tools for the project's own wheel, and what redis needs on Debian's Python 3.11.2.
EXTRA_WHEELS = ("setuptools>=77", "wheel", "async-timeout")
OFFLINE_ENV = {
    "PYTHON_IMAGE": "local/python:3.11-bookworm",
    "REDIS_IMAGE": "local/redis:bookworm",
    "OFFLINE": "1",
    "BUILD_NETWORK": "none",
}


@dataclass
class Stack:
    directory: Path
    env: dict[str, str]
    key: str

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        result = subprocess.run(
            ["docker-compose", "-p", PROJECT, *args],
            cwd=self.directory,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)}: {result.stdout}{result.stderr}")
        return result.stdout

    def docker(self, *args: str, timeout: float = 120) -> str:
        result = subprocess.run(
            [DOCKER, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        assert result.returncode == 0, f"docker {' '.join(args)}: {result.stdout}{result.stderr}"
        return result.stdout

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).split()

    def url(self, service: str, index: int = 1) -> str:
        port = self.compose("port", f"--index={index}", service, "8000").strip().rsplit(":", 1)[1]
        return f"http://127.0.0.1:{port}"

    def healthy(self, service: str) -> bool:
        ids = self.containers(service)
        states = [self.docker("inspect", "-f", "{{.State.Health.Status}}", c).strip() for c in ids]
        return bool(states) and all(s == "healthy" for s in states)

    def wait_healthy(self, *services: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not all(self.healthy(s) for s in services):
            if time.monotonic() > deadline:
                raise AssertionError(f"not healthy within {timeout:.0f} s:\n{self.compose('ps')}")
            time.sleep(2)


def _engine(*args: str) -> str:
    result = subprocess.run(["sh", str(ENGINE), *args], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        pytest.fail(result.stderr.strip() or f"docker/engine.sh {' '.join(args)} failed", pytrace=False)
    return result.stdout.strip()


def _fill_wheelhouse() -> None:
    """Every wheel the project now needs: pip keeps those already there and adds what changed."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "-d",
            str(WHEELHOUSE),
            f"{REPO}[build]",
            *EXTRA_WHEELS,
        ],
        check=True,
        timeout=900,
    )


def _project(tmp: Path, key: str) -> Path:
    """A build context and compose project holding only what the image needs, plus .env and the
    secret: the repository's own .env and secrets/ are left alone."""
    project = tmp / "project"
    project.mkdir()
    for name in CONTEXT:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, project / name, ignore=shutil.ignore_patterns("__pycache__", "dap_runs"))
        else:
            shutil.copy2(src, project / name)
    (project / "docker").mkdir()
    for name in ("Dockerfile", "entrypoint.sh"):
        shutil.copy2(REPO / "docker" / name, project / "docker" / name)
    shutil.copytree(WHEELHOUSE, project / "docker" / "wheelhouse", copy_function=os.link)
    env_lines = (REPO / ".env.example").read_text(encoding="utf-8").splitlines()
    env_lines += [f"{k}={v}" for k, v in OFFLINE_ENV.items()]
    (project / ".env").write_text("\n".join(env_lines) + "\n", encoding="utf-8")
    (project / "secrets").mkdir()
    (project / "secrets" / "admin_keys").write_text(key + "\n", encoding="utf-8")
    (project / "secrets" / "admin_keys").chmod(0o644)
    return project


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    host, *started = _engine("start").splitlines()
    started_here = started == ["started"]  # then it is stopped again at the end
    env = {**os.environ, "DOCKER_HOST": host, "PATH": f"/usr/bin:{os.environ['PATH']}"}
    env.update({"DOCKER_BUILDKIT": "1", "COMPOSE_DOCKER_CLI_BUILD": "1"})
    key = secrets.token_hex(16)
    stack: Stack | None = None
    try:
        _engine("images")
        _fill_wheelhouse()  # before the project copies it
        stack = Stack(_project(tmp_path_factory.mktemp("stack"), key), env, key)
        stack.compose("build", timeout=1800)
        stack.compose("up", "-d", "--scale", "api=2", timeout=600)
        stack.wait_healthy("redis", "writer", "api")
        yield stack
    finally:
        if stack is not None:
            stack.compose("down", "-v", "--remove-orphans", timeout=300, check=False)
        if started_here:
            _engine("stop")


def _embed(url: str, texts: list[str]) -> np.ndarray:
    reply = httpx.post(f"{url}/embed", json={"texts": texts, "kind": "query"}, timeout=60)
    assert reply.status_code == 200, reply.text
    return np.array(reply.json()["embeddings"], dtype=np.float32)


def _admin(stack: Stack) -> dict[str, str]:
    return {"authorization": f"Bearer {stack.key}"}


def _wait_job(url: str, stack: Stack, job_id: str, timeout: float = 300) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        reply = httpx.get(f"{url}/admin/jobs/{job_id}", headers=_admin(stack), timeout=30)
        job: dict[str, object] = reply.json()["job"]
        if job["state"] not in ("queued", "running"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.5)


def _documents(n: int, tag: str) -> bytes:
    lines = (
        json.dumps(
            {"id": f"{tag}{i}", "text": f"Document {i} of {tag}: the train leaves at {i % 24} o'clock."}
        )
        for i in range(n)
    )
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.usefixtures("stack")  # which installed docker-compose where it was missing
def test_docker_compose_config_accepts_the_file_with_the_example_env(tmp_path: Path) -> None:
    """`docker-compose config -q` as ops run it: .env copied from .env.example, the secret file."""
    shutil.copy(REPO / "docker-compose.yml", tmp_path / "docker-compose.yml")
    (tmp_path / "docker").symlink_to(REPO / "docker")
    shutil.copy(REPO / ".env.example", tmp_path / ".env")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "admin_keys").write_text("k1\n", encoding="utf-8")
    result = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "config", "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_service_is_healthy_with_two_replicas(stack: Stack) -> None:
    assert len(stack.containers("api")) == 2 and len(stack.containers("writer")) == 1
    ready = httpx.get(f"{stack.url('writer')}/health/ready", timeout=10).json()
    assert ready["status"] == "ready" and ready["cache"] == {"backend": "redis", "ok": True, "detail": None}


def test_the_writer_and_each_replica_give_the_same_vectors(stack: Stack) -> None:
    texts = ["Wo ist der Bahnhof?", "Where is the train station?"]
    writer = _embed(stack.url("writer"), texts)
    for index in (1, 2):
        np.testing.assert_allclose(_embed(stack.url("api", index), texts), writer, atol=1e-6)


def test_keys_guard_the_writer_and_replicas_have_no_admin(stack: Stack) -> None:
    assert httpx.get(f"{stack.url('writer')}/admin/collections", timeout=10).status_code == 401
    assert (
        httpx.get(f"{stack.url('writer')}/admin/collections", headers=_admin(stack), timeout=10).status_code
        == 200
    )
    refused = httpx.get(f"{stack.url('api')}/admin/collections", headers=_admin(stack), timeout=10)
    assert refused.status_code == 503 and "disabled" in refused.json()["error"]["message"]


def test_an_ingest_through_the_writer_is_searched_on_a_replica(stack: Stack) -> None:
    writer = stack.url("writer")
    created = httpx.post(
        f"{writer}/admin/collections", json={"name": "trains"}, headers=_admin(stack), timeout=30
    )
    assert created.status_code == 201, created.text
    headers = {**_admin(stack), "content-type": "application/x-ndjson"}
    job = httpx.post(
        f"{writer}/admin/collections/trains/documents", content=_documents(300, "t"), headers=headers
    )
    assert job.status_code == 202, job.text
    done = _wait_job(writer, stack, str(job.json()["job"]["id"]))
    assert done["state"] == "succeeded" and done["counts"] == {"documents": 300, "errors": 0}, done
    deadline = time.monotonic() + 30
    while True:  # a replica reopens the collection when it sees the new version
        hits = httpx.post(
            f"{stack.url('api', 2)}/search",
            json={"collection": "trains", "query": "Document 17 of t", "k": 3},
            timeout=30,
        )
        if hits.status_code == 200 and hits.json()["results"][0]:
            break
        assert time.monotonic() < deadline, hits.text
        time.sleep(1)
    assert "t17" in [h["id"] for h in hits.json()["results"][0]]


def test_without_redis_requests_still_answer_and_redis_coming_back_is_used(stack: Stack) -> None:
    texts = ["Redis is a cache here, never a dependency."]
    before = _embed(stack.url("api"), texts)
    (redis,) = stack.containers("redis")
    stack.docker("kill", redis)
    for url in (stack.url("writer"), stack.url("api")):
        np.testing.assert_allclose(_embed(url, texts), before, atol=1e-6)
        search = httpx.post(
            f"{url}/search", json={"collection": "demo", "query": "Fußball", "k": 3}, timeout=30
        )
        assert search.status_code == 200, search.text
    assert httpx.get(f"{stack.url('writer')}/health/ready", timeout=10).json()["status"] == "degraded"
    stack.docker("start", redis)
    deadline = time.monotonic() + 60
    while httpx.get(f"{stack.url('writer')}/health/ready", timeout=10).json()["cache"]["ok"] is not True:
        assert time.monotonic() < deadline, "Redis coming back was not picked up"
        _embed(stack.url("writer"), texts)  # a request lets the client notice the server is back
        time.sleep(1)


def test_a_writer_killed_mid_ingest_resumes_or_fails_with_a_reason(stack: Stack) -> None:
    writer = stack.url("writer")
    httpx.post(f"{writer}/admin/collections", json={"name": "killed"}, headers=_admin(stack), timeout=30)
    headers = {**_admin(stack), "content-type": "application/x-ndjson"}
    job = httpx.post(
        f"{writer}/admin/collections/killed/documents?chunk_size=64",
        content=_documents(20_000, "k"),
        headers=headers,
        timeout=120,
    )
    assert job.status_code == 202, job.text
    job_id = str(job.json()["job"]["id"])
    deadline = time.monotonic() + 120
    while True:  # kill once some chunks are committed, well before the end
        state = httpx.get(f"{writer}/admin/jobs/{job_id}", headers=_admin(stack), timeout=30).json()["job"]
        if state["counts"]["documents"] > 0 or state["state"] not in ("queued", "running"):
            break
        assert time.monotonic() < deadline, state
        time.sleep(0.2)
    assert state["state"] == "running", state
    (container,) = stack.containers("writer")
    stack.docker("kill", container)
    stack.compose("up", "-d", "--no-deps", "writer", timeout=300)
    stack.wait_healthy("writer")
    writer = stack.url("writer")
    done = _wait_job(writer, stack, job_id, timeout=600)
    assert done["state"] == "succeeded" or (done["state"] == "failed" and done["error"]), done
    stats = httpx.get(f"{writer}/admin/collections/killed", headers=_admin(stack), timeout=30).json()
    assert stats["count"] == stats["index_vectors"], stats
    if done["state"] == "succeeded":
        assert stats["count"] == 20_000, stats


def test_the_image_runs_as_uid_10001_without_torch(stack: Stack) -> None:
    (writer,) = stack.containers("writer")
    assert stack.docker("exec", writer, "id", "-u").strip() == "10001"
    volumes = ["/data", "/data/collections", "/data/models", "/data/jobs"]
    owners = stack.docker("exec", writer, "stat", "-c", "%u:%g", *volumes).split()
    assert owners == ["10001:10001"] * len(volumes), dict(zip(volumes, owners, strict=False))
    probe = "import importlib.util as u; print(u.find_spec('torch') is None)"
    assert stack.docker("exec", writer, "python", "-c", probe).strip() == "True"


def test_down_leaves_nothing_behind(stack: Stack) -> None:
    stack.compose("down", "-v", "--remove-orphans", timeout=300)
    label = f"label=com.docker.compose.project={PROJECT}"
    for kind in ("container", "volume", "network"):
        listed = stack.docker(kind, "ls", *(["-a"] if kind == "container" else []), "-q", "--filter", label)
        assert listed.strip() == "", f"{kind}s left: {listed}"
