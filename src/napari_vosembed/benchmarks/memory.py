"""`vosembed benchmark memory`: each method's peak resident memory for a whole run at two video
lengths, and the memory model fitted to them (`engine.memory.MemoryModel`: a base plus a cost per
frame), beside the model the method declares for its memory guard.

Every run is `segment()` from the first frame's mask (no prompt for methods that take none) in a
fresh process with an empty embedding cache, as a user's first run on a video: embedding included.
The video is a frame folder, read lazily: a sequence played forth and back to the length asked for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from . import Benchmark, register_benchmark, report_arguments


def clip_folder(sequence: Path, frames: int, folder: Path) -> None:
    """Link `frames` frames of `sequence` (forth and back) into `folder`, and its first mask."""
    import numpy as np

    from ..io import read_sequence, write_png_labels

    seq = read_sequence(sequence)
    n = len(seq.video)
    order = np.resize(np.r_[np.arange(n), np.arange(n - 2, 0, -1)], frames)
    sources = sorted((sequence / "frames").iterdir())
    (folder / "frames").mkdir(parents=True)
    for t, i in enumerate(order):
        (folder / "frames" / f"{t:05d}{sources[i].suffix}").symlink_to(sources[i].resolve())
    write_png_labels((seq.ground_truth()[0] > 0)[None].astype(np.uint8), folder / "mask", ["00000"])


def _worker(spec: dict) -> dict:
    """One method, one length; runs inside the subprocess."""
    import torch

    from ..io import open_video, read_label_image
    from ..methods import get_method, segment
    from ..prompts import Prompts
    from . import peak_rss_mib

    torch.set_num_threads(spec["threads"])
    folder = Path(spec["folder"])
    video = open_video(folder / "frames")
    method = get_method(spec["method"])
    prompts = Prompts().add_mask(0, read_label_image(folder / "mask" / "00000.png")) if method.needs_prompts else None
    labels = segment(video, prompts, spec["method"], device=spec["device"])
    return {"frames": len(video), "frame_shape": list(video.shape[1:3]),
            "labelled_frames": int((labels > 0).any((1, 2)).sum()), "peak_rss_mib": peak_rss_mib()}


def fit(lengths: list[int], peaks: list[float]) -> tuple[float, float]:
    """(base MiB, MiB per frame): the line through the first and the last (length, peak RSS)."""
    per_frame = max(0.0, (peaks[-1] - peaks[0]) / (lengths[-1] - lengths[0]))
    return peaks[0] - per_frame * lengths[0], per_frame


def run(sequence: str, lengths: list[int], methods: list[str] | None, device: str, threads: int, out_dir: Path,
        docs: Path) -> dict:
    from ..engine.memory import REFERENCE_PIXELS
    from ..methods import available_methods
    from . import machine, write_report

    if not Path(sequence).is_dir():
        raise SystemExit(f"benchmark memory: no sequence folder {sequence!r}")
    if len(lengths) < 2 or sorted(lengths) != lengths or len(set(lengths)) != len(lengths):
        raise SystemExit("benchmark memory: give two or more increasing --lengths")
    methods = methods or list(available_methods())
    measured_on = machine()
    results = {}
    with tempfile.TemporaryDirectory(prefix="vosembed-memory-") as tmp:
        for length in lengths:
            clip_folder(Path(sequence), length, Path(tmp) / str(length))
        for name in methods:
            runs = []
            for length in lengths:
                with tempfile.TemporaryDirectory(prefix="vosembed-bench-") as cache:
                    spec = {"folder": str(Path(tmp) / str(length)), "method": name, "device": device,
                            "threads": threads}
                    env = {**os.environ, "VOSEMBED_EMBEDDINGS_DIR": cache, "VOSEMBED_MEMORY_CHECK": "off"}
                    proc = subprocess.run([sys.executable, "-m", "napari_vosembed.benchmarks.memory", json.dumps(spec)],
                                          env=env, capture_output=True, text=True)
                if proc.returncode:
                    raise RuntimeError(f"benchmark worker failed for {name!r}, {length} frames:\n{proc.stderr[-3000:]}")
                runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(f"{name}, {length} frames: peak RSS {runs[-1]['peak_rss_mib']:.0f} MiB", file=sys.stderr)
            height, width = runs[0]["frame_shape"]
            scale = height * width / REFERENCE_PIXELS
            base, per_frame = fit(lengths, [r["peak_rss_mib"] for r in runs])
            results[name] = {"runs": runs, "base_mib": base, "per_frame_mib": per_frame / max(1.0, scale)}
    payload = {"benchmark": "memory", "sequence": sequence, "lengths": lengths, "device": device, "threads": threads,
               "machine": measured_on, "results": results}
    write_report("memory", payload, markdown(payload), out_dir, docs)
    return payload


def markdown(payload: dict) -> str:
    """The report's section of docs/benchmarks.md."""
    results, lengths = payload["results"], payload["lengths"]
    first = next(iter(results.values()))["runs"][0]
    lines = [
        "## Memory of a whole run (`vosembed benchmark memory`)", "",
        f"Peak resident memory of `segment()` from the first frame's mask, {Path(payload['sequence']).name} played "
        f"forth and back to {', '.join(map(str, lengths))} frames of {'x'.join(map(str, first['frame_shape']))}, "
        f"device `{payload['device']}`, torch threads: {payload['threads']}; each run in a fresh process with an empty "
        "embedding cache (embedding included). Each method's memory guard holds the fitted model (base + cost per "
        "frame), rounded up, and at least 0.5 MiB per frame: the labels, when a run keeps them in memory.", "",
        "| method | " + " | ".join(f"{n} frames MiB" for n in lengths) + " | fitted base MiB | fitted MiB/frame |",
        "|---|" + "---|" * len(lengths) + "---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{run['peak_rss_mib']:.0f}" for run in r["runs"])
                     + f" | {r['base_mib']:.0f} | {r['per_frame_mib']:.1f} |")
    return "\n".join(lines)


def _arguments(b) -> None:
    b.add_argument("--sequence", default="../shared/data/davis2016-train/car-turn", help="a sequence folder")
    b.add_argument("--lengths", type=int, nargs="+", default=[30, 100], help="video lengths, frames, increasing")
    b.add_argument("--methods", nargs="+", help="methods (default: every installed one)")
    b.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    b.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    report_arguments(b)


register_benchmark(Benchmark(
    "memory", "each method's peak memory at two video lengths, and the memory guard's model fitted to them",
    "Run every method on a sequence played to each length, in a fresh process with an empty embedding cache, and "
    "fit peak RSS = base + cost per frame: the model the memory guard checks before a job starts.",
    lambda a: run(a.sequence, a.lengths, a.methods, a.device, a.threads, Path(a.out), Path(a.docs)),
    _arguments))


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
