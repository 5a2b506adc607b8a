"""Make faiss's exact search run at the speed of the CPU it is on.

The faiss-cpu wheels bundle their own OpenBLAS (0.3.15 in faiss-cpu 1.15), which picks its
kernels from the CPU model number. A CPU released after it ("Core not found" with
`OPENBLAS_VERBOSE=2`) falls back to generic SSE kernels: on a recent Xeon the inner products of one
480p frame against a PML reference pool took 0.79 s on one thread instead of 0.14 s. OpenBLAS reads
`OPENBLAS_CORETYPE` when it loads, so before faiss is imported we name the kernel family the CPU's
instruction flags support, unless the user already chose one.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def openblas_coretype(flags: set[str]) -> str | None:
    """The OpenBLAS kernel family for an x86-64 CPU with these /proc/cpuinfo `flags`: SkylakeX for
    AVX-512 (F, BW, VL, DQ), Haswell for AVX2 with FMA, else None (OpenBLAS's own choice)."""
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return "Haswell"
    return None


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The instruction flags of the first CPU listed in `cpuinfo` (empty where there is none)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def configure_openblas() -> None:
    """Set `OPENBLAS_CORETYPE` from the CPU's flags on x86-64 Linux, unless it is set already."""
    if "OPENBLAS_CORETYPE" in os.environ or platform.system() != "Linux" or platform.machine() != "x86_64":
        return
    core = openblas_coretype(cpu_flags())
    if core is not None:
        os.environ["OPENBLAS_CORETYPE"] = core
