"""`vosembed benchmark tvos`: TVOS accuracy, propagation speed (fast path and dense reference) and memory.

J&F on the sequences our split holds out of training (`training.common.davis_split`), from the mask
of frame 0, with the trained head and with the raw backbone features (the paper's transfer
rows); and on a Cell Tracking Challenge sequence with every cell of frame 0 as an object. Times
exclude the backbone (embeddings are cached first): "propagation" is Eq. 6-7 for one frame,
"per frame" adds the head and the upsampling. The dense reference runs on the same inputs in the
same process, which gives the speed-up and the agreement of the two paths. The drift diagnostic
runs the default once more with the ground truth as the history of every predicted frame.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..engine.refine import STRAY_DISTANCE
from ..io import read_sequence
from ..engine.grid import cell_shares
from ..engine.pml_index import FINETUNE_STEPS
from ..engine.propagation import propagate, propagate_dense
from ..methods.tvos import GLOBAL_MATCHING, TVOSPropagator
from ..metrics import evaluate_sequence, summarize
from ..progress import drive
from . import Benchmark, register_benchmark
from .pml import held_out

#: name -> (head, global_matching, finetune_steps, stray_distance): the default, without the spatial
#: check, with the matcher's head fine-tuned as PML's, the paper's propagation alone, the raw features.
VARIANTS = {"trained head, global matching": ("default", GLOBAL_MATCHING, 0, STRAY_DISTANCE),
            "trained head, global matching, no spatial check": ("default", GLOBAL_MATCHING, 0, 0),
            "trained head, global matching, fine-tuned matcher": ("default", GLOBAL_MATCHING, FINETUNE_STEPS,
                                                                  STRAY_DISTANCE),
            "trained head, propagation only (the paper)": ("default", 0.0, 0, STRAY_DISTANCE),
            "raw ISNet features, global matching": (None, GLOBAL_MATCHING, 0, STRAY_DISTANCE)}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class GroundTruthHistory(TVOSPropagator):
    """A diagnostic, not a method (it needs the answer): every predicted frame joins the references
    with its ground truth `truth[t]` (cell shares, as an annotated frame) instead of its prediction,
    so errors cannot accumulate. Its J&F is that of propagation without drift."""

    truth: list[np.ndarray]

    def history_labels(self, t: int, scores: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(cell_shares(self.truth[t], self.values, self.grid, self.stride)).to(scores)


def segment_sequence(seq, head, device: str, global_matching: float = GLOBAL_MATCHING, finetune_steps: int = 0,
                     ground_truth_history: bool = False, stray_distance: int = STRAY_DISTANCE
                     ) -> tuple[TVOSPropagator, np.ndarray, float, float]:
    """Propagate the mask of frame 0 through `seq`; returns the session, the labels, the seconds
    per propagated frame (embeddings cached beforehand, so no backbone time) and the seconds the
    matcher's fine-tuning took before (everything until the first "propagation" progress).
    `ground_truth_history`: a `GroundTruthHistory` session."""
    cls = GroundTruthHistory if ground_truth_history else TVOSPropagator
    session = drive(cls.open(seq.video, head, device, global_matching=global_matching,
                             finetune_steps=finetune_steps, stray_distance=stray_distance), quiet=True)
    if ground_truth_history:
        session.truth = seq.ground_truth()
    run = session.run({0: seq.masks[0]})
    start = time.perf_counter()
    propagating = None
    while True:
        try:
            step = next(run)
        except StopIteration as stop:
            labels = stop.value
            break
        if propagating is None and step.stage == "propagation":
            _sync(device)
            propagating = time.perf_counter()
    _sync(device)
    return session, labels, (time.perf_counter() - propagating) / (len(labels) - 1), propagating - start


def fast_vs_dense(session: TVOSPropagator, frames: list[int], device: str) -> dict:
    """Time Eq. 6-7 for `frames` (after a finished `run`) with both paths on the same inputs, on
    `device`, and compare their label distributions."""
    fast_s, dense_s, worst, agree = [], [], 0.0, []
    for t in frames:
        refs = session.references(t, t, 1, [0])
        keys = torch.stack([session.frame_embedding(r) for r, _ in refs]).to(device)
        labels = torch.stack([session.reference_labels(r) for r, _ in refs]).to(device)
        args = (session.frame_embedding(t).to(device), keys, labels, torch.tensor([s for _, s in refs]),
                session.grid, session.scale)
        results = []
        for fn, times in ((propagate, fast_s), (propagate_dense, dense_s)):
            with torch.inference_mode():
                _sync(device)
                start = time.perf_counter()
                results.append(fn(*args))
                _sync(device)
                times.append(time.perf_counter() - start)
        a, b = results
        worst = max(worst, float((a - b).abs().max()))
        agree.append(float((a.argmax(1) == b.argmax(1)).float().mean()))
    fast, dense = statistics.median(fast_s), statistics.median(dense_s)
    return {"frames": frames, "fast_s": fast, "dense_s": dense, "speedup": dense / fast,
            "max_probability_difference": worst, "argmax_agreement_min": min(agree),
            "argmax_agreement_mean": float(np.mean(agree))}


def cells_of_frame0(seq) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Ground truth restricted to the objects of frame 0, and as cells versus background."""
    gt = seq.ground_truth()
    ids = np.unique(gt[0])
    return [np.where(np.isin(m, ids), m, 0) for m in gt], [(m > 0).astype(np.uint8) for m in gt]


