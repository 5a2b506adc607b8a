"""The memory guard: before a job starts, its peak resident memory is estimated and the job is
refused, with a clear message, when it would not fit in the memory the machine has available. A job
that does not fit would swap for minutes or be killed by the operating system, taking a viewer
and the user's unsaved layers with it."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

from ..errors import ResourceError

#: The frame size the memory models are measured at (DAVIS, 480p).
REFERENCE_PIXELS = 480 * 854
#: What a run's labels kept in memory take per frame of 480p: a byte per pixel.
LABELS_MIB_PER_FRAME = REFERENCE_PIXELS / 2**20


@dataclass(frozen=True)
class MemoryModel:
    """Peak resident memory of a whole run: `base_mib` + `per_frame_mib` per frame of 480p, scaled
    with the frame's pixels (a run's labels, unless written to disk as they come, take a byte per
    pixel: 0.4 MiB per 480p frame). Measured by `vosembed benchmark memory` (docs/benchmarks.md)."""

    base_mib: float
    per_frame_mib: float

    def estimate(self, n_frames: int, height: int, width: int, labels_in_memory: bool = True) -> int:
        """Bytes a run on `n_frames` frames of `height` x `width` peaks at; with `labels_in_memory`
        False (a run writing them to disk frame by frame), less the labels' byte per pixel."""
        pixels = max(1.0, height * width / REFERENCE_PIXELS)
        per_frame = self.per_frame_mib - (0 if labels_in_memory else min(LABELS_MIB_PER_FRAME, self.per_frame_mib))
        return int((self.base_mib + per_frame * n_frames * pixels) * 2**20)


def available_bytes() -> int | None:
    """Memory the system can give without swapping (Linux `MemAvailable`, else psutil's
    `available`); None where neither tells."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def resident_bytes() -> int:
    """Resident memory of this process now (Linux), else its peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if os.uname().sysname == "Darwin" else peak * 1024


def check_fits(what: str, peak: int) -> None:
    """Refuse (`ResourceError`) a job whose estimated `peak` (bytes of this process) exceeds what it
    holds already plus what the system has available; `VOSEMBED_MEMORY_CHECK=off` runs it anyway."""
    if os.environ.get("VOSEMBED_MEMORY_CHECK", "on").lower() in ("off", "0", "no"):
        return
    available = available_bytes()
    if available is None:
        return
    needed = peak - resident_bytes()
    if needed > available:
        raise ResourceError(
            f"{what} needs about {peak / 2**30:.1f} GiB of memory, {needed / 2**30:.1f} GiB more than this process "
            f"holds, but only {available / 2**30:.1f} GiB are available. Close other programs, segment fewer frames "
            "(a part of the video) or a crop, or set VOSEMBED_MEMORY_CHECK=off to run anyway"
        )
