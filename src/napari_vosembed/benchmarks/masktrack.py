"""`vosembed benchmark masktrack`: MaskTrack from the ground-truth mask of the first frame that shows
the object, on the held-out sequences and a second root (J, J&F, time per frame, fine-tuning time),
and on a cell time-lapse from the masks of every cell of frame 0."""

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
from . import Benchmark, machine, register_benchmark, write_report
from .prompts import _cells_argument, roots_from_args, scored
from .tvos import cells_of_frame0


def timed(session, prompts: Prompts) -> tuple[np.ndarray, float, float]:
    """Labels, fine-tuning seconds and refinement seconds per frame of one run."""
    gen, tuning, started, stage = session.segment(prompts), 0.0, time.perf_counter(), None
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            labels = stop.value
            break
        if step.stage != stage and stage == "fine-tuning":
            tuning = time.perf_counter() - started
        stage = step.stage
    total = time.perf_counter() - started
    return labels, tuning, (total - tuning) / max(len(labels) - 1, 1)


def run(roots: dict[str, Path], names: dict[str, list[str]], cells: Path | None, device: str, out_dir: Path,
        docs: Path) -> dict:
    results: dict = {}
    for root_name, root in roots.items():
        per: dict = {}
        for name in names[root_name]:
            seq = read_sequence(root / name)
            truth = seq.ground_truth()
            t0 = int(next(t for t, m in enumerate(truth) if (m > 0).any()))
            session = drive(get_method("masktrack")(device=device).open_session(seq.video), quiet=True)
            labels, tuning, per_frame = timed(session, Prompts().add_mask(t0, truth[t0]))
            per[name] = {**scored(labels, seq, t0), "finetune_s": tuning, "s_per_frame": per_frame}
            print(f"{root_name} {name}: J {per[name]['J']:.3f} J&F {per[name]['J&F']:.3f}", file=sys.stderr)
        results[root_name] = {"J": float(np.mean([r["J"] for r in per.values()])),
                              "J&F": float(np.mean([r["J&F"] for r in per.values()])),
                              "finetune_s": float(np.median([r["finetune_s"] for r in per.values()])),
                              "s_per_frame": float(np.median([r["s_per_frame"] for r in per.values()])),
                              "per_sequence": per}
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
               "device": device, "machine": machine(), "results": results, "cells": cell_rows}
    write_report("masktrack", payload, _markdown(payload), out_dir, docs)
    return payload


def _markdown(p: dict) -> str:
    lines = ["## MaskTrack (`vosembed benchmark masktrack`)", "",
             "MaskTrack with its defaults (the shipped network, fine-tuned on the mask for at most its step and time "
             "budget) from the ground-truth mask of the first frame that shows the object; J and J&F over the "
             "frames after it but the last (DAVIS protocol); medians of the fine-tuning time and of the refinement "
             f"time per frame (embeddings cached). Device `{p['device']}`, 1-minute load average "
             f"{p['machine']['load_average_1min']:.1f}.", "",
             "| sequences | J | J&F | fine-tuning, s | s per frame |", "|---|---|---|---|---|"]
    for root, r in p["results"].items():
        lines.append(f"| {root} ({', '.join(p['sequences'][root])}) | {100 * r['J']:.1f} | {100 * r['J&F']:.1f} | "
                     f"{r['finetune_s']:.1f} | {r['s_per_frame']:.3f} |")
    c = p["cells"]
    if c:
        s = c["scores"]
        lines += ["", f"Cell Tracking Challenge {c['name']}: the masks of the {c['cells']} cells of frame 0, each its "
                  f"own object: J {100 * s['J-Mean']:.1f}, F {100 * s['F-Mean']:.1f}, J&F {100 * s['J&F-Mean']:.1f} "
                  f"per cell over the video; fine-tuning {c['finetune_s']:.1f} s, {c['s_per_frame']:.3f} s per frame."]
    return "\n".join(lines)


register_benchmark(Benchmark(
    "masktrack", "MaskTrack J&F from the first mask, fine-tuning and refinement time",
    "MaskTrack from the first frame's mask on the held-out sequences and a second root, and on a cell time-lapse.",
    lambda a: run(*roots_from_args(a), Path(a.cells) if a.cells else None, a.device, Path(a.out), Path(a.docs)),
    _cells_argument,
    held_out=True))
