"""What this CPU computes fast, read at run time (never at build time: one image runs on many CPUs).

The flags that decide the kernels: VNNI (``vpdpbusd``) doubles ONNX Runtime's int8 matrix
products over AVX2's ``vpmaddubsw``; AMX and AVX512-BF16 make bf16 native (elsewhere it is
emulated, slower than fp32); AMX-INT8 adds int8 tile products.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuFeatures:
    model: str
    flags: frozenset[str]

    @property
    def simd(self) -> list[str]:
        """The kernel-deciding flags present, in a fixed order."""
        return [f for f in SIMD_FLAGS if f in self.flags]

    @property
    def simd_text(self) -> str:
        """``avx2+fma+...``, or ``none`` where no such flag is listed."""
        return "+".join(self.simd) or "none"

    @property
    def int8_vnni(self) -> bool:
        return bool(self.flags & {"avx512_vnni", "avx_vnni", "amx_int8"})

    @property
    def native_bf16(self) -> bool:
        return bool(self.flags & {"amx_bf16", "avx512_bf16"})


@cache
def cpu_features() -> CpuFeatures:
    """From /proc/cpuinfo (Linux); elsewhere the model from ``platform`` and no flags."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():  # the first processor's entries: all cores are alike
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    model = fields.get("model name") or platform.processor() or "unknown"
    return CpuFeatures(model, frozenset(fields.get("flags", "").split()))
