"""Bulk work on a Ray cluster: the connection, the embedding actors and the pool that feeds them.

Ray is imported here and in the ``ray_*`` modules only, and only once the ray engine is asked
for (the ``dapsearch[ray]`` extra); the local engine never loads it. Each actor holds one
encoder for its life. The pool gives work only to actors that have started, gives the work of
an actor that died (its node removed, its process killed) to another one, and starts a
replacement, so losing a worker costs the work it had in flight, never the job.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, get_args

import numpy as np

from core.errors import InputError
from core.files import atomic_write_bytes
from index.cutting import CutOptions
from index.ingest import Format
from index.shards import ShardResult, embed_shard
from model.artifact import MANIFEST, Backend, backend_files, read_manifest
from model.encoder import Encoder, Kind

log = logging.getLogger(__name__)

Engine = Literal["local", "ray"]  # where bulk work runs: in this process, or on a Ray cluster
ENGINES: tuple[Engine, ...] = get_args(Engine)
DEFAULT_SHARD_TEXTS = 2048  # texts per task when embedding a list (embed, mine, reindex)
STALL_TIMEOUT_S = 600.0  # no task finished nor actor started for this long: the cluster cannot run it
TASK_ATTEMPTS = 3  # actors a task may take down before the job fails on it
CONNECT_TIMEOUT_S = 30.0
PROBE_EVERY_S = 0.5


@dataclass(frozen=True)
class RayOptions:
    """How to run on Ray: the cluster (``None`` starts a local one with this machine's CPUs),
    the actors (default: as many as the cluster's CPUs allow) and the work per task."""

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: int = 1
    shard_bytes: int | None = None  # ingest: input bytes per shard (index.shards.DEFAULT_SHARD_BYTES)
    shard_texts: int = DEFAULT_SHARD_TEXTS
    stall_timeout_s: float = STALL_TIMEOUT_S
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    # Called while waiting for the cluster; it raises to stop the wait (a job's cancel or shutdown).
    interrupt: Callable[[], None] | None = None


class ClusterUnreachable(InputError):
    """The Ray cluster's address answers nothing (503: the server's setting, not the request)."""

    status = 503


def parse_engine(value: str) -> Engine:
    if value not in ENGINES:
        raise InputError(f"engine must be one of {', '.join(ENGINES)}, not {value!r}")
    return "ray" if value == "ray" else "local"


def ray_module() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError("the ray engine needs Ray: pip install 'dapsearch[ray]'") from None
    return ray


def _host_port(address: str) -> tuple[str, int]:
    hostport = address.removeprefix("ray://").rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(
            f"invalid Ray address {address!r}: use HOST:PORT of a node's Ray, auto, or leave it unset"
        )
    return host.strip("[]"), int(port)


def probe(address: str | None, timeout_s: float, interrupt: Callable[[], None] | None = None) -> None:
    """Reach ``address`` over TCP within ``timeout_s``, or raise ClusterUnreachable.

    Ray's own connect retries an unreachable address for minutes, in a call nothing can
    interrupt: a job, its cancel and the service's shutdown would all wait on it. So the address
    is tried here first, in short attempts with ``interrupt`` called between them. No address
    (a local Ray) and ``auto`` (found from this machine's Ray session) need no probe.
    """
    if not address or address == "auto":
        return
    host, port = _host_port(address)
    deadline = time.monotonic() + timeout_s
    while True:
        if interrupt is not None:
            interrupt()
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(0.05, min(1.0, left))):
                return
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
        if time.monotonic() + PROBE_EVERY_S >= deadline:
            raise ClusterUnreachable(
                f"cannot reach the Ray cluster at {address} within {timeout_s:g} s ({reason.lower()}); "
                "check DAPSEARCH_RAY_ADDRESS"
            )
        time.sleep(PROBE_EVERY_S)


def connect(options: RayOptions) -> Any:
    """Ray, connected: to ``options.address`` (``auto``, or ``host:port`` of a node's Ray), or to a
    new local Ray with this machine's CPUs. A process already connected stays on its cluster, but
    an address asked for must answer all the same: a job never runs elsewhere than it was told."""
    ray = ray_module()
    address = options.address
    probe(address, options.connect_timeout_s, options.interrupt)
    if ray.is_initialized():
        return ray
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            # "local": a new Ray of our own, never a cluster `ray start` left running here
            ray.init(
                address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False
            )
    except ConnectionError:
        raise ClusterUnreachable(f"cannot connect to the Ray cluster at {address}") from None
    return ray


# ------------------------------------------------------------------------------- the encoder


@dataclass(frozen=True)
class EncoderSpec:
    """What an actor builds its encoder from: the driver's model directory if the actor's node has
    it (same model id), else the model's files shipped through the object store."""

    model_id: str
    backend: Backend
    batch_size: int
    threads: int
    directory: str | None
    dim: int
    max_length: int
    files: Any = None  # an ObjectRef of {relative path: bytes}, or None

    @classmethod
    def of(cls, encoder: Encoder, threads: int) -> EncoderSpec:
        backend: Backend = encoder.backend.name
        if backend != "dummy" and encoder.directory is None:
            raise InputError("the ray engine needs an encoder loaded from a model directory")
        return cls(
            encoder.model_id,
            backend,
            encoder.batch_size,
            threads,
            None if encoder.directory is None else str(encoder.directory),
            encoder.dim,
            encoder.manifest.max_length,
        )

    def model_files(self) -> dict[str, bytes]:
        assert self.directory is not None
        root = Path(self.directory)
        return {str(p.relative_to(root)): p.read_bytes() for p in backend_files(root, self.backend)}

    def _holds(self, directory: Path) -> bool:
        try:
            return (directory / MANIFEST).is_file() and read_manifest(directory).id == self.model_id
        except InputError:
            return False

    def load(self) -> Encoder:
        if self.backend == "dummy":
            return Encoder.dummy(self.dim, self.max_length, self.batch_size)
        directory = Path(self.directory) if self.directory else None
        if directory is None or not self._holds(directory):
            directory = self._materialise()
        return Encoder.load(directory, self.backend, self.threads, self.batch_size)

    def _materialise(self) -> Path:
        """A node-local copy of the shipped files, made once per node and model (manifest last)."""
        if self.files is None:
            raise InputError(f"model {self.model_id} is not at {self.directory} on this Ray node")
        safe = self.model_id.replace("@", "-").replace("/", "_")
        directory = Path(tempfile.gettempdir()) / "dapsearch-models" / f"{safe}-{self.backend}"
        if self._holds(directory):
            return directory
        files: dict[str, bytes] = ray_module().get(self.files)
        for name in sorted(files, key=lambda n: n == MANIFEST):
            atomic_write_bytes(directory / name, files[name])
        return directory


class EmbeddingActor:
    """One encoder, kept for the actor's life (one ONNX or OpenVINO session per actor)."""

    def __init__(self, spec: EncoderSpec) -> None:
        self._error: InputError | None = None
        try:
            self.encoder = spec.load()
        except InputError as exc:  # kept for ready(): a failed __init__ would lose its message
            self._error = exc

    def ready(self) -> str:
        if self._error is not None:
            raise self._error
        return self.encoder.model_id

    def embed(self, texts: list[str], kind: Kind) -> np.ndarray:
        return self.encoder.embed(texts, kind)

    def embed_shard(self, data: bytes, fmt: Format, start: int, options: CutOptions) -> ShardResult:
        return embed_shard(self.encoder, data, fmt, start, options)


# ---------------------------------------------------------------------------------- the pool

Task = tuple[int, tuple[Any, ...]]  # (key, the actor method's arguments)


class EmbeddingPool:
    """Actors holding the encoder, and a dispatcher that survives losing some of them."""

    def __init__(self, encoder: Encoder, options: RayOptions, method: str) -> None:
        self.ray = connect(options)
        self.options, self.method = options, method
        total = int(self.ray.cluster_resources().get("CPU", 0))
        cpus = options.cpus_per_actor
        self.size = options.actors or max(1, total // cpus)
        if cpus < 1 or self.size < 1:
            raise InputError("actors and CPUs per actor must be at least 1")
        if self.size * cpus > total:
            raise InputError(
                f"{self.size} actors of {cpus} CPU(s) need {self.size * cpus} CPUs; "
                f"the Ray cluster has {total}"
            )
        spec = EncoderSpec.of(encoder, cpus)
        alive = [n for n in self.ray.nodes() if n.get("Alive")]
        if spec.backend != "dummy" and len(alive) > 1:  # nodes may not share this machine's disk
            spec = replace(spec, files=self.ray.put(spec.model_files()))
        self._spec = spec
        self._actor = self.ray.remote(num_cpus=cpus, max_restarts=0, max_task_retries=0)(EmbeddingActor)
        self._actors: list[Any] = []
        self.retried = 0  # tasks given to another actor after theirs was lost
        self._starting: dict[Any, Any] = {}  # ready() ref -> actor
        for _ in range(self.size):
            self._start_actor()

    def _start_actor(self) -> None:
        actor = self._actor.remote(self._spec)
        self._actors.append(actor)
        self._starting[actor.ready.remote()] = actor

    def _lost(self, actor: Any) -> None:
        if actor in self._actors:
            self._actors.remove(actor)
        self.ray.kill(actor, no_restart=True)
        self._start_actor()  # scheduled as soon as the cluster has the CPUs again

    def __enter__(self) -> EmbeddingPool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        for actor in self._actors:
            self.ray.kill(actor, no_restart=True)
        self._actors.clear()
        self._starting.clear()

    def _failure(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the actor or its node died (retry elsewhere), not the task failed."""
        errors = self.ray.exceptions
        if isinstance(exc, errors.RayActorError) and getattr(exc, "_actor_init_failed", False):
            return False  # it would fail the same way anywhere
        lost = (errors.RayActorError, errors.WorkerCrashedError, errors.NodeDiedError, errors.ObjectLostError)
        return isinstance(exc, lost)

    def run(self, tasks: Iterable[Task], depth: int = 2) -> Iterator[tuple[int, Any]]:
        """Each task's result as it finishes (any order); at most ``depth`` tasks queued per actor,
        pulled from ``tasks`` only as actors free up, so the input is read as fast as it is used."""
        pending = iter(tasks)
        retry: deque[Task] = deque()
        attempts: Counter[int] = Counter()
        busy: dict[Any, int] = {}  # ready actor -> tasks in flight
        inflight: dict[Any, tuple[Task, Any]] = {}
        exhausted = False
        last_progress = time.monotonic()
        while True:
            for actor in [a for a, n in busy.items() if n < depth]:
                while busy[actor] < depth:
                    task = retry.popleft() if retry else next(pending, None)
                    if task is None:
                        exhausted = True
                        break
                    ref = getattr(actor, self.method).remote(*task[1])
                    inflight[ref] = (task, actor)
                    busy[actor] += 1
            if exhausted and not retry and not inflight:
                return
            waiting = list(inflight) + list(self._starting)
            done, _ = self.ray.wait(waiting, num_returns=1, timeout=5.0)
            if not done:
                if time.monotonic() - last_progress > self.options.stall_timeout_s:
                    raise InputError(
                        f"the Ray cluster ran nothing for {self.options.stall_timeout_s:.0f} s: "
                        f"no actor of {self.options.cpus_per_actor} CPU(s) could start"
                    )
                continue
            last_progress = time.monotonic()
            ref = done[0]
            if ref in self._starting:
                actor = self._starting.pop(ref)
                try:
                    self.ray.get(ref)
                except Exception as exc:  # an actor that cannot load the model: say so
                    if not self._failure(exc):
                        raise _cause(exc) from None
                    self._lost(actor)
                    continue
                busy[actor] = 0
                continue
            task, actor = inflight.pop(ref)
            try:
                result = self.ray.get(ref)
            except Exception as exc:
                if not self._failure(exc):
                    raise _cause(exc) from None
                attempts[task[0]] += 1
                if attempts[task[0]] >= TASK_ATTEMPTS:
                    raise InputError(
                        f"task {task[0]} was lost with its actor {TASK_ATTEMPTS} times"
                    ) from None
                log.warning("an embedding actor was lost; its tasks go to the others")
                for other, (t, a) in list(inflight.items()):
                    if a is actor:  # the dead actor's queue goes with it
                        del inflight[other]
                        retry.append(t)
                        self.retried += 1
                retry.appendleft(task)
                self.retried += 1
                busy.pop(actor, None)
                self._lost(actor)
                continue
            busy[actor] -= 1
            yield task[0], result

    def ordered(self, tasks: Iterable[Task], depth: int = 2) -> Iterator[Any]:
        """``run``'s results in key order (keys 0, 1, 2, ...), held back only while one is late."""
        held: dict[int, Any] = {}
        following = 0
        for key, result in self.run(tasks, depth):
            held[key] = result
            while following in held:
                yield held.pop(following)
                following += 1


def _cause(exc: BaseException) -> BaseException:
    """The exception a remote call raised, unwrapped from Ray's (user errors keep their type)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def embed_texts(
    encoder: Encoder,
    texts: list[str],
    kind: Kind,
    options: RayOptions,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """``encoder.embed(texts, kind)`` on a pool of actors, in order."""
    size = max(1, options.shard_texts)
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    tasks = ((i, (texts[s : s + size], kind)) for i, s in enumerate(range(0, len(texts), size)))
    with EmbeddingPool(encoder, options, "embed") as pool:
        start = 0
        for vectors in pool.ordered(tasks):
            out[start : start + len(vectors)] = vectors
            start += len(vectors)
            if progress is not None:
                progress(len(vectors))
    return out
