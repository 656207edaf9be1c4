"""What benchmarks share: the machine facts every one prints (so results from two machines are not
mixed), memory readings, and the worker/parent entry point of those that measure in subprocesses."""

from __future__ import annotations

import argparse
import contextlib
import gc
import resource
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks run as scripts, without the package on the path
    sys.path.insert(0, str(ROOT))

from model.cpu import cpu_features  # noqa: E402


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    return cpu_features().model


def cpu_flags() -> str:
    """The SIMD features that decide which kernels run (int8 VNNI, bf16 AMX), as ``avx2+fma+...``."""
    return cpu_features().simd_text


def _proc_status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (Linux) in MB, or None where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Current resident set size (NaN where /proc is missing)."""
    value = _proc_status_mb("VmRSS")
    return float("nan") if value is None else value


def reset_peak_rss() -> None:
    """Start peak-RSS accounting now (Linux clear_refs): earlier temporaries (data generation) don't count."""
    gc.collect()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    """Peak RSS since reset_peak_rss, or the whole process's (VmHWM; ru_maxrss without /proc:
    KiB on Linux, bytes on macOS)."""
    value = _proc_status_mb("VmHWM")
    if value is not None:
        return value
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def main_for(
    parse_args: Callable[[Sequence[str]], argparse.Namespace],
    worker: Callable[[argparse.Namespace], int],
    parent: Callable[[argparse.Namespace, Sequence[str]], int],
    argv: Sequence[str] | None = None,
) -> int:
    """One measurement in a ``--worker`` subprocess, else the parent that runs and tabulates them."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(args_list)
    if args.worker:
        return worker(args)
    return parent(args, [sys.argv[0], *args_list])
