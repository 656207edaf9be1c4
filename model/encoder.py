"""Text in, L2-normalised float32 vectors out: tokenize -> forward -> pool, in three steps.

Backends: ``torch`` (fp32, for reference and training), ``onnx`` (fp32) and ``onnx-int8`` on
ONNX Runtime, ``openvino`` (the fp32 graph, in bf16 where the CPU has it natively) and
``openvino-int8`` (NNCF's int8 IR) on OpenVINO. Which one serves is chosen per CPU
(model/backend_choice.py). Only torch imports torch or transformers.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from core.clock import now_iso
from core.errors import InputError
from model.artifact import (
    BACKENDS,
    TOKENIZER,
    Backend,
    Manifest,
    Pooling,
    backend_file,
    export_key,
    read_manifest,
)
from model.cpu import cpu_features
from model.padding import Widening, plan

MAX_BATCH_TOKENS = 2048  # padded tokens per forward pass (see TextTokenizer.batches)
Kind = Literal["query", "passage"]
KINDS: tuple[Kind, ...] = ("query", "passage")


@dataclass
class TokenBatch:
    """Padded ids of one batch, with the positions of its texts in the caller's list."""

    input_ids: np.ndarray  # (n, L) int64
    attention_mask: np.ndarray  # (n, L) int64
    order: list[int]


@dataclass
class Tokenized:
    ids: list[list[int]]
    truncated: list[int] = field(default_factory=list)

    def take(self, rows: Sequence[int]) -> Tokenized:
        """The texts at ``rows``, in that order, with their truncation flags."""
        cut = set(self.truncated)
        return Tokenized([self.ids[r] for r in rows], [j for j, r in enumerate(rows) if r in cut])


@dataclass
class Embeddings:
    """Vectors plus what a caller needs to report usage and truncation honestly."""

    vectors: np.ndarray  # (n, dim) float32, L2-normalised
    truncated: list[int]  # indices of inputs cut at max_length
    tokens: int  # tokens fed to the model, specials included
    lengths: list[int] = field(default_factory=list)  # tokens of each input, specials included


@dataclass
class Timings:
    """Where encode() spent its time, for a server's metrics (filled in when passed)."""

    tokenize_s: float = 0.0
    forward_s: list[float] = field(default_factory=list)  # one entry per forward batch
    batch_sizes: list[int] = field(default_factory=list)
    batch_tokens: list[int] = field(default_factory=list)  # real tokens per batch, padding excluded


class TextTokenizer:
    """Prefixing, tokenisation, explicit truncation and padding."""

    def __init__(self, tokenizer_path: Path | None, manifest: Manifest) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(tokenizer_path)) if tokenizer_path else _byte_tokenizer()
        self._tok.no_padding()
        self._tok.enable_truncation(manifest.max_length)
        self.manifest = manifest
        pad = self._tok.token_to_id("<pad>")
        self.pad_id = 0 if pad is None else pad

    def plain(self) -> Any:
        """A copy of the ``tokenizers.Tokenizer`` that never truncates nor pads: for cutting long
        texts into passages and for lexical terms, which need every token and its offsets."""
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(self._tok.to_str())
        tok.no_truncation()
        tok.no_padding()
        return tok

    def tokenize(self, texts: Sequence[str], kind: Kind) -> Tokenized:
        """Tokenize with the kind's prefix; trailing whitespace is dropped as sentencepiece does."""
        prefix = self.manifest.prefix(kind)
        encodings = self._tok.encode_batch([prefix + t.strip() for t in texts])
        return Tokenized(
            ids=[e.ids for e in encodings],
            truncated=[i for i, e in enumerate(encodings) if e.overflowing],
        )

    def batches(
        self,
        ids: list[list[int]],
        batch_size: int,
        max_tokens: int = MAX_BATCH_TOKENS,
        widening: Widening | None = None,
    ) -> Iterator[TokenBatch]:
        """Batches of similar length (``model.padding.plan``), longest first, of at most
        ``batch_size`` texts and (beyond one text) ``max_tokens`` padded tokens: 64 paragraphs of
        250 tokens run 3 to 4 times slower per text than 8 at a time, the attention scores no
        longer fitting in cache."""
        for rows in plan([len(row) for row in ids], batch_size, max_tokens, widening=widening):
            yield self.pad(ids, rows)

    def pad(self, ids: list[list[int]], rows: list[int]) -> TokenBatch:
        """The texts at ``rows`` as one batch, padded to the longest of them."""
        width = max(1, max(len(ids[i]) for i in rows))
        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for row, i in enumerate(rows):
            input_ids[row, : len(ids[i])] = ids[i]
            mask[row, : len(ids[i])] = 1
        return TokenBatch(input_ids, mask, list(rows))


