"""`vosembed benchmark ...`: speed, memory and accuracy measurements, written as JSON + Markdown.

Every benchmark writes `<out>/<name>.json` and replaces its own section of `docs/benchmarks.md`
(between `<!-- name:start -->` and `<!-- name:end -->`), so the figures in the docs are always
the ones a command produced.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import tempfile
from pathlib import Path

import torch


def machine() -> dict:
    """What the figures were measured on, and how busy the machine was (1-minute load average)."""
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "load_average_1min": os.getloadavg()[0]}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def long_clip(data_root: Path, n_frames: int) -> Path:
    """A frame folder of `n_frames` frames linked from the sequences under `data_root`, in order.

    DAVIS sequences are shorter than 100 frames; the benchmark needs one long 480p video.
    """
    from ..io import list_sequences, read_sequence

    folder = Path(tempfile.mkdtemp(prefix="vosembed-clip-"))
    t = 0
    for name in list_sequences(data_root):
        seq = read_sequence(data_root / name)
        for frame_name in seq.video.frame_names:
            src = next((data_root / name / "frames").glob(f"{frame_name}.*"))
            (folder / f"{t:05d}{src.suffix}").symlink_to(src.resolve())
            t += 1
            if t == n_frames:
                return folder
    raise ValueError(f"{data_root} holds only {t} frames, fewer than the {n_frames} asked for")


def write_report(name: str, payload: dict, markdown: str, out_dir: Path, docs: Path) -> None:
    """Write `<out_dir>/<name>.json` and put `markdown` into its section of `docs`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=2))
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = docs.read_text() if docs.exists() else "# Benchmarks\n"
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(text)
