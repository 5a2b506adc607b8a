"""`vosembed benchmark speed`: the whole pipeline's speed on one device, embedding one frame per pass,
batched and streaming (the default), and in bfloat16 where the device computes it, side by side.

Each pipeline runs in a fresh subprocess (its own peak RSS and GPU memory) with an empty embedding
cache: the video is embedded (s per frame after the backbone is loaded), then, on those cached
embeddings, TVOS propagates the first frame's mask (s per frame, J&F), PML retrieves from it (s per
frame, J&F), and twelve clicks on the middle frame are answered on that frame (click -> frame) and
on the whole video (click -> video), as `benchmark pml` times them.

With `--backbone tiny` the video is generated (a textured square moving over a textured
background) and the methods run on raw features: the CI-sized form that keeps this benchmark
from rotting; its times say nothing about real data.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import Benchmark, register_benchmark, report_arguments

#: The pipelines compared: name -> (precision, frames per network pass; None: the default).
PIPELINES = {
    "one frame per pass": ("fp32", 1),
    "default: batched, streaming": ("fp32", None),
    "bfloat16, batched, streaming": ("bf16", None),
}


def clip(sequence: Path | None, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """`frames` frames and masks: the sequence played forth and back (a DAVIS sequence is shorter
    than 100 frames), or, without one, a generated 96 x 128 clip."""
    if sequence is None:
        rng = np.random.default_rng(0)
        background = rng.integers(40, 90, (96, 160, 3), np.uint8)
        video = np.empty((frames, 96, 128, 3), np.uint8)
        masks = np.zeros((frames, 96, 128), np.uint8)
        for t in range(frames):
            x = 20 + round(30 * np.sin(t / 10))
            video[t] = background[:, t % 32 : t % 32 + 128]
            video[t, 30:62, x : x + 32] = (200, 60, 40) + rng.integers(0, 20, (32, 32, 3))
            masks[t, 30:62, x : x + 32] = 1
        return video, masks
    from ..io import read_sequence

    seq = read_sequence(sequence)
    order = np.r_[np.arange(len(seq.video)), np.arange(len(seq.video) - 2, 0, -1)]
    order = np.resize(order, frames)
    gt = seq.ground_truth()
    return seq.video[order], np.stack([(gt[t] > 0).astype(np.uint8) for t in order])


def _worker(spec: dict) -> dict:
    """One pipeline on one device; runs inside the subprocess."""
    import torch

    from ..engine.backbone import resolve_device
    from ..engine.cache import EmbeddingSettings, default_batch_size, embed_video
    from ..engine.pml_index import PMLIndex
    from ..methods import get_method
    from ..metrics import evaluate_sequence, summarize
    from ..progress import drive
    from ..prompts import Prompts
    from . import peak_rss_mib

    torch.set_num_threads(spec["threads"])
    device = resolve_device(spec["device"])
    video, masks = clip(Path(spec["sequence"]) if spec["sequence"] else None, spec["frames"])
    n = len(video)
    tiny = spec["backbone"] == "tiny"
    settings = EmbeddingSettings("tiny", scale=1.0, levels=(4, 8), saliency_stride=0) if tiny else EmbeddingSettings()
    head = "none" if tiny else "default"
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    stamps = []
    start = time.perf_counter()
    gen = embed_video(video, settings, device=str(device), batch_size=spec["batch"])
    try:
        while True:
            progress = next(gen)
            stamps.append((time.perf_counter(), progress.done))
    except StopIteration as stop:
        emb = stop.value
    embed_total = time.perf_counter() - start
    (t0, done0), (t1, done1) = stamps[1], stamps[-1]  # from the first batch done: the backbone is loaded
    embed_s = (t1 - t0) / max(done1 - done0, 1)

    def jf(labels) -> float:
        return 100 * summarize({"clip": evaluate_sequence(list(labels), list(masks))})["global"]["J&F-Mean"]

    tvos = get_method("tvos")(device=str(device), head=head)
    session = drive(tvos.open_session(video, settings=settings if tiny else None), quiet=True)
    sync()
    start = time.perf_counter()
    labels = drive(session.segment(Prompts().add_mask(0, masks[0])), quiet=True)
    sync()
    tvos_s = (time.perf_counter() - start) / n
    tvos_jf = jf(labels)

    index = drive(PMLIndex.open(video, None if tiny else "default", str(device), settings=settings if tiny else None),
                  quiet=True)
    mask_index = index.with_prompts(Prompts().add_mask(0, masks[0]))
    start = time.perf_counter()
    labels = drive(mask_index.predict_all(), quiet=True)
    pml_s = (time.perf_counter() - start) / n
    pml_jf = jf(labels)

    drive(index.build_anchor_graph(), quiet=True)
    rng = np.random.default_rng(0)
    mid = n // 2
    click_frame, click_video = [], []
    for i, (label, where) in enumerate(((1, masks[mid] > 0), (0, masks[mid] == 0)) * 6):
        ys, xs = np.nonzero(where)
        pick = rng.integers(len(ys))
        index.add_prompts(Prompts().add_point(mid, int(ys[pick]), int(xs[pick]), label), group=i)
        start = time.perf_counter()
        index.predict_frame(mid)
        sync()
        click_frame.append(time.perf_counter() - start)
        if i % 2:
            start = time.perf_counter()
            drive(index.predict_all(online_adaptation=False), quiet=True)
            click_video.append(time.perf_counter() - start)
    return {
        "frames": n, "frame_shape": list(video.shape[1:3]), "device": str(device),
        "precision": emb.settings.precision,
        "batch": spec["batch"] or default_batch_size(device), "threads": spec["threads"],
        "embed_s_per_frame": embed_s, "embed_fps": 1 / embed_s, "embed_total_s": embed_total,
        "embed_frames_computed": emb.computed,
        "tvos_s_per_frame": tvos_s, "tvos_jf": tvos_jf, "pml_s_per_frame": pml_s, "pml_jf": pml_jf,
        "click_frame_ms_median": 1000 * statistics.median(click_frame),
        "click_video_s_median": statistics.median(click_video),
        "peak_rss_mib": peak_rss_mib(),
        "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
    }


def run(sequence: str | None, frames: int, backbone: str, device: str, threads: int, out_dir: Path,
        docs: Path) -> dict:
    from ..engine.backbone import bf16_supported, resolve_device
    from . import machine, write_report

    if backbone == "isnet" and not (sequence and Path(sequence).is_dir()):
        raise SystemExit(f"benchmark speed: no sequence folder {sequence!r} (or use --backbone tiny)")
    sequence = sequence if backbone == "isnet" else None
    device = resolve_device(device)
    pipelines = {name: p for name, p in PIPELINES.items()
                 if p[0] == "fp32" or (backbone != "tiny" and bf16_supported(device))}
    device = str(device)
    measured_on = machine()
    results = {}
    for name, (precision, batch) in pipelines.items():
        with tempfile.TemporaryDirectory(prefix="vosembed-bench-") as cache:
            spec = {"sequence": sequence, "frames": frames, "backbone": backbone, "device": device,
                    "threads": threads, "batch": batch}
            env = {**os.environ, "VOSEMBED_EMBEDDINGS_DIR": cache, "VOSEMBED_PRECISION": precision}
            proc = subprocess.run([sys.executable, "-m", "napari_vosembed.benchmarks.speed", json.dumps(spec)],
                                  env=env, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"benchmark worker failed for {name!r}:\n{proc.stderr[-3000:]}")
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            r = results[name]
            print(f"{name}: embed {r['embed_s_per_frame']:.3f} s/frame, TVOS {r['tvos_s_per_frame']:.3f} s/frame, "
                  f"click -> frame {r['click_frame_ms_median']:.0f} ms", file=sys.stderr)
    payload = {"benchmark": "speed", "sequence": sequence, "backbone": backbone, "device": device,
               "threads": threads, "machine": measured_on, "load_average_end": os.getloadavg()[0],
               "results": results}
    first = next(iter(results.values()))
    source = f"{Path(sequence).name} played forth and back" if sequence else "a generated clip, tiny backbone"
    gpu = device.startswith("cuda")
    lines = [
        "## Speed, whole pipeline (`vosembed benchmark speed`)", "",
        f"{first['frames']} frames of {'x'.join(map(str, first['frame_shape']))} ({source}), device `{device}`"
        f"{'' if gpu else f', torch threads: {threads}'}; each pipeline in a fresh process with an empty embedding "
        "cache. Embedding: the backbone and everything around it (decoding, resizing, writing the cache), per frame "
        "after the backbone is loaded. TVOS and PML: from the mask of frame 0, embeddings cached. Clicks: twelve on the "
        "middle frame (object, background, ...), PML's retrieval answering the frame in view and, after every "
        f"second click, the whole video. 1-minute load average {measured_on['load_average_1min']:.1f} at the start, "
        f"{payload['load_average_end']:.1f} at the end.", "",
        "| pipeline | precision, batch | embed s/frame (fps) | TVOS s/frame | TVOS J&F | PML s/frame | PML J&F "
        f"| click -> frame ms | click -> video s | peak RSS MiB{' | peak GPU MiB' if gpu else ''} |",
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if gpu else ""),
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['precision']}, {r['batch']} | {r['embed_s_per_frame']:.3f} ({r['embed_fps']:.0f}) "
            f"| {r['tvos_s_per_frame']:.3f} | {r['tvos_jf']:.1f} | {r['pml_s_per_frame']:.3f} | {r['pml_jf']:.1f} "
            f"| {r['click_frame_ms_median']:.0f} | {r['click_video_s_median']:.2f} | {r['peak_rss_mib']:.0f}"
            + (f" | {r['peak_gpu_mib']:.0f} |" if gpu else " |"))
    write_report("speed", payload, "\n".join(lines), out_dir, docs)
    return payload


def _arguments(b) -> None:
    b.add_argument("--sequence", default="../shared/data/davis2016-train/car-turn",
                   help="a sequence folder (frames + masks) with ISNet")
    b.add_argument("--frames", type=int, default=100, help="frames of the clip")
    b.add_argument("--backbone", default="isnet", choices=["isnet", "tiny"],
                   help="'tiny': a generated clip and the test backbone (the CI-sized form)")
    b.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    b.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    report_arguments(b)


register_benchmark(Benchmark(
    "speed", "the whole pipeline's speed: embedding, TVOS, PML, clicks, memory; one frame per pass, batched, bf16",
    "Embed a clip in a fresh process per pipeline (one frame per pass, the batched and streaming default, and "
    "bfloat16 where the device computes it natively), then time TVOS and PML from the first mask and PML's "
    "answers to clicks, with peak RSS and GPU memory.",
    lambda a: run(a.sequence, a.frames, a.backbone, a.device, a.threads, Path(a.out), Path(a.docs)),
    _arguments))


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
