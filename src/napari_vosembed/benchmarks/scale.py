"""`vosembed benchmark scale`: a long, large microscopy time-lapse out of core.

The benchmark makes its own video: a 16-bit Zarr time-lapse of cells (`make_timelapse`, textured
discs with a dark rim drifting over an uneven, noisy background), one frame per chunk, written frame
by frame. TVOS segments it from the frame-0 mask of every cell, in a fresh process, writing its
labels into a Zarr store frame by frame (`segment(..., out=)`); the report gives the peak resident
memory, the time per frame and J against the generated masks at each length, so that time can be
seen to grow with the length and memory not. With `--scales`, each length is segmented at each
embedding scale: more detail for large frames (embedded in tiles), at its cost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import Benchmark, register_benchmark, report_arguments

#: The bound a whole run's peak resident memory must keep, MiB, at any length.
RSS_BOUND_MIB = 2048
#: Cells in a generated time-lapse.
CELLS = 9


class Cells:
    """The cells of a generated time-lapse: `count` discs on a grid, each circling its own centre."""

    def __init__(self, size: int, count: int = CELLS, seed: int = 0):
        rng = np.random.default_rng(seed)
        side = int(np.ceil(np.sqrt(count)))
        pitch = size / side
        centres = [((i // side + 0.5) * pitch, (i % side + 0.5) * pitch) for i in range(count)]
        self.centres = np.array(centres) + rng.uniform(-0.05, 0.05, (count, 2)) * pitch
        self.radii = rng.uniform(0.18, 0.26, count) * pitch
        self.orbits = rng.uniform(0.08, 0.14, count) * pitch
        self.speeds = rng.uniform(0.01, 0.03, count) * rng.choice([-1, 1], count)
        self.phases = rng.uniform(0, 2 * np.pi, count)
        self.brightness = rng.uniform(2500, 4000, count)
        self.size = size
        self._background: np.ndarray | None = None

    def position(self, t: int) -> np.ndarray:
        """(count, 2) centres (y, x) of the cells at frame t."""
        angle = self.phases + self.speeds * t
        return self.centres + self.orbits[:, None] * np.stack([np.sin(angle), np.cos(angle)], 1)

    def _discs(self, t: int):
        """Each cell at frame t: (its index, the slices of its box, r: distance from its centre over
        its radius, the box's y and x offsets from the centre)."""
        for i, (cy, cx) in enumerate(self.position(t)):
            reach = self.radii[i] * 1.15
            y0, y1 = max(0, int(cy - reach)), min(self.size, int(cy + reach) + 2)
            x0, x1 = max(0, int(cx - reach)), min(self.size, int(cx + reach) + 2)
            dy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
            dx = np.arange(x0, x1, dtype=np.float32)[None] - cx
            yield i, (slice(y0, y1), slice(x0, x1)), np.sqrt(dy ** 2 + dx ** 2) / self.radii[i], dy, dx

    def labels(self, t: int) -> np.ndarray:
        """(size, size) uint8 ids of the cells at frame t (1..count)."""
        out = np.zeros((self.size, self.size), np.uint8)
        for i, box, r, _, _ in self._discs(t):
            out[box][r <= 1] = i + 1
        return out

    def frame(self, t: int, rng: np.random.Generator) -> np.ndarray:
        """(size, size) uint16 image of frame t."""
        if self._background is None:
            yy, xx = np.mgrid[:self.size, :self.size].astype(np.float32) / self.size
            self._background = 800 + 300 * np.sin(xx * 3 + 0.5) * np.cos(yy * 2)
        image = self._background + rng.standard_normal((self.size, self.size), np.float32) * 60
        for i, box, r, dy, dx in self._discs(t):
            texture = 1 + 0.15 * np.sin(dy / 7 + i) * np.sin(dx / 9 - i)
            patch = image[box]
            patch[r <= 1] = (self.brightness[i] * texture * (1 - 0.3 * r ** 2))[r <= 1] + patch[r <= 1] - 800
            patch[(r > 1) & (r < 1.12)] -= 400
        return np.clip(image, 0, 65535).astype(np.uint16)


def make_timelapse(path: Path, frames: int, size: int, count: int = CELLS, seed: int = 0) -> Path:
    """Write a `frames` x `size` x `size` uint16 Zarr time-lapse of `count` cells to `path` (one chunk
    per frame, written one by one), and its frame-0 labels beside it (`path/../mask0.npy`)."""
    import zarr

    cells = Cells(size, count, seed)
    rng = np.random.default_rng(seed)
    array = zarr.create_array(str(path), shape=(frames, size, size), chunks=(1, size, size), dtype="uint16",
                              dimension_names=("t", "y", "x"))
    for t in range(frames):
        array[t] = cells.frame(t, rng)
    np.save(path.parent / "mask0.npy", cells.labels(0))
    return path


def _worker(spec: dict) -> dict:
    """One run; inside the subprocess."""
    import torch
    import zarr

    from ..engine.cache import EmbeddingSettings
    from ..io import open_video
    from ..methods import get_method
    from ..metrics import db_eval_iou
    from ..progress import drive
    from ..prompts import Prompts
    from . import peak_rss_mib

    torch.set_num_threads(spec["threads"])
    folder = Path(spec["folder"])
    video = open_video(folder / "video.zarr")
    mask = np.load(folder / "mask0.npy")
    n, height, width = len(video), *video.shape[1:3]
    settings = EmbeddingSettings("tiny", scale=1.0, levels=(4, 8), saliency_stride=0) if spec["tiny"] else None
    method = get_method(spec["method"])(device=spec["device"], **({"head": "none"} if spec["tiny"] else {}))
    start = time.perf_counter()
    session = drive(method.open_session(video, settings=settings), quiet=True)
    opened = time.perf_counter() - start
    out = zarr.create_array(str(folder / "labels.zarr"), shape=(n, height, width), chunks=(1, height, width),
                            dtype="uint8", fill_value=0, overwrite=True)
    start = time.perf_counter()
    drive(session.segment(Prompts().add_mask(0, mask), out=out), quiet=True)
    segmented = time.perf_counter() - start
    peak = peak_rss_mib()
    cells = Cells(height, int(mask.max()), spec["seed"])
    scores = [db_eval_iou(out[t] == i, cells.labels(t) == i) for t in range(1, n, max(1, n // 50))
              for i in range(1, int(mask.max()) + 1)]
    stride = (settings or EmbeddingSettings()).resolve(height, width).stride  # VOSEMBED_SCALE applies
    return {"frames": n, "frame_shape": [height, width], "stride": stride, "open_s": opened, "segment_s": segmented,
            "s_per_frame": (opened + segmented) / n, "peak_rss_mib": peak, "J": float(np.mean(scores))}


def run(lengths: list[int], size: int, method: str, tiny: bool, device: str, threads: int, work: str | None,
        out_dir: Path, docs: Path, cells: int = CELLS, scales: list[str] | None = None, report: str = "scale") -> dict:
    from . import machine, write_report

    if sorted(lengths) != lengths or len(set(lengths)) != len(lengths):
        raise SystemExit("benchmark scale: give increasing --lengths")
    measured_on = machine()
    runs = []
    for length in lengths:
        with tempfile.TemporaryDirectory(prefix="vosembed-scale-", dir=work) as tmp:
            folder = Path(tmp)
            start = time.perf_counter()
            make_timelapse(folder / "video.zarr", length, size, cells)
            made = time.perf_counter() - start
            stored = sum(p.stat().st_size for p in (folder / "video.zarr").rglob("*") if p.is_file())
            for scale in scales or ["default"]:
                spec = {"folder": tmp, "method": method, "tiny": tiny, "device": device, "threads": threads, "seed": 0}
                env = {**os.environ, "VOSEMBED_EMBEDDINGS_DIR": str(folder / f"cache-{scale}"),
                       "VOSEMBED_MEMORY_CHECK": "off"}
                env.pop("VOSEMBED_SCALE", None)
                if scale != "default":
                    env["VOSEMBED_SCALE"] = scale
                proc = subprocess.run([sys.executable, "-m", "napari_vosembed.benchmarks.scale", json.dumps(spec)],
                                      env=env, capture_output=True, text=True)
                if proc.returncode:
                    raise RuntimeError(f"benchmark worker failed at {length} frames:\n{proc.stderr[-3000:]}")
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                runs.append({**result, "scale": scale, "video_mib": stored / 2**20, "generate_s": made})
                print(f"{length} frames, scale {scale}: {result['s_per_frame']:.3f} s/frame, peak RSS "
                      f"{result['peak_rss_mib']:.0f} MiB, J {result['J']:.3f}", file=sys.stderr)
    payload = {"benchmark": "scale", "lengths": lengths, "size": size, "cells": cells, "method": method,
               "backbone": "tiny" if tiny else "isnet", "device": device, "threads": threads, "machine": measured_on,
               "rss_bound_mib": RSS_BOUND_MIB, "within_bound": all(r["peak_rss_mib"] <= RSS_BOUND_MIB for r in runs),
               "runs": runs}
    write_report(report, payload, markdown(payload), out_dir, docs)
    return payload


def markdown(payload: dict) -> str:
    """The report's section of docs/benchmarks.md."""
    size, runs = payload["size"], payload["runs"]
    lines = [
        f"## {'A long time-lapse out of core' if len(payload['lengths']) > 1 else 'Large frames'} "
        "(`vosembed benchmark scale`)", "",
        f"{payload['method'].upper() if payload['method'] != 'unsupervised' else 'unsupervised'} from the frame-0 "
        f"mask of every cell of a generated 16-bit Zarr time-lapse ({size} x {size}, "
        f"{payload['cells']} cells), labels written into a Zarr store frame by frame; backbone "
        f"{payload['backbone']}, device `{payload['device']}`, torch threads: {payload['threads']}; each length in a "
        "fresh process with an empty embedding cache (embedding included). J: mean over the cells of 50 evenly "
        f"spaced frames (every frame of a shorter video). Peak RSS bound: {payload['rss_bound_mib']} MiB.", "",
        "| frames | scale (grid, pixels) | video on disk MiB | open s (embedding) | segment s | s/frame | "
        "peak RSS MiB | J |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(f"| {r['frames']} | {r['scale']} ({r['stride']:g}) | {r['video_mib']:.0f} | {r['open_s']:.0f} | "
                     f"{r['segment_s']:.0f} | {r['s_per_frame']:.3f} | {r['peak_rss_mib']:.0f} | {r['J']:.3f} |")
    return "\n".join(lines)


def _arguments(b) -> None:
    b.add_argument("--lengths", type=int, nargs="+", default=[200, 2000], help="video lengths, frames, increasing")
    b.add_argument("--size", type=int, default=1024, help="frame height and width, pixels")
    b.add_argument("--method", default="tvos", help="the method (one that propagates a frame-0 mask)")
    b.add_argument("--cells", type=int, default=CELLS, help="cells in the generated time-lapse")
    b.add_argument("--scales", nargs="+", help="the embedding scales to run at each length, 'default' or a number "
                   "(VOSEMBED_SCALE; frames larger than a tile after scaling are embedded in tiles)")
    b.add_argument("--report", default="scale", help="the name of the JSON file and of the section in --docs")
    b.add_argument("--backbone", default="isnet", choices=["isnet", "tiny"],
                   help="'tiny': the test backbone without a head (the CI-sized form)")
    b.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    b.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    b.add_argument("--work", help="where the generated videos and their caches go (default: the system's temporary "
                   "folder; 2,000 frames of 1024 x 1024 take about 6 GB)")
    report_arguments(b)


register_benchmark(Benchmark(
    "scale", "a generated 16-bit time-lapse at two lengths: time grows with the length, peak memory must not",
    "Generate a 16-bit Zarr time-lapse of cells at each length, segment it with a method from the frame-0 mask in "
    "a fresh process, writing the labels into a Zarr store, and report time per frame, peak RSS and J.",
    lambda a: run(a.lengths, a.size, a.method, a.backbone == "tiny", a.device, a.threads, a.work, Path(a.out),
                  Path(a.docs), a.cells, a.scales, a.report),
    _arguments))


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
