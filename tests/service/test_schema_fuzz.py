"""Schema fuzzing: schemathesis drives every operation of /openapi.json against a real server.

The app runs in a real uvicorn server on a background thread with the tiny random model, open admin
routes and the demo collection; the lifespan loads the model in a background task, so the fixture
waits for /health/ready before any request. Schemathesis generates valid and invalid requests for
each operation (its examples, coverage and fuzzing phases); every answer must be below 500, and every
4xx with a JSON body must be the service's error envelope ``{"error": {"type", "message", "param"}}``.

Examples per operation: DAPSEARCH_FUZZ_EXAMPLES (default 25). On a failure schemathesis prints the
request as a curl command, and pytest's "Captured log" section holds the server's traceback.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from service.app import create_app
from service.settings import Settings
from tests.conftest import free_port

MAX_EXAMPLES = int(os.environ.get("DAPSEARCH_FUZZ_EXAMPLES", "25"))

# Status codes seen per operation, printed at the end of the module (`pytest -s` shows them).
SEEN: Counter[tuple[str, int]] = Counter()


@contextmanager
def running_server(model_dir: Path, home: Path) -> Iterator[str]:
    """A ready server: tiny model, admin without keys, and the 'demo' collection."""
    app = create_app(Settings(home=home, model_dir=model_dir, admin_open=True, demo=True))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="fuzz-uvicorn", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert thread.is_alive(), "uvicorn stopped before the service was ready"
            try:
                ready = httpx.get(f"{base}/health/ready", timeout=2)
                if ready.status_code == 200:
                    break
                assert ready.json()["status"] == "starting", ready.text
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "service not ready after 180 s"
            time.sleep(0.05)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=60)


@pytest.fixture(scope="module")
def base_url(
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    local_ray: None,  # noqa: ARG001
) -> Iterator[str]:
    """``local_ray``: generated cases submit Ray jobs, and a local Ray started from a server's job
    thread has its processes killed when that thread ends (Linux's parent-death signal follows the
    thread), which would take this process down a minute later."""
    with running_server(tiny_model_dir, tmp_path_factory.mktemp("fuzz-home")) as base:
        yield base
    if SEEN:
        print("\nstatus codes per operation:")
        for (label, status), count in sorted(SEEN.items()):
            print(f"  {label:<50} {status}: {count}")


def error_envelope(
    _ctx: schemathesis.CheckContext,
    response: schemathesis.Response,
    case: schemathesis.Case[Any],
) -> None:
    """A 4xx with a JSON body is ``{"error": {"type": str, "message": str, "param": str | null}}``.

    Also tallies the status codes per operation for the summary.
    """
    SEEN[(case.operation.label, response.status_code)] += 1
    if not 400 <= response.status_code < 500:
        return
    if not response.headers.get("content-type", [""])[0].startswith("application/json"):
        return
    body = response.json()
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict), f"{response.status_code} without an error envelope: {response.text}"
    assert set(error) == {"type", "message", "param"}, f"envelope keys {sorted(error)}: {response.text}"
    assert isinstance(error["type"], str) and isinstance(error["message"], str), response.text
    assert error["param"] is None or isinstance(error["param"], str), response.text


# The app's own OpenAPI document, built without a lifespan (routes are static; the model is not needed),
# so schemathesis can parametrize one test per operation at collection time. The lazy
# `schemathesis.pytest.from_fixture` loader would fetch /openapi.json from the running server instead,
# but in schemathesis 4.32 it fails under pytest 9 ('Function' object has no attribute '_nodeid').
# test_served_schema_is_the_fuzzed_schema checks that the server serves this same document.
OPENAPI = create_app(Settings(home=Path("unused"), demo=False)).openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)

# Uploads to POST /admin/collections/{name}/documents are raw bytes; without this schemathesis skips
# the JSONL media types (TSV already goes through its text/* serializer).
# Restores take tar archives the same way.
schemathesis.serializer.alias(
    ["application/x-ndjson", "application/jsonl", "application/x-tar"], "application/octet-stream"
)

# Random collection names only ever reach the 404 branch; half the time, name the demo collection
# instead, so searches, mining jobs, collection stats and ingest uploads run too. DELETE keeps its
# random names: deleting 'demo' mid-run would take the other operations back to 404s.


def _demo_search(body: dict[str, Any]) -> dict[str, Any]:
    """Also keep one of query/queries and k within max_k, or the handler answers 422 before searching."""
    out = {**body, "collection": "demo"}
    out.pop("queries" if isinstance(out.get("query"), str) else "query", None)
    if isinstance(out.get("k"), int):
        out["k"] = min(out["k"], Settings.model_fields["max_k"].default)
    return out


def _demo_mine(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "source": "demo", "target": "demo"}


def _demo_restore(body: dict[str, Any]) -> dict[str, Any]:
    """A restore from the demo collection's snapshots (none exist unless a case took one)."""
    return {**body, "source": "demo"}


