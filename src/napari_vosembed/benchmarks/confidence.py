"""`vosembed benchmark confidence`: does a method's per-frame confidence point at its worst frames?

PML and TVOS from the ground-truth mask of the first frame that shows the object; for every frame
after it, the session's confidence (`engine.confidence`) beside the frame's J. Reported: the rank
correlation of the two over all frames of a root (Spearman), and the mean J of each sequence's
least certain tenth of frames against the rest: what "go to the least certain frame" finds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..io import read_sequence
from ..methods import get_method
from ..metrics import db_eval_iou
from ..progress import drive
from ..prompts import Prompts
from . import Benchmark, register_benchmark
from .prompts import check_argument, roots_from_args

#: The share of each sequence's frames counted as its least certain.
LEAST = 0.1


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    return ranks


def spearman(a, b) -> float:
    """Rank correlation of `a` and `b` (ties broken by order)."""
    ra, rb = _ranks(np.asarray(a)), _ranks(np.asarray(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def run(roots: dict[str, Path], names: dict[str, list[str]], device: str, out_dir: Path, docs: Path) -> dict:
    from . import machine, write_report

    results: dict = {}
    for root_name, root in roots.items():
        frames: dict = {"pml": [], "tvos": []}
        for name in names[root_name]:
            seq = read_sequence(root / name)
            truth = seq.ground_truth()
            t0 = int(next(t for t, m in enumerate(truth) if (m > 0).any()))
            prompts = Prompts().add_mask(t0, truth[t0])
            pml = drive(get_method("pml")(device=device).open_session(seq.video), quiet=True)
            tvos = drive(get_method("tvos")(device=device).open_session(seq.video, {"pml": pml}), quiet=True)
            for method, session in (("pml", pml), ("tvos", tvos)):
                labels = drive(session.segment(prompts), quiet=True)
                rows = [(name, t, float(session.confidence[t]), db_eval_iou(truth[t] > 0, labels[t] > 0))
                        for t in range(t0 + 1, len(labels) - 1)]
                frames[method] += rows
                print(f"{root_name} {name} {method}: rho {spearman([r[2] for r in rows], [r[3] for r in rows]):.2f}",
                      file=sys.stderr)
        results[root_name] = {method: _summary(rows) for method, rows in frames.items()}
    payload = {"benchmark": "confidence", "roots": {k: str(v) for k, v in roots.items()}, "sequences": names,
               "device": device, "machine": machine(), "least_share": LEAST, "results": results}
    write_report("confidence", payload, _markdown(payload), out_dir, docs)
    return payload


def _summary(rows: list) -> dict:
    least, rest = [], []
    for name in dict.fromkeys(r[0] for r in rows):
        seq = sorted((r for r in rows if r[0] == name), key=lambda r: r[2])
        n = max(1, int(round(LEAST * len(seq))))
        least += [r[3] for r in seq[:n]]
        rest += [r[3] for r in seq[n:]]
    return {"spearman": spearman([r[2] for r in rows], [r[3] for r in rows]), "frames": len(rows),
            "J_least_certain": float(np.mean(least)), "J_rest": float(np.mean(rest)),
            "per_frame": [{"sequence": r[0], "frame": r[1], "confidence": r[2], "J": r[3]} for r in rows]}


def _markdown(p: dict) -> str:
    lines = ["## Per-frame confidence (`vosembed benchmark confidence`)", "",
             "PML and TVOS from the ground-truth mask of the first frame that shows the object. Per frame: the "
             "method's confidence (the mean margin between its two best labels where an object is in question; "
             "docs/user-guide.md) and J. Spearman: rank correlation of confidence and J over all frames after the "
             f"first; then the mean J of each sequence's least certain {100 * p['least_share']:.0f} % of frames "
             f"against its other frames. Device `{p['device']}`."]
    for root, rows in p["results"].items():
        lines += ["", f"**{root}** ({', '.join(p['sequences'][root])}):", "",
                  "| method | frames | Spearman | J, least certain | J, the rest |", "|---|---|---|---|---|"]
        lines += [f"| {m} | {r['frames']} | {r['spearman']:.2f} | {100 * r['J_least_certain']:.1f} | "
                  f"{100 * r['J_rest']:.1f} |" for m, r in rows.items()]
    return "\n".join(lines)


register_benchmark(Benchmark(
    "confidence", "does the per-frame confidence find the worst frames (PML, TVOS)",
    "PML and TVOS from the first frame's mask: per-frame confidence against per-frame J, their rank "
    "correlation and the J of the least certain frames.",
    lambda a: run(*roots_from_args(a), a.device, Path(a.out), Path(a.docs)),
    check_argument,
    held_out=True))
