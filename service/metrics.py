"""Prometheus metrics of one app instance (its own registry, so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

# Latency buckets from 0.5 ms (a cache hit) to 10 s (a large synchronous mining request).
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "dapsearch_requests",
            "HTTP requests by route and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "dapsearch_request_duration_seconds",
            "End-to-end handler time per route.",
            ["route", "method"],
            buckets=_SECONDS,
            registry=r,
        )
        self.tokenize_seconds = Histogram(
            "dapsearch_tokenize_duration_seconds",
            "Tokenization time per batch.",
            buckets=_SECONDS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "dapsearch_queue_duration_seconds",
            "Time a request waited in the batcher before its batch started.",
            buckets=_SECONDS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "dapsearch_inference_duration_seconds",
            "Model forward time per batch.",
            buckets=_SECONDS,
            registry=r,
        )
        self.batch_size = Histogram(
            "dapsearch_batch_size", "Texts per forward batch.", buckets=_BATCH, registry=r
        )
        self.batch_tokens = Histogram(
            "dapsearch_batch_tokens",
            "Tokens per forward batch (padding excluded).",
            buckets=tuple(b * 16 for b in _BATCH),
            registry=r,
        )
        self.queue_depth = Gauge("dapsearch_queue_depth", "Online texts waiting in the batcher.", registry=r)
        self.bulk_queue_depth = Gauge(
            "dapsearch_bulk_queue_depth",
            "Texts of admin jobs waiting in the batcher at bulk priority.",
            registry=r,
        )
        self.rejected = Counter(
            "dapsearch_rejected", "Requests refused with 429 because the queue was full.", registry=r
        )
        self.cache_hits = Counter("dapsearch_cache_hits", "Cache hits.", ["kind"], registry=r)
        self.cache_misses = Counter("dapsearch_cache_misses", "Cache misses.", ["kind"], registry=r)
        self.cache_errors = Counter(
            "dapsearch_cache_errors", "Cache calls that failed or timed out and were bypassed.", registry=r
        )
        self.embedded_texts = Counter("dapsearch_embedded_texts", "Texts run through the model.", registry=r)
        self.bulk_texts = Counter(
            "dapsearch_bulk_embedded_texts",
            "Texts of admin jobs run through the model (a part of dapsearch_embedded_texts).",
            registry=r,
        )
        self.jobs = Gauge("dapsearch_jobs", "Admin jobs by state.", ["state"], registry=r)
        self.engine = Info(
            "dapsearch_engine",
            "The inference backend serving and the CPU features that decide its kernels.",
            registry=r,
        )
