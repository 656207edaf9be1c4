"""Which inference backend runs here: the fastest accurate one that this CPU and install offer.

The order is measured, not guessed: bench/embed.py runs every engine side by side on each CPU
class and bench/RESULTS.md keeps the tables. A backend that was asked for but cannot run here (its
runtime not installed, its graph not exported or exported from other weights) falls back to the
next one in that order, with one log line, so a server never fails to start over a backend it
could do without.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from core.errors import InputError
from model.artifact import Backend, Manifest
from model.cpu import CpuFeatures
from model.encoder import check_backend

log = logging.getLogger("dapsearch")

BackendRequest = Literal["auto", "torch", "onnx", "onnx-int8", "openvino", "openvino-int8"]
REQUESTS: tuple[BackendRequest, ...] = get_args(BackendRequest)

# The Python module each backend runs on.
RUNTIMES: dict[Backend, str] = {
    "torch": "torch",
    "onnx": "onnxruntime",
    "onnx-int8": "onnxruntime",
    "openvino": "openvino",
    "openvino-int8": "openvino",
}


@dataclass(frozen=True)
class BackendChoice:
    """What was asked for, what runs, and why: /info and /metrics report all three."""

    requested: BackendRequest
    backend: Backend
    reason: str  # public (/info): no paths
    fallback_cause: str | None = None  # why the requested backend could not run, for the log

    def log_fallback(self) -> None:
        """The one log line a fallback gets."""
        if self.fallback_cause is not None:
            log.warning(
                "backend %s cannot run here (%s); serving with %s",
                self.requested,
                self.fallback_cause,
                self.backend,
            )


def preference(cpu: CpuFeatures) -> tuple[Backend, ...]:
    """Fastest first, for this CPU, among graphs within the int8 accuracy floor (bench/RESULTS.md).

    With VNNI int8 dot products and native bf16, OpenVINO's int8 IR ran 2.28x ONNX Runtime's
    static int8 graph on AVX-512 VNNI + AVX512-BF16 and 2.88x on an AMX Xeon; OpenVINO in bf16
    ran 1.76x and 3.18x ONNX fp32 there. Elsewhere (AVX2 measured) ONNX
    Runtime leads: its int8 graph 1.15x its fp32 one, OpenVINO f32 0.87x and its int8 0.53x.
    """
    if cpu.int8_vnni and cpu.native_bf16:
        return ("openvino-int8", "onnx-int8", "openvino", "onnx", "torch")
    return ("onnx-int8", "onnx", "openvino", "torch", "openvino-int8")


def why_unusable(model_dir: Path, manifest: Manifest, backend: Backend) -> str | None:
    """Why ``backend`` cannot serve this model here, or None when it can."""
    runtime = RUNTIMES[backend]
    if importlib.util.find_spec(runtime) is None:
        return f"{runtime} is not installed"
    try:
        check_backend(model_dir, manifest, backend)
    except InputError as exc:
        return str(exc)
    return None


def parse_request(value: str) -> BackendRequest:
    for request in REQUESTS:
        if value == request:
            return request
    raise InputError(f"unknown backend {value!r}; choose one of {', '.join(REQUESTS)}")


def choose_backend(requested: str, model_dir: Path, manifest: Manifest, cpu: CpuFeatures) -> BackendChoice:
    """The backend to load: the one requested if it can run, else the fastest one that can."""
    request = parse_request(requested)
    ranked = preference(cpu)
    cause: str | None = None
    if request != "auto":
        cause = why_unusable(model_dir, manifest, request)
        if cause is None:
            return BackendChoice(request, request, "requested")
        ranked = tuple(b for b in ranked if b != request)
    reasons = [] if cause is None else [f"{request}: {cause}"]
    for backend in ranked:
        why = why_unusable(model_dir, manifest, backend)
        if why is None:
            if cause is None:
                return BackendChoice(request, backend, f"fastest usable on this CPU ({cpu.simd_text})")
            return BackendChoice(request, backend, f"{request} cannot run here", cause)
        reasons.append(f"{backend}: {why}")
    raise InputError("no inference backend can run this model here: " + "; ".join(reasons))


# What exporting a backend's graph needs installed beyond its runtime, torch and ONNX Runtime.
EXPORT_NEEDS: dict[Backend, tuple[str, ...]] = {"openvino-int8": ("nncf",)}


def can_make(backend: Backend) -> bool:
    """Whether this install can both make ``backend``'s graph and run it."""
    needs = (RUNTIMES[backend], *EXPORT_NEEDS.get(backend, ()))
    return all(importlib.util.find_spec(name) is not None for name in needs)


def default_export(cpu: CpuFeatures) -> Backend:
    """The backend a first run prepares when the choice is left to ``auto``: the fastest one this
    install can both make and run."""
    return next((backend for backend in preference(cpu) if can_make(backend)), "onnx-int8")
