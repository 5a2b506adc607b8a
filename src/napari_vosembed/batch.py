"""`vosembed batch`: segment every video under a folder, one dask.distributed task per video.

The same code runs on a LocalCluster (the default) and on any cluster a scheduler address points
to (for example one started with dask-jobqueue on SLURM). Each video's labels are written to a
temporary folder and moved into place once complete, with a `result.json` beside them: indexed
PNGs, or `labels.zarr`, written frame by frame as the run goes, for a Zarr store and for a video
too long to hold its labels in memory; a video
whose result exists is skipped, so a stopped batch resumes. A video that fails is retried, then
reported, and never stops the others; a worker that dies hands its video to another worker.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

from .errors import VosEmbedError
from .progress import Progress

#: What `--prompts` can take: the first annotated frame's ground-truth mask, or nothing.
PROMPTS = ("first-mask", "none")
RESULT = "result.json"
#: Labels of more pixels than this (512 MB as uint8) are written frame by frame into a Zarr store.
IN_MEMORY_LABELS = 2**29


@dataclass(frozen=True)
class Job:
    """One video of a batch: where it is, how to segment it, where its labels go."""

    name: str
    path: str
    out: str
    method: str
    prompts: str
    device: str
    threads: int  # torch threads; 0: the worker's default
    params: tuple[tuple[str, object], ...] = ()
    scale: float | None = None  # frames resized by this before the network (`EmbeddingSettings.scale`; None: default)


def find_videos(root: Path) -> dict[str, Path]:
    """Every video directly under `root`, by name: sequence folders (frames + masks, or DAVIS's
    layout), frame folders, video files, TIFF stacks and Zarr stores."""
    from .io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, list_sequences
    from .io._files import TIFF_EXTENSIONS, list_files
    from .io.zarrstack import is_zarr

    if not root.is_dir():
        raise VosEmbedError(f"{root}: no such folder")
    videos = {}
    davis = root / "JPEGImages" / "480p"
    for name in list_sequences(root):
        ours = (root / name / "frames").is_dir()
        videos[name] = root / name if ours or not (davis / name).is_dir() else davis / name
    for path in sorted(root.iterdir()):
        if path.name.startswith(".") or path.name in videos or path.name in ("JPEGImages", "Annotations"):
            continue
        suffix = path.suffix.lower()
        if (path.is_file() and suffix in (*VIDEO_EXTENSIONS, *TIFF_EXTENSIONS)) or is_zarr(path) or (
                path.is_dir() and list_files(path, IMAGE_EXTENSIONS)):
            name = path.stem if path.is_file() or is_zarr(path) else path.name
            videos[name[: -len(".ome")] if name.lower().endswith(".ome") else name] = path
    return videos


def segment_one(job: Job) -> dict:
    """Segment one video (runs on a worker): labels into `job.out/<name>/`, atomically, and its
    result (frames, seconds, J&F where the video has ground truth)."""
    from .engine.cache import chosen_scale

    with chosen_scale(job.scale, "--scale"):
        return _segment(job)


def _segment(job: Job) -> dict:
    import numpy as np
    import torch

    from .io import open_video, read_sequence, write_png_labels, write_tiff_labels, zarr_labels
    from .io.zarrstack import is_zarr
    from .methods import get_method, iter_segment
    from .metrics import evaluate_sequence, summarize
    from .progress import drive
    from .prompts import Prompts

    out = Path(job.out)
    if (out / job.name / RESULT).is_file():  # done by a worker that died before it could report
        return json.loads((out / job.name / RESULT).read_text())
    if job.threads:
        torch.set_num_threads(job.threads)
    start = time.perf_counter()
    path = Path(job.path)
    is_sequence = (path / "frames").is_dir() or path.parent.parent.name == "JPEGImages"
    sequence = read_sequence(path) if is_sequence else None
    video = sequence.video if sequence is not None else open_video(path)
    truth = sequence.ground_truth() if sequence is not None else None
    prompts = Prompts()
    if job.prompts == "first-mask" and get_method(job.method).needs_prompts:
        first = next((t for t, m in enumerate(truth or []) if m is not None and m.any()), None)
        if first is None:
            raise VosEmbedError(f"{path}: --prompts first-mask, but the video has no annotated frame (a sequence "
                                "folder with masks/)")
        prompts.add_mask(first, truth[first])

    def summary(labels) -> dict:
        """The video's result: frames, seconds and, against its ground truth, J&F."""
        result = {"video": str(path), "frames": len(video), "seconds": round(time.perf_counter() - start, 2),
                  "method": job.method}
        if truth is not None and any(m is not None for m in truth):
            pairs = [(labels[t], m) for t, m in enumerate(truth) if m is not None]
            scores = summarize({job.name: evaluate_sequence([p for p, _ in pairs], [g for _, g in pairs])})["global"]
            result["J&F"] = round(100 * scores["J&F-Mean"], 2)
        return result

    partial = out / f".{job.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        shape = (len(video), *video.shape[1:3])
        if is_zarr(path) or math.prod(shape) > IN_MEMORY_LABELS:  # written frame by frame as the run goes
            with zarr_labels(partial / "labels.zarr", shape, max([*prompts.object_ids, 1])) as stored:
                result = summary(drive(iter_segment(video, prompts, job.method, job.device, stored,
                                                    **dict(job.params)), quiet=True))
        else:
            labels = drive(iter_segment(video, prompts, job.method, job.device, **dict(job.params)), quiet=True)
            if int(np.max(labels)) <= 255:
                write_png_labels(labels, partial, video.frame_names)
            else:
                write_tiff_labels(labels, partial / "labels.tif")
            result = summary(labels)
        (partial / RESULT).write_text(json.dumps(result, indent=1))
        os.replace(partial, out / job.name)  # an empty or absent folder of that name: only ours get there
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return result


