"""`vosembed benchmark embed`: per-frame backbone time, peak RSS and cache size per setting.

Each setting runs in a fresh subprocess (so its peak RSS is its own) with an empty embedding
cache: a cold run that embeds every frame, then a warm run over the same video that must find
everything cached (no network pass).
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

#: The settings compared: name -> EmbeddingSettings keyword arguments.
SETTINGS = {
    "isnet half size, strides 4-32 (default)": {"scale": 0.5, "levels": [4, 8, 16, 32]},
    "isnet full size, strides 8-64": {"scale": 1.0, "levels": [8, 16, 32, 64]},
}


def _worker(spec: dict) -> dict:
    """Embed `spec['video']` twice with one setting; runs inside the subprocess."""
    import torch

    from ..engine.backbone import resolve_device
    from ..engine.cache import EmbeddingSettings, default_batch_size, embed_video
    from ..io import open_video
    from ..progress import drive
    from . import peak_rss_mib

    torch.set_num_threads(spec["threads"])
    settings = EmbeddingSettings(**{**spec["settings"], "levels": tuple(spec["settings"]["levels"])})
    video = open_video(spec["video"])
    stamps, done = [], []
    start = time.perf_counter()
    gen = embed_video(video, settings, device=spec["device"])
    try:
        while True:
            done.append(next(gen).done)
            stamps.append(time.perf_counter())
    except StopIteration as stop:
        emb = stop.value
    cold = time.perf_counter() - start
    per_frame = np.diff(stamps) / np.maximum(np.diff(done), 1)  # per batch, divided among its frames
    warmup = -(-spec["warmup"] // (done[1] - done[0]))  # the batches holding the first `warmup` frames
    start = time.perf_counter()
    warm = drive(embed_video(video, settings, device=spec["device"]), quiet=True)
    return {
        "frames": len(video), "frame_shape": list(video.shape[1:3]), "grid": list(emb.grid_shape),
        "precision": emb.settings.precision, "batch": default_batch_size(resolve_device(spec["device"])),
        "channels": emb.channels, "median_s_per_frame": float(np.median(per_frame[warmup:])),
        "p90_s_per_frame": float(np.percentile(per_frame[warmup:], 90)), "cold_total_s": cold,
        "warm_total_s": time.perf_counter() - start, "warm_frames_computed": warm.computed,
        "peak_rss_mib": peak_rss_mib(), "cache_mib": emb.nbytes / 2**20,
        "cache_kib_per_frame": emb.nbytes / 1024 / len(video),
    }


def run(video: str | None, data: Path | None, frames: int, device: str, threads: int, warmup: int,
        out_dir: Path, docs: Path) -> dict:
    from ..engine.backbone import resolve_device
    from . import long_clip, machine, write_report

    if video is None:
        if data is None or not data.is_dir():
            raise SystemExit(f"benchmark embed: no --video and no data folder {data}")
        video = str(long_clip(data, frames))
    device = str(resolve_device(device))
    measured_on = machine()
    results = {}
    for name, settings in SETTINGS.items():
        with tempfile.TemporaryDirectory(prefix="vosembed-bench-") as cache:
            spec = {"video": video, "settings": settings, "device": device, "threads": threads, "warmup": warmup}
            env = {**os.environ, "VOSEMBED_EMBEDDINGS_DIR": cache}
            proc = subprocess.run([sys.executable, "-m", "napari_vosembed.benchmarks.embed", json.dumps(spec)],
                                  env=env, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"benchmark worker failed for {name!r}:\n{proc.stderr[-3000:]}")
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{name}: {results[name]['median_s_per_frame']:.3f} s/frame, "
                  f"peak RSS {results[name]['peak_rss_mib']:.0f} MiB", file=sys.stderr)
    payload = {"benchmark": "embed", "video": video, "device": device, "threads": threads,
               "machine": measured_on, "results": results}
    lines = [
        "## Embedding (`vosembed benchmark embed`)", "",
        f"{results[next(iter(results))]['frames']} frames of "
        f"{'x'.join(map(str, results[next(iter(results))]['frame_shape']))}, device `{device}`, "
        f"{threads} torch threads, precision {results[next(iter(results))]['precision']}, "
        f"{results[next(iter(results))]['batch']} frames per pass (time per frame: each pass's, divided among its "
        f"frames), median after {warmup} warm-up frames; 1-minute load average "
        f"{payload['machine']['load_average_1min']:.1f} at the start (2 cores).", "",
        "| setting | grid | channels | median s/frame | p90 s/frame | peak RSS MiB | cache KiB/frame "
        "| second run: frames computed, s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['grid'][0]}x{r['grid'][1]} | {r['channels']} | {r['median_s_per_frame']:.3f} "
                     f"| {r['p90_s_per_frame']:.3f} | {r['peak_rss_mib']:.0f} | {r['cache_kib_per_frame']:.0f} "
                     f"| {r['warm_frames_computed']}, {r['warm_total_s']:.2f} |")
    write_report("embed", payload, "\n".join(lines), out_dir, docs)
    return payload


def _arguments(b) -> None:
    b.add_argument("--video", help="video to embed (default: --frames frames linked from --data)")
    b.add_argument("--data", default="../shared/data/davis2016-train", help="root of sequences to build the clip from")
    b.add_argument("--frames", type=int, default=100, help="length of the clip built from --data")
    b.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    b.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    b.add_argument("--warmup", type=int, default=3, help="frames excluded from the median")
    report_arguments(b)


register_benchmark(Benchmark(
    "embed", "backbone time per frame, peak RSS and cache size per setting",
    "Embed a long video with each backbone setting in a fresh process: median time per frame after warm-up, "
    "peak RSS, cache size; then a second run that must find every frame cached.",
    lambda a: run(a.video, Path(a.data), a.frames, a.device, a.threads, a.warmup, Path(a.out), Path(a.docs)),
    _arguments))


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
