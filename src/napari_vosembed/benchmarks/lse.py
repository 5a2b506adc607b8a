"""`vosembed benchmark lse`: LSE from the box of the first frame that shows the object, with the
paper's ablation (no zoom-in, no adaptation, no location embedding; Ci et al. 2018, Table 1) and the
optional pre-scan pass, on the held-out sequences and a second root (J, J&F, the adaptation time,
the time per frame), and on a cell time-lapse from the boxes of every cell of frame 0."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..engine.zoom import tight_box
from ..io import read_sequence
from ..methods import get_method
from ..metrics import evaluate_sequence, summarize
from ..progress import drive
from ..prompts import Prompts
from . import Benchmark, machine, register_benchmark, write_report
from .masktrack import timed
from .prompts import _cells_argument, averaged, roots_from_args, scored
from .tvos import cells_of_frame0

#: Row -> parameters: the method with its defaults, each part of it switched off, then the pre-scan.
VARIANTS = {
    "LSE": {},
    "no zoom-in": {"zoom": False},
    "no adaptation": {"adapt_steps": 0},
    "no location embedding": {"location": False},
    "with pre-scan": {"prescan": True},
}


def box_prompts(labels: np.ndarray, t: int) -> Prompts:
    """The tight box of each object of a label image, on frame t."""
    prompts = Prompts()
    for v in np.unique(labels):
        box = tight_box(labels == v) if v else None
        if box is not None:
            prompts.add_box(t, *box, label=int(v))
    return prompts


def run(roots: dict[str, Path], names: dict[str, list[str]], cells: Path | None, device: str, out_dir: Path,
        docs: Path) -> dict:
    results: dict = {}
    for root_name, root in roots.items():
        per: dict = {variant: {} for variant in VARIANTS}
        for name in names[root_name]:
            seq = read_sequence(root / name)
            truth = seq.ground_truth()
            t0 = int(next(t for t, m in enumerate(truth) if (m > 0).any()))
            prompts = box_prompts((truth[t0] > 0).astype(np.uint8), t0)
            session = drive(get_method("lse")(device=device).open_session(seq.video), quiet=True)
            for variant, params in VARIANTS.items():
                session.use(get_method("lse")(device=device, **params))
                labels, adapting, per_frame = timed(session, prompts, "tracking")
                per[variant][name] = {**scored(labels, seq, t0), "adapt_s": adapting, "s_per_frame": per_frame}
                print(f"{root_name} {name} {variant}: J {per[variant][name]['J']:.3f}", file=sys.stderr)
        results[root_name] = {variant: averaged(rows, ("adapt_s", "s_per_frame")) for variant, rows in per.items()}
    cell_rows = None
    if cells:
        seq = read_sequence(cells)
        gt0, _ = cells_of_frame0(seq)
        session = drive(get_method("lse")(device=device).open_session(seq.video), quiet=True)
        labels, adapting, per_frame = timed(session, box_prompts(gt0[0], 0), "tracking")
        cell_rows = {"name": seq.name, "cells": int(len(np.unique(gt0[0])) - 1), "adapt_s": adapting,
                     "s_per_frame": per_frame,
                     "scores": summarize({seq.name: evaluate_sequence(list(labels), gt0)})["global"]}
    payload = {"benchmark": "lse", "roots": {k: str(v) for k, v in roots.items()}, "sequences": names,
               "device": device, "machine": machine(), "results": results, "cells": cell_rows}
    write_report("lse", payload, _markdown(payload), out_dir, docs)
    return payload


def _markdown(p: dict) -> str:
    lines = ["## LSE (`vosembed benchmark lse`)", "",
             "LSE with its defaults (the shipped network, adapted to the video on the box's pseudo-labels for at "
             "most its step and time budget) from the tight box of the object on the first frame that shows it; "
             "the next rows switch one part off: the zoom-in (the whole frame is the crop), the adaptation, "
             "the location embedding in the fusion (the appearance embedding alone); the last adds the pre-scan "
             "(a first pass, a second adaptation on its pseudo-labels, the final pass). J and J&F over the frames "
             "after it but the last (DAVIS protocol); medians of the time before the first tracked frame (the "
             "adaptation, with its crops' backbone passes, and the pre-scan) and of the time per frame and object "
             "(the crop's "
             f"backbone pass included). Device `{p['device']}`, 1-minute load average "
             f"{p['machine']['load_average_1min']:.1f}.", "",
             "| sequences | variant | J | J&F | adaptation, s | s per frame |", "|---|---|---|---|---|---|"]
    for root, variants in p["results"].items():
        for variant, r in variants.items():
            lines.append(f"| {root} ({', '.join(p['sequences'][root])}) | {variant} | {100 * r['J']:.1f} | "
                         f"{100 * r['J&F']:.1f} | {r['adapt_s']:.1f} | {r['s_per_frame']:.3f} |")
    c = p["cells"]
    if c:
        s = c["scores"]
        lines += ["", f"Cell Tracking Challenge {c['name']}: the boxes of the {c['cells']} cells of frame 0, each its "
                  f"own object: J {100 * s['J-Mean']:.1f}, F {100 * s['F-Mean']:.1f}, J&F {100 * s['J&F-Mean']:.1f} "
                  f"per cell over the video; adaptation {c['adapt_s']:.1f} s, {c['s_per_frame']:.3f} s per frame "
                  f"({c['cells']} crops each)."]
    return "\n".join(lines)


register_benchmark(Benchmark(
    "lse", "LSE from the first frame's box, with the paper's ablation (zoom-in, adaptation, location embedding)",
    "LSE from the first frame's box, and with each of its parts switched off, on the held-out sequences and a "
    "second root, and on a cell time-lapse from the boxes of its cells.",
    lambda a: run(*roots_from_args(a), Path(a.cells) if a.cells else None, a.device, Path(a.out), Path(a.docs)),
    _cells_argument,
    held_out=True))