def _client(scheduler: str, workers: int, device: str):
    from distributed import Client, LocalCluster

    if scheduler == "local":
        resources = {"GPU": 1} if device == "cuda" else None
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, resources=resources,
                               dashboard_address=None)
        return Client(cluster), cluster
    return Client(scheduler), None


def run(root: Path, out: Path, method: str, prompts: str = "first-mask", scheduler: str = "local", workers: int = 1,
        device: str = "cpu", retries: int = 1, params: dict | None = None, scale: float | str | None = None
        ) -> Generator[Progress, None, dict]:
    """Segment every video under `root` into `out/<name>/` with `method`, one task per video on
    `scheduler` ("local": a LocalCluster of `workers` processes; else a scheduler address), frames
    resized by `scale` before the network (None: the default). Yields progress per finished video;
    returns the summary (also written to `out/batch.json` and `out/batch.md`)."""
    from .engine.cache import check_scale
    from .methods import get_method

    scale = None if scale is None else check_scale(scale, "--scale")

    get_method(method)  # an unknown method fails here, not on every worker
    if prompts not in PROMPTS:
        raise VosEmbedError(f"--prompts {prompts!r}: choose one of {', '.join(PROMPTS)}")
    videos = find_videos(root)
    if not videos:
        raise VosEmbedError(f"{root}: no videos found (sequence folders, frame folders, video files, TIFF or Zarr "
                            "stacks)")
    out.mkdir(parents=True, exist_ok=True)
    summary = {name: {"status": "skipped (done before)", **json.loads((out / name / RESULT).read_text())}
               for name in videos if (out / name / RESULT).is_file()}
    todo = [name for name in videos if name not in summary]
    for name in todo:
        if (out / name).exists():
            raise VosEmbedError(f"{out / name}: exists but holds no finished result; move it away first")
    threads = max(1, (os.cpu_count() or 1) // workers) if scheduler == "local" else 0
    start = time.perf_counter()
    yield Progress(len(summary), len(videos), "segmenting")
    if todo:
        from distributed import as_completed

        client, cluster = _client(scheduler, workers, device)
        try:
            resources = {"GPU": 1} if device == "cuda" else None
            futures = {client.submit(segment_one, Job(name, str(videos[name]), str(out), method, prompts, device,
                                                      threads, tuple(sorted((params or {}).items())), scale),
                                     key=f"vosembed-{name}-{uuid.uuid4().hex[:6]}", retries=retries,
                                     resources=resources): name for name in todo}
            for future in as_completed(futures):
                name = futures[future]
                try:
                    summary[name] = {"status": "done", **future.result()}
                except Exception as exc:  # a video's failure is reported, the others go on
                    summary[name] = {"status": "failed", "video": str(videos[name]),
                                     "error": f"{type(exc).__name__}: {exc}"}
                yield Progress(len(summary), len(videos), f"segmenting ({name}: {summary[name]['status']})")
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    report = {"root": str(root), "method": method, "scheduler": scheduler, "workers": workers, "device": device,
              "seconds": round(time.perf_counter() - start, 2), "videos": dict(sorted(summary.items()))}
    (out / "batch.json").write_text(json.dumps(report, indent=1))
    (out / "batch.md").write_text(markdown(report))
    return report


def markdown(report: dict) -> str:
    """The summary table of a batch."""
    lines = [f"# Batch: {report['method']} on {report['root']}", "",
             f"{len(report['videos'])} videos, {report['seconds']:.0f} s on {report['scheduler']} "
             f"({report['workers']} workers, {report['device']}).", "",
             "| video | status | frames | seconds | s/frame | J&F |", "|---|---|---|---|---|---|"]
    for name, r in report["videos"].items():
        if "frames" in r:
            jf = f"{r['J&F']:.1f}" if "J&F" in r else "-"
            lines.append(f"| {name} | {r['status']} | {r['frames']} | {r['seconds']:.1f} | "
                         f"{r['seconds'] / max(r['frames'], 1):.2f} | {jf} |")
        else:
            lines.append(f"| {name} | {r['status']}: {r['error']} | - | - | - | - |")
    return "\n".join(lines) + "\n"
