"""All configuration, from ``DAPSEARCH_*`` environment variables (or a ``.env`` file)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from index.cluster import RayOptions
from index.passages import PassageOptions
from model.artifact import Bundled, default_model_dir
from model.backend_choice import BackendRequest


class Settings(BaseSettings):
    """One settings object for the CLI and the service; every field is ``DAPSEARCH_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="DAPSEARCH_", env_file=".env", extra="ignore")

    # --- where things live
    home: Path = Field(default=Path("var"), description="Data directory: models, collections, jobs, uploads.")
    model: Bundled = Field(
        default="dap",
        description="The bundled model built on first run and served when model_dir is unset: dap "
        "(multilingual-e5-small-dap, the DAP-trained encoder) or base (plain multilingual-e5-small).",
    )
    model_dir: Path | None = Field(
        default=None, description="Built model directory; default <home>/models/<the bundled model's name>."
    )
    data_dir: Path | None = Field(
        default=None,
        description="The only directory admin ingest jobs may read server-side files from; "
        "default <home>/data.",
    )

    # --- inference
    backend: BackendRequest = Field(
        default="auto",
        description="Inference backend: auto (the fastest this CPU and install offer: openvino-int8 "
        "where VNNI and native bf16 are, else onnx-int8), openvino-int8, onnx-int8, openvino, onnx or "
        "torch. One that cannot run here falls back, with one log line.",
    )
    threads: int | None = Field(
        default=None, ge=1, description="Inference threads; default all usable cores."
    )
    batch_size: int = Field(
        default=32, ge=1, le=1024, description="Most texts per forward pass (the batcher's cap)."
    )
    batch_tokens: int = Field(
        default=8192,
        ge=16,
        description="Most tokens per batch (the batcher's other cap): a batch of long passages is cut "
        "to this, so a query waiting behind it waits about as long as behind 32 short texts.",
    )
    batch_wait_ms: float = Field(
        default=2.0,
        ge=0,
        le=1000,
        description=(
            "How long the batcher waits for more requests to fill a batch, while requests arrive"
            " concurrently (a lone request runs at once)."
        ),
    )
    max_queue: int = Field(
        default=2048, ge=1, description="Texts waiting for inference before requests are refused with 429."
    )
    bulk_batch_size: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="Texts per admin-job batch while online requests arrive: the most an online "
        "request waits behind (full batches when online traffic is quiet).",
    )

    # --- HTTP
    host: str = Field(default="127.0.0.1", description="Address `dapsearch serve` binds.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port `dapsearch serve` binds.")
    keep_alive_s: int = Field(
        default=5, ge=1, le=3600, description="Idle seconds after a response before a connection is closed."
    )
    head_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Time a client has to send a complete request head (from connecting, or from the "
        "previous response) before the connection is closed.",
    )
    max_head_bytes: int = Field(
        default=65_536,
        ge=1024,
        description="Longest request head (request line and headers) in bytes; longer ones get 431.",
    )
    http_parser: Literal["auto", "httptools", "h11"] = Field(
        default="auto",
        description="HTTP/1.1 parser: httptools (C, the faster) where installed, else h11 (pure Python).",
    )
    max_texts: int = Field(
        default=256, ge=1, description="Most texts in one /embed or /v1/embeddings request."
    )
    max_text_chars: int = Field(
        default=20_000, ge=1, description="Longest single text accepted, in characters."
    )
    max_body_bytes: int = Field(
        default=4 * 2**20, ge=1024, description="Largest JSON request body; bigger bodies get 413."
    )
    max_upload_bytes: int = Field(
        default=2 * 2**30, ge=1024, description="Largest document upload to the admin ingest endpoint."
    )
    min_free_bytes: int = Field(
        default=100 * 2**20,
        ge=0,
        description="Disk space kept free on the home's volume: below it, writes (new collections, "
        "uploads, ingest, snapshots) stop with 507 while job records and commits still fit.",
    )
    max_queued_jobs: int = Field(
        default=100, ge=1, description="Most admin jobs queued at once; more get 429 with Retry-After."
    )
    max_request_tokens: int = Field(
        default=131_072,  # 256 texts of 512 tokens: the largest /embed request passes
        ge=512,
        description="Most tokens of model work one /embed, /v1/embeddings, /search or /mine-bitext "
        "request may need (413 beyond); bigger work goes through collections and admin jobs.",
    )
    mine_max_sentences: int = Field(
        default=2_000,
        ge=1,
        description="Most sentences per side /mine-bitext handles synchronously (embedding runs at "
        "~200/s on 2 cores); larger corpora go through collections and an admin mining job.",
    )
    max_k: int = Field(default=1000, ge=1, description="Largest k accepted by /search.")
    max_search_hits: int = Field(
        default=2000,
        ge=1,
        description="Most hits one /search request may ask for (queries × k); more is a 413.",
    )
    max_response_bytes: int = Field(
        default=64 * 2**20,
        ge=1024,
        description="Largest /search answer in bytes (hits carry their documents' text); more is a 413.",
    )
    search_threads: int = Field(
        default=1, ge=1, description="FAISS threads per /search call (requests run in parallel instead)."
    )
    passage_tokens: int = Field(
        default=256,
        ge=32,
        le=512,
        description="Most tokens per passage of a new collection's documents (the 'passage: ' prefix "
        "and special tokens included; documents longer are cut into several passages).",
    )
    passage_overlap: int = Field(
        default=32, ge=0, le=256, description="Tokens a passage repeats from the end of the one before."
    )
    max_passages: int = Field(
        default=256,
        ge=1,
        description="Most passages one document of a new collection may have; a longer document is a "
        "malformed line of its ingest, never cut silently.",
    )

    def passage_options(self) -> PassageOptions:
        """The passage options new collections are created with."""
        return PassageOptions(
            tokens=self.passage_tokens, overlap=self.passage_overlap, max_passages=self.max_passages
        )

    # --- cache
    redis_url: str | None = Field(
        default=None,
        description="Redis for the shared cache, e.g. redis://localhost:6379/0; unset: in-process LRU.",
    )
    redis_timeout_ms: float = Field(
        default=50.0, gt=0, description="Per-call Redis timeout; slower calls bypass the cache."
    )
    cache_ttl_s: int = Field(
        default=7 * 24 * 3600, ge=1, description="Lifetime of a cached embedding in Redis."
    )
    cache_max_items: int = Field(
        default=100_000, ge=0, description="Entries of the in-process LRU cache (0 disables it)."
    )
    cache_max_bytes: int = Field(
        default=268_435_456,
        ge=0,
        description="Bytes the in-process LRU cache may hold, keys and values (0 disables it).",
    )

    # --- admin
    admin_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Comma-separated bearer keys for /admin routes."
    )
    admin_open: bool = Field(
        default=False,
        description="Serve /admin without keys (local development only); otherwise no keys = admin disabled.",
    )
    demo: bool = Field(
        default=True,
        description="On first start, create the 'demo' collection from the bundled sample documents.",
    )

    # --- scale-out (bulk work on Ray; docs/scaling.md)
    ray_address: str | None = Field(
        default=None,
        description="Ray cluster for jobs and commands run with engine 'ray': auto or HOST:PORT of a "
        "node's Ray; unset: a local Ray with this machine's CPUs.",
    )
    ray_connect_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="How long a job or command waits to reach the Ray cluster before it fails.",
    )
    ray_actors: int | None = Field(
        default=None, ge=1, description="Embedding actors on Ray; default one per CPU of the cluster."
    )
    ray_shard_bytes: int = Field(
        default=4 << 20, ge=1024, description="Input bytes per ingest shard on Ray (one vector file each)."
    )

    def ray(
        self, address: str | None = None, actors: int | None = None, shard_bytes: int | None = None
    ) -> RayOptions:
        """How bulk work runs on Ray: the arguments given, else these settings."""
        return RayOptions(
            address=address or self.ray_address,
            actors=actors or self.ray_actors,
            shard_bytes=shard_bytes or self.ray_shard_bytes,
            connect_timeout_s=self.ray_connect_timeout_s,
        )

    @field_validator("admin_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @property
    def collections_dir(self) -> Path:
        return self.home / "collections"

    @property
    def snapshots_dir(self) -> Path:
        return self.home / "snapshots"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def uploads_dir(self) -> Path:
        return self.home / "uploads"

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir if self.data_dir is not None else self.home / "data"

    def in_data_dir(self, path: Path) -> bool:
        """The admin ingest sandbox: ``path``, symlinks followed, lies inside the data directory.
        Checked when a job is submitted and again when it runs (the path may be a symlink by then)."""
        return Path(path).resolve().is_relative_to(self.resolved_data_dir.resolve())

    @property
    def resolved_model_dir(self) -> Path:
        return self.model_dir if self.model_dir is not None else default_model_dir(self.home, self.model)