def _byte_tokenizer() -> Any:
    """A tokenizer that needs no file: one token per UTF-8 byte (byte-level BPE without merges)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<pad>": 0, **{char: i + 1 for i, char in enumerate(alphabet)}}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return tokenizer


class ForwardBackend(Protocol):
    """Runs the network on one padded batch and returns pooled, normalised vectors."""

    name: Backend

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...

    def run_width(self, rows: int, width: int) -> int:
        """The width a batch of ``rows`` texts padded to ``width`` really runs at (for the plan)."""
        return width


class TextEncoder(Protocol):
    """What bulk callers (ingest) need: the model's id and texts → vectors. ``Encoder`` is one; the
    service's ``BulkEncoder`` is another, which runs the texts through its shared batcher."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def tokenizer(self) -> TextTokenizer:
        """The model's tokenizer: documents are cut into passages it never truncates."""
        ...

    def embed(self, texts: Sequence[str], kind: Kind = "query") -> np.ndarray: ...


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


class OnnxBackend(ForwardBackend):
    """ONNX Runtime session over a graph that already pools and normalises."""

    def __init__(self, path: Path, name: Backend, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or default_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.name = name
        self._output = self.session.get_outputs()[0].name

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        (out,) = self.session.run([self._output], feeds)
        return np.asarray(out, dtype=np.float32)


# OpenVINO's dynamic-shape graph re-plans every node, about 1 ms, whenever the input shape differs
# from the previous call's, which for single queries of varying length is every call. Small
# batches are therefore padded to a multiple of PAD_WIDTH tokens, so that most calls repeat a
# shape (masked positions change nothing else); beyond SMALL_BATCH rows the padding costs more
# than the re-plan (bench/RESULTS.md). Graphs compiled per shape would avoid both, but each holds
# its own copy of the 384 MB embedding table.
PAD_WIDTH = 32
SMALL_BATCH = 4
# Larger batches are padded up a ladder of widths (``ladder_width``: steps of 4 tokens up to 32,
# then 8, 16 and 32), and the kernels of at most SHAPE_CACHE shapes are kept (OpenVINO's
# CPU_RUNTIME_CACHE_CAPACITY, 5,000 by default). Exact widths let memory grow: over 400 requests of
# 1, 8 or 32 dev sentences, exact widths and the default cache took RSS from 908 to 2,448 MB and
# growing; a step of 8 and this cache, 1,180 MB. The ladder repeats shapes as that step does, with
# less padding on short texts: 1.05-1.13x the step of 8 at batch 32 on 10-20-token texts, 1.08-1.16x
# on dev sentences of natural length, level on 50-70 tokens (bench/RESULTS.md).
LADDER: tuple[tuple[int, int], ...] = ((32, 4), (64, 8), (128, 16))  # (up to width, step)
LADDER_TOP_STEP = 32
SHAPE_CACHE = 512


def ladder_width(width: int) -> int:
    """``width`` rounded up to the next rung of LADDER."""
    step = next((step for top, step in LADDER if width <= top), LADDER_TOP_STEP)
    return width + (-width % step)


class OpenVinoBackend(ForwardBackend):
    """OpenVINO's CPU plugin over the fp32 ONNX graph or NNCF's int8 IR.

    The fp32 graph runs in bf16 where the CPU has it natively (AMX, AVX512-BF16), else in f32;
    the int8 IR runs int8 MatMuls and keeps the rest in f32. One infer request, behind a
    lock: its output buffer is reused by the next call, so each result is copied out first.
    """

    def __init__(self, path: Path, name: Backend, threads: int | None = None) -> None:
        import openvino as ov

        core = ov.Core()
        threads = threads or default_threads()
        config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            # OpenVINO pins its threads to the first cores: processes that each run fewer threads
            # than there are cores (Ray actors, replicas) would all share core 0. Measured with two
            # 1-thread processes on 2 cores: 276 docs/s each pinned, 590 each unpinned.
            "ENABLE_CPU_PINNING": threads >= default_threads(),
            "CPU_RUNTIME_CACHE_CAPACITY": SHAPE_CACHE,
            # bf16 only for the fp32 graph: the int8 IR's bf16 parts gave wrong vectors (cosine
            # 0.93 to fp32) for inputs exactly 32 tokens wide on an AMX Xeon, and ran slower there.
            "INFERENCE_PRECISION_HINT": "bf16"
            if cpu_features().native_bf16 and name == "openvino"
            else "f32",
        }
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()
        self.name = name

    def run_width(self, rows: int, width: int) -> int:
        return width + (-width % PAD_WIDTH) if rows <= SMALL_BATCH else ladder_width(width)

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        rows, width = input_ids.shape
        extra = self.run_width(rows, width) - width
        if extra:  # any id will do: the zero mask hides these positions
            input_ids = np.pad(input_ids, ((0, 0), (0, extra)))
            attention_mask = np.pad(attention_mask, ((0, 0), (0, extra)))
        with self._lock:
            self._request.infer({"input_ids": input_ids, "attention_mask": attention_mask})
            out = self._request.get_output_tensor(0).data
            return np.array(out, dtype=np.float32, copy=True)


