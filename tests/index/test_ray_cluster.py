"""A head and a worker node (``ray.cluster_utils.Cluster``): the worker is removed in the middle
of an ingest, and the ingest still ends with every document once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from index.cluster import RayOptions
from index.collection import Collection
from index.ingest import ShardCounts, ingest
from index.ray_ingest import ingest_on_ray
from model.artifact import read_manifest
from model.backend_choice import choose_backend
from model.cpu import cpu_features
from model.encoder import Encoder
from tests.conftest import parallel_sentences, start_local_ray


@pytest.fixture
def two_nodes() -> Iterator[tuple[object, object]]:
    """A head and a worker node of one CPU each; the session's local Ray comes back after."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster, worker
    finally:
        ray.shutdown()
        cluster.shutdown()
        start_local_ray()


def test_removing_a_worker_node_mid_ingest_loses_no_document_and_doubles_none(
    tmp_path: Path, real_model_dir: Path, two_nodes: tuple[object, object]
) -> None:
    cluster, worker = two_nodes
    backend = choose_backend("auto", real_model_dir, read_manifest(real_model_dir), cpu_features()).backend
    encoder = Encoder.load(real_model_dir, backend)
    source = tmp_path / "docs.jsonl"
    texts = parallel_sentences(2000)
    source.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    removed: list[int] = []

    def remove_worker(counts: ShardCounts) -> None:
        if counts.merged == 1 and not removed:
            removed.append(counts.embedded)
            cluster.remove_node(worker)  # type: ignore[attr-defined]

    root = tmp_path / "collections"
    with Collection.create(root, "ray", encoder.model_id, encoder.dim) as coll:
        report = ingest_on_ray(
            coll,
            encoder,
            source,
            options=RayOptions(actors=2, shard_bytes=16 << 10),
            shard_progress=remove_worker,
        )
        ids, got_texts, vectors = coll.vectors()
    assert removed and report.shards is not None and removed[0] < report.shards.total - 2
    assert report.shards.retried >= 1  # the removed node's shards ran again on the head
    assert report.shards.merged == report.shards.total and report.documents == 2000
    assert ids == [f"d{i}" for i in range(2000)] and got_texts == texts  # none missing, none twice
    with Collection.create(root, "local", encoder.model_id, encoder.dim) as local:
        ingest(local, encoder, source)
        # The served int8 kernels move a vector slightly with its batch (test_ray.py), so cosines:
        assert np.min(np.sum(vectors * local.vectors()[2], axis=1)) > 0.9995