def run(data: Path, names: list[str] | None, cells: Path | None, device: str, threads: int, dense_frames: int,
        out_dir: Path, docs: Path) -> dict:
    """Write `<out_dir>/tvos.json` and the "tvos" section of `docs`."""
    from . import machine, peak_rss_mib, write_report

    torch.set_num_threads(threads)
    load_start = os.getloadavg()
    names = held_out(data, names)
    results, timing = {}, {}
    for variant, (head, global_matching, finetune_steps, stray_distance) in VARIANTS.items():
        scores, per_frame, finetune, matched = {}, [], [], np.zeros(2)
        for name in names:
            seq = read_sequence(data / name)
            session, labels, seconds, tuning = segment_sequence(seq, head, device, global_matching,
                                                                finetune_steps, stray_distance=stray_distance)
            per_frame.append(seconds)
            finetune.append(tuning)
            matched += session.match_counts
            scores[name] = evaluate_sequence(list(labels), seq.ground_truth())
            print(f"{variant} {name}: J&F {summarize({name: scores[name]})['global']['J&F-Mean']:.3f}, "
                  f"{seconds:.3f} s/frame", file=sys.stderr)
            if head is not None and name == names[-1] and not timing:
                rss_fast = peak_rss_mib()
                frames = list(range(len(labels) - dense_frames, len(labels)))
                timing = fast_vs_dense(session, frames, device)
                if torch.cuda.is_available() and not device.startswith("cuda"):
                    timing["cuda"] = fast_vs_dense(session, frames, "cuda")
        results[variant] = {"report": summarize(scores), "s_per_frame_median": statistics.median(per_frame),
                            "finetune_s_median": statistics.median(finetune),
                            "matched_share": matched[0] / max(matched[1], 1)}

    no_drift = {}
    for name in names:
        seq = read_sequence(data / name)
        _, labels, _, _ = segment_sequence(seq, "default", device, ground_truth_history=True)
        no_drift[name] = evaluate_sequence(list(labels), seq.ground_truth())
    print(f"ground-truth history: J&F {summarize(no_drift)['global']['J&F-Mean']:.3f}", file=sys.stderr)

    cell_result = None
    if cells is not None:
        seq = read_sequence(cells)
        session, labels, seconds, _ = segment_sequence(seq, "default", device)
        gt0, foreground = cells_of_frame0(seq)
        cell_result = {"name": seq.name, "objects_frame0": int(len(np.unique(gt0[0])) - 1),
                       "objects of frame 0": summarize({seq.name: evaluate_sequence(list(labels), gt0)})["global"],
                       "cells vs background": summarize({seq.name: evaluate_sequence(
                           list((labels > 0).astype(np.uint8)), foreground)})["global"],
                       "s_per_frame": seconds, "grid": list(session.grid)}
        print(f"cells {seq.name}: J&F {cell_result['objects of frame 0']['J&F-Mean']:.3f}", file=sys.stderr)

    payload = {"benchmark": "tvos", "data": str(data), "sequences": names, "cells": str(cells) if cells else None,
               "device": device, "threads": threads, "machine": machine(), "load_average_start": load_start,
               "load_average": os.getloadavg(),
               "results": results, "ground_truth_history": summarize(no_drift),
               "fast_vs_dense": timing, "cell_tracking": cell_result, "peak_rss_mib_fast": rss_fast,
               "peak_rss_mib": peak_rss_mib()}
    write_report("tvos", payload, _markdown(payload), out_dir, docs)
    return payload