class TorchBackend(ForwardBackend):
    """Plain PyTorch fp32, the reference the ONNX graphs are checked against."""

    name: Backend = "torch"

    def __init__(self, model_dir: Path, pooling: Pooling, threads: int | None = None) -> None:
        import torch

        from model.torch_model import load_embedder

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self.module = load_embedder(model_dir, pooling)

    def hidden_states(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            hidden = self.module.hidden_states(
                self._torch.from_numpy(input_ids), self._torch.from_numpy(attention_mask)
            )
        states: np.ndarray = hidden.numpy()
        return states

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            out = self.module(self._torch.from_numpy(input_ids), self._torch.from_numpy(attention_mask))
        vectors: np.ndarray = out.numpy().astype(np.float32)
        return vectors


class DummyBackend(ForwardBackend):
    """A deterministic stand-in for the network: each padded row's real token ids hash to a unit
    vector. The same text gives the same vector alone or in any batch, different texts unrelated
    ones, so API, batcher and job tests run without any model, in milliseconds."""

    name: Backend = "dummy"

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        out = np.empty((len(input_ids), self.dim), dtype=np.float32)
        for row, (ids, mask) in enumerate(zip(input_ids, attention_mask, strict=True)):
            digest = hashlib.blake2b(ids[mask.astype(bool)].astype("<i8").tobytes(), digest_size=8)
            vector = np.random.default_rng(int.from_bytes(digest.digest(), "little")).standard_normal(
                self.dim
            )
            out[row] = vector / np.linalg.norm(vector)
        return out


def check_backend(model_dir: Path, manifest: Manifest, backend: Backend) -> Path:
    """The file ``backend`` would load, after checking it exists and belongs to these weights."""
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    path = backend_file(model_dir, backend)
    if not path.is_file():
        hint = "dapsearch model export" if backend != "torch" else "dapsearch model build"
        raise InputError(f"backend {backend!r} needs {path}, which does not exist; run '{hint}'")
    key = export_key(backend)
    entry = None if key is None else manifest.onnx.get(key)
    if key is not None and (entry is None or entry.source_model_id != manifest.id):
        raise InputError(
            f"{path} was not exported from model {manifest.id}; run 'dapsearch model export' again"
        )
    return path


def load_backend(
    model_dir: Path, manifest: Manifest, backend: Backend, threads: int | None
) -> ForwardBackend:
    path = check_backend(model_dir, manifest, backend)
    if backend == "torch":
        return TorchBackend(model_dir, manifest.pooling, threads)
    if backend in ("openvino", "openvino-int8"):
        return OpenVinoBackend(path, backend, threads)
    return OnnxBackend(path, backend, threads)


class Encoder:
    """The one way text becomes vectors in dapsearch (CLI, service, index, evaluation)."""

    def __init__(
        self, manifest: Manifest, tokenizer: TextTokenizer, backend: ForwardBackend, batch_size: int = 32
    ) -> None:
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.backend = backend
        self.batch_size = batch_size
        self.directory: Path | None = None  # where it was loaded from: what a remote copy is made of

    @classmethod
    def load(
        cls,
        model_dir: Path,
        backend: Backend = "onnx-int8",
        threads: int | None = None,
        batch_size: int = 32,
    ) -> Encoder:
        model_dir = Path(model_dir)
        manifest = read_manifest(model_dir)
        tokenizer = TextTokenizer(model_dir / TOKENIZER, manifest)
        encoder = cls(manifest, tokenizer, load_backend(model_dir, manifest, backend, threads), batch_size)
        encoder.directory = model_dir
        return encoder

    @classmethod
    def dummy(cls, dim: int = 384, max_length: int = 512, batch_size: int = 32) -> Encoder:
        """The model-free encoder (``DummyBackend``, a byte tokenizer, no prefixes): for tests of
        everything around the model. Its id names it, so its vectors never mix with a model's."""
        manifest = Manifest(
            id=f"dummy-{dim}@{'0' * 16}",
            name=f"dummy-{dim}",
            weights_sha256="0" * 64,
            dim=dim,
            pooling="mean",
            max_length=max_length,
            provenance={"source": "model.encoder.DummyBackend: hashes, no weights"},
            created=now_iso(),
        )
        return cls(manifest, TextTokenizer(None, manifest), DummyBackend(dim), batch_size)

    @property
    def model_id(self) -> str:
        return self.manifest.id

    @property
    def dim(self) -> int:
        return self.manifest.dim

    def encode(
        self,
        texts: Sequence[str],
        kind: Kind = "query",
        progress: Callable[[int], None] | None = None,
        timings: Timings | None = None,
        tokenized: Tokenized | None = None,
    ) -> Embeddings:
        """Embed ``texts``; ``progress`` is called with the number of texts done per batch.
        ``tokenized``: the texts' ids under ``kind`` where the caller has them already (the
        service counts a request's tokens before it queues them), so no text is tokenised twice."""
        if kind not in KINDS:
            raise InputError(f"kind must be 'query' or 'passage', not {kind!r}")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if tokenized is None:
            started = time.perf_counter()
            tokenized = self.tokenizer.tokenize(texts, kind)
            if timings is not None:
                timings.tokenize_s += time.perf_counter() - started
        elif len(tokenized.ids) != len(texts):
            raise ValueError(f"{len(tokenized.ids)} token rows for {len(texts)} texts")
        for batch in self.tokenizer.batches(tokenized.ids, self.batch_size, widening=self.backend.run_width):
            started = time.perf_counter()
            out[batch.order] = self.backend.forward(batch.input_ids, batch.attention_mask)
            if timings is not None:
                timings.forward_s.append(time.perf_counter() - started)
                timings.batch_sizes.append(len(batch.order))
                timings.batch_tokens.append(int(batch.attention_mask.sum()))
            if progress is not None:
                progress(len(batch.order))
        lengths = [len(ids) for ids in tokenized.ids]
        return Embeddings(out, tokenized.truncated, sum(lengths), lengths)

    def embed(self, texts: Sequence[str], kind: Kind = "query") -> np.ndarray:
        """(n, dim) float32, L2-normalised."""
        return self.encode(texts, kind).vectors
