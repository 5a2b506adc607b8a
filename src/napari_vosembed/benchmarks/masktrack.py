"""`vosembed benchmark masktrack`: MaskTrack's variants from the first frame that shows the object
(its ground-truth mask; its box through the box-to-segment network; the mask with the optical-flow
branch and the dense CRF, the paper's full model) on the held-out sequences and a second root (J, J&F, the
fine-tuning time, the time per frame), and on a cell time-lapse from the masks of every cell of
frame 0."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from ..io import read_sequence
from ..methods import get_method
from ..metrics import evaluate_sequence, summarize
from ..progress import drive
from ..prompts import Prompts
from ..training.masktrack import box_of
from . import Benchmark, machine, register_benchmark, write_report
from .prompts import _cells_argument, averaged, roots_from_args, scored
from .tvos import cells_of_frame0

#: Variant -> (prompt, parameters): the paper's rows (Table 2 and 4 of Perazzi et al. 2017).
VARIANTS = {
    "mask": ("mask", {}),
    "box (MaskTrack-Box)": ("box", {}),
    "mask + flow + CRF": ("mask", {"flow": True, "crf": True}),
}


def timed(session, prompts: Prompts, stage: str = "refinement") -> tuple[np.ndarray, float, float]:
    """Labels, seconds before the first progress of `stage` (fine-tuning, adaptation) and seconds per
    frame after it."""
    gen, started, first = session.segment(prompts), time.perf_counter(), None
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            labels = stop.value
            break
        if first is None and step.stage == stage:
            first = time.perf_counter()
    total, first = time.perf_counter() - started, first or time.perf_counter()
    return labels, first - started, (total - (first - started)) / max(len(labels) - 1, 1)


def first_prompt(kind: str, t0: int, mask: np.ndarray) -> Prompts:
    if kind == "mask":
        return Prompts().add_mask(t0, mask)
    ys, xs = np.nonzero(box_of(mask > 0))
    return Prompts().add_box(t0, ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)


def run(roots: dict[str, Path], names: dict[str, list[str]], cells: Path | None, device: str, out_dir: Path,
        docs: Path) -> dict:
    results: dict = {}
    flow_inputs = []
    for root_name, root in roots.items():
        per: dict = {variant: {} for variant in VARIANTS}
        for name in names[root_name]:
            seq = read_sequence(root / name)
            truth = seq.ground_truth()
            t0 = int(next(t for t, m in enumerate(truth) if (m > 0).any()))
            session = drive(get_method("masktrack")(device=device).open_session(seq.video), quiet=True)
            for variant, (kind, params) in VARIANTS.items():
                session.use(get_method("masktrack")(device=device, **params))
                if params.get("flow") and session.flow is None:  # once per video, kept on disk: timed apart
                    started = time.perf_counter()
                    drive(session.branches(), quiet=True)
                    flow_inputs.append((time.perf_counter() - started) / len(seq.video))
                labels, tuning, per_frame = timed(session, first_prompt(kind, t0, truth[t0]))
                per[variant][name] = {**scored(labels, seq, t0), "finetune_s": tuning, "s_per_frame": per_frame}
                print(f"{root_name} {name} {variant}: J {per[variant][name]['J']:.3f}", file=sys.stderr)
        results[root_name] = {variant: averaged(rows, ("finetune_s", "s_per_frame")) for variant, rows in per.items()}
    cell_rows = None
    if cells:
        seq = read_sequence(cells)
        gt0, _ = cells_of_frame0(seq)
        session = drive(get_method("masktrack")(device=device).open_session(seq.video), quiet=True)
        labels, tuning, per_frame = timed(session, Prompts().add_mask(0, gt0[0]))
        cell_rows = {"name": seq.name, "cells": int(len(np.unique(gt0[0])) - 1), "finetune_s": tuning,
                     "s_per_frame": per_frame,
                     "scores": summarize({seq.name: evaluate_sequence(list(labels), gt0)})["global"]}
    payload = {"benchmark": "masktrack", "roots": {k: str(v) for k, v in roots.items()}, "sequences": names,
               "device": device, "machine": machine(), "results": results, "cells": cell_rows,
               "flow_inputs_s_per_frame": float(np.median(flow_inputs)) if flow_inputs else None}
    write_report("masktrack", payload, _markdown(payload), out_dir, docs)
    return payload


def _markdown(p: dict) -> str:
    lines = ["## MaskTrack (`vosembed benchmark masktrack`)", "",
             "MaskTrack with its defaults (the shipped networks, fine-tuned on the first mask for at most their "
             "step and time budget per branch) from the first frame that shows the object: its ground-truth mask, "
             "or its bounding box through the box-to-segment network; the last row adds the optical-flow branch "
             "and the dense CRF. J and J&F over the frames after it but the last (DAVIS protocol); medians of the "
             "time before the first refined frame (the fine-tuning of what was not tuned on this mask yet: the "
             "flow row tunes the flow branch only) and of the time per refined frame (embeddings and flow cached). "
             f"Device `{p['device']}`, 1-minute load average {p['machine']['load_average_1min']:.1f}.", "",
             "| sequences | variant | J | J&F | fine-tuning, s | s per frame |", "|---|---|---|---|---|---|"]
    for root, variants in p["results"].items():
        for variant, r in variants.items():
            lines.append(f"| {root} ({', '.join(p['sequences'][root])}) | {variant} | {100 * r['J']:.1f} | "
                         f"{100 * r['J&F']:.1f} | {r['finetune_s']:.1f} | {r['s_per_frame']:.3f} |")
    if p["flow_inputs_s_per_frame"] is not None:
        lines += ["", f"The flow branch's inputs, once per video (DIS flow both ways, the magnitude images through "
                  f"the backbone): {p['flow_inputs_s_per_frame']:.3f} s per frame (median over the videos)."]
    c = p["cells"]
    if c:
        s = c["scores"]
        lines += ["", f"Cell Tracking Challenge {c['name']}: the masks of the {c['cells']} cells of frame 0, each its "
                  f"own object: J {100 * s['J-Mean']:.1f}, F {100 * s['F-Mean']:.1f}, J&F {100 * s['J&F-Mean']:.1f} "
                  f"per cell over the video; fine-tuning {c['finetune_s']:.1f} s, {c['s_per_frame']:.3f} s per frame."]
    return "\n".join(lines)


register_benchmark(Benchmark(
    "masktrack", "MaskTrack's variants (mask, box, flow + CRF) from the first frame, fine-tuning and refinement time",
    "MaskTrack from the first frame's mask or box, with and without the flow branch and the CRF, on the held-out "
    "sequences and a second root, and on a cell time-lapse.",
    lambda a: run(*roots_from_args(a), Path(a.cells) if a.cells else None, a.device, Path(a.out), Path(a.docs)),
    _cells_argument,
    held_out=True))