def _markdown(p: dict) -> str:
    t = p["fast_vs_dense"]
    lines = ["## TVOS, transductive propagation (`vosembed benchmark tvos`)", "",
             f"Held-out sequences: {', '.join(p['sequences'])}. Mask of frame 0, 9 reference frames of the "
             "last 40 (4 recent, sigma 8; 5 distant, sigma 21) plus the annotated frame, guided-filter "
             f"upsampling; global matching: the propagated labels blended with PML's k = 5 vote over the "
             f"annotated mask (lambda = {GLOBAL_MATCHING}) in the cells where it can change the label (with a "
             f"*fine-tuned matcher*, a copy of the PML head is first fine-tuned on that mask, {FINETUNE_STEPS} "
             f"steps, as PML does); the spatial check ({STRAY_DISTANCE} grid cells) unless a row says "
             "otherwise; DAVIS "
             f"protocol (first and last frames excluded). Device `{p['device']}`, {p['threads']} "
             "torch threads; times exclude the backbone (embeddings cached). Per frame: head, propagation and "
             f"upsampling. Peak RSS {p['peak_rss_mib_fast']:.0f} MiB before the dense reference runs "
             f"({p['peak_rss_mib']:.0f} MiB at the end, after it and the raw features). 1-minute load average "
             f"{p['load_average_start'][0]:.1f} at the start, {p['load_average'][0]:.1f} at the end, on "
             f"{p['machine']['cores']} cores.", "",
             "| embedding | J&F | J mean | J recall | F mean | F recall | s / frame | fine-tuning s "
             "| cells matched globally |",
             "|---|---|---|---|---|---|---|---|---|"]
    for variant, r in p["results"].items():
        g = r["report"]["global"]
        lines.append(f"| {variant} | {100 * g['J&F-Mean']:.1f} | {100 * g['J-Mean']:.1f} | {100 * g['J-Recall']:.1f} "
                     f"| {100 * g['F-Mean']:.1f} | {100 * g['F-Recall']:.1f} | {r['s_per_frame_median']:.3f} "
                     f"| {r['finetune_s_median']:.1f} "
                     f"| {100 * r['matched_share']:.1f} % |")
    lines += ["", f"Per sequence (J&F, {' / '.join(p['results'])}):", ""]
    for name in p["sequences"]:
        lines.append(f"- {name}: " + " / ".join(
            f"{100 * r['report']['sequences'][name]['J&F-Mean']:.1f}" for r in p["results"].values()))
    d, first = p["ground_truth_history"], next(iter(p["results"]))
    lines += ["", f"Drift: when every predicted frame joins the references with its ground truth instead of its "
              f"prediction (a diagnostic that needs the answer, `GroundTruthHistory`), the *{first}* row reaches "
              f"J&F {100 * d['global']['J&F-Mean']:.1f} (J {100 * d['global']['J-Mean']:.1f}; per sequence "
              + ", ".join(f"{name} {100 * d['sequences'][name]['J&F-Mean']:.1f}" for name in p["sequences"])
              + f") against {100 * p['results'][first]['report']['global']['J&F-Mean']:.1f}: the difference is "
              "what errors accumulated along the propagation cost."]
    lines += ["", f"Propagation (Eq. 6-7) of one 480p frame ({p['sequences'][-1]}, frames {t['frames'][0]}-"
              f"{t['frames'][-1]}, trained head, median): fast path {t['fast_s']:.3f} s, dense affinity "
              f"{t['dense_s']:.3f} s ({t['speedup']:.0f}x). Same inputs to both: max label-probability "
              f"difference {t['max_probability_difference']:.3f}, identical argmax on "
              f"{100 * t['argmax_agreement_min']:.2f} % of the cells (worst frame), "
              f"{100 * t['argmax_agreement_mean']:.3f} % on average."]
    if "cuda" in t:
        g = t["cuda"]
        lines.append(f"On the GPU ({p['machine'].get('gpu')}): fast path {g['fast_s']:.4f} s, dense "
                     f"{g['dense_s']:.4f} s ({g['speedup']:.0f}x), identical argmax on "
                     f"{100 * g['argmax_agreement_min']:.2f} % of the cells.")
    c = p["cell_tracking"]
    if c:
        f0, fg = c["objects of frame 0"], c["cells vs background"]
        lines += ["", f"Cell Tracking Challenge {c['name']} ({p['cells']}, grid {c['grid'][0]} x {c['grid'][1]}): "
                  f"the {c['objects_frame0']} cells of frame 0 propagated together, trained head, "
                  f"{c['s_per_frame']:.3f} s / frame. J&F {100 * f0['J&F-Mean']:.1f} (J {100 * f0['J-Mean']:.1f}, "
                  f"F {100 * f0['F-Mean']:.1f}) per cell of frame 0, each against its own id (a cell that "
                  f"divides ends its id in the ground truth); cells versus background J&F "
                  f"{100 * fg['J&F-Mean']:.1f} (J {100 * fg['J-Mean']:.1f})."]
    return "\n".join(lines)


def _arguments(b) -> None:
    b.add_argument("--cells", default="../shared/data/ctc-dic-hela-01",
                   help="a multi-object sequence (every object of frame 0 propagates); '' to skip")
    b.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    b.add_argument("--dense-frames", type=int, default=5, help="frames timed with the dense reference")


register_benchmark(Benchmark(
    "tvos", "TVOS J&F, propagation time per frame (fast and dense) and peak RSS",
    "TVOS from the mask of frame 0 (trained head with and without global matching, raw backbone features) and on "
    "a Cell Tracking Challenge sequence; the fast propagation against the dense affinity on the same inputs, in "
    "the same run.",
    lambda a: run(Path(a.data), a.sequences, Path(a.cells) if a.cells else None, a.device, a.threads,
                  a.dense_frames, Path(a.out), Path(a.docs)),
    _arguments, held_out=True))