DEMO_BODIES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "/search": _demo_search,
    "/admin/mine": _demo_mine,
    "/admin/collections/{name}/restore": _demo_restore,
}


@schema.hook
def flatmap_body(ctx: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    demo = DEMO_BODIES.get(ctx.operation.path) if ctx.operation else None
    if demo is None or not isinstance(body, dict):
        return st.just(body)
    return st.sampled_from([body, demo(body)])


@schema.hook
def flatmap_path_parameters(ctx: schemathesis.HookContext, params: Any) -> st.SearchStrategy[Any]:
    deleting = ctx.operation is not None and ctx.operation.method.upper() == "DELETE"
    if deleting or not isinstance(params, dict) or "name" not in params:
        return st.just(params)
    return st.sampled_from([params, {**params, "name": "demo"}])


def test_served_schema_is_the_fuzzed_schema(base_url: str) -> None:
    assert httpx.get(f"{base_url}/openapi.json").json() == OPENAPI


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,  # no example database to replay from: a failure prints its curl reproduction instead
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors_and_4xx_use_the_error_envelope(base_url: str, case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(base_url=base_url, checks=[not_a_server_error, error_envelope], timeout=60)


SEQUENCES = int(os.environ.get("DAPSEARCH_FUZZ_SEQUENCES", "20"))


@pytest.mark.usefixtures("base_url")  # its teardown prints the status codes of this test too
def test_sequences_of_calls_never_give_server_errors(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The stateful phase: schemathesis chains operations through the schema's links (create a
    collection → ingest into it → watch or cancel the job → search or mine it → delete it), with
    generated data at every step, and each answer must pass the same checks as above.
    DAPSEARCH_FUZZ_SEQUENCES sequences (default 20) of up to 8 calls each.

    Each sequence runs against a server of its own: Hypothesis replays the prefixes of earlier
    sequences and requires the same answers to them, which collections and jobs left behind by
    other sequences would change."""
    before = sum(SEEN.values())

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            self.server = ExitStack()
            self.base_url = self.server.enter_context(
                running_server(tiny_model_dir, tmp_path_factory.mktemp("fuzz-sequence"))
            )

        def teardown(self) -> None:
            self.server.close()

        def get_call_kwargs(self, case: schemathesis.Case[Any]) -> dict[str, Any]:
            return {"base_url": self.base_url, "timeout": 60}

        def validate_response(
            self,
            response: schemathesis.Response,
            case: schemathesis.Case[Any],
            additional_checks: Any = None,
            **kwargs: Any,
        ) -> None:
            case.validate_response(
                response, checks=[not_a_server_error, error_envelope], transport_kwargs=kwargs
            )

    Workflow.run(
        settings=settings(
            max_examples=SEQUENCES,
            stateful_step_count=8,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )
    assert sum(SEEN.values()) - before >= SEQUENCES  # the sequences really called the server
    linked = {label for (label, status) in SEEN if status < 300}
    assert "POST /admin/collections" in linked
    print(f"\nsequences: {SEQUENCES}, calls: {sum(SEEN.values()) - before}")
