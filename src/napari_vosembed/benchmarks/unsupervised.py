"""`vosembed benchmark unsupervised`: the unsupervised method with no input, on the held-out sequences
and a second root (J, F, J&F over every frame, the DAVIS unsupervised protocol), with the ablations
of Li et al. 2018 (Table 3: the adaptation interval; Table 4: what ranks the seed tracks) and the
time per frame of each stage."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..engine.cache import embed_video
from ..engine.flow import video_flow
from ..io import read_sequence
from ..methods import get_method
from ..methods.unsupervised import OBJECTNESS, STAGES
from ..metrics import evaluate_sequence, summarize
from ..progress import drive
from ..prompts import Prompts
from . import Benchmark, machine, register_benchmark, write_report
from .prompts import averaged, check_argument, roots_from_args

#: Row -> parameters: the default, then the paper's ablations.
VARIANTS = {
    "objectness x motion (default)": {},
    "objectness only": {"cues": "objectness"},
    "motion only": {"cues": "motion"},
    "adaptation every 10 frames": {"adapt_every": 10},
}


def scored(labels: np.ndarray, seq) -> dict:
    """J, F and J&F over every frame (the unsupervised protocol)."""
    gt = [(m > 0).astype(np.uint8) for m in seq.ground_truth()]
    result = summarize({seq.name: evaluate_sequence(list((labels > 0).astype(np.uint8)), gt, "all")})["global"]
    return {"J": result["J-Mean"], "F": result["F-Mean"], "J&F": result["J&F-Mean"]}


def once_per_video(seq, device: str) -> dict:
    """Seconds per frame of what a session computes once per video and keeps on disk (the optical
    flow, the objectness maps), measured in an empty cache of its own."""
    previous = os.environ.get("VOSEMBED_EMBEDDINGS_DIR")
    with tempfile.TemporaryDirectory() as root:
        os.environ["VOSEMBED_EMBEDDINGS_DIR"] = root
        try:
            started = time.perf_counter()
            drive(video_flow(seq.video), quiet=True)
            flow = time.perf_counter() - started
            drive(embed_video(seq.video, OBJECTNESS, device=device), quiet=True)
            objectness = time.perf_counter() - started - flow
        finally:
            if previous is None:
                del os.environ["VOSEMBED_EMBEDDINGS_DIR"]
            else:
                os.environ["VOSEMBED_EMBEDDINGS_DIR"] = previous
    return {"flow": flow / len(seq.video), "objectness": objectness / len(seq.video)}


def run(roots: dict[str, Path], names: dict[str, list[str]], device: str, out_dir: Path, docs: Path) -> dict:
    results: dict = {}
    once: list[dict] = []
    for root_name, root in roots.items():
        per: dict = {variant: {} for variant in VARIANTS}
        for name in names[root_name]:
            seq = read_sequence(root / name)
            if name == names[root_name][0]:
                once.append(once_per_video(seq, device))
            sessions = {}
            for variant, params in VARIANTS.items():
                method = get_method("unsupervised")(device=device, **params)
                key = method.session_key()
                if key not in sessions:
                    sessions[key] = drive(method.open_session(seq.video), quiet=True)
                session = sessions[key]
                session.use(method)
                labels = drive(session.segment(Prompts()), quiet=True)
                n = len(seq.video)
                per[variant][name] = {**scored(labels, seq),
                                      **{f"{stage}_s": session.timings[stage] / n for stage in STAGES}}
                print(f"{root_name} {name} {variant}: J {per[variant][name]['J']:.3f}", file=sys.stderr)
        results[root_name] = {variant: {**averaged(rows, tuple(f"{s}_s" for s in STAGES)),
                                        "F": float(np.mean([r["F"] for r in rows.values()]))}
                              for variant, rows in per.items()}
    payload = {"benchmark": "unsupervised", "roots": {k: str(v) for k, v in roots.items()}, "sequences": names,
               "device": device, "machine": machine(), "results": results,
               "once_per_video_s_per_frame": {k: float(np.median([o[k] for o in once])) for k in once[0]}}
    write_report("unsupervised", payload, _markdown(payload), out_dir, docs)
    return payload


def _markdown(p: dict) -> str:
    once = p["once_per_video_s_per_frame"]
    lines = ["## Unsupervised (`vosembed benchmark unsupervised`)", "",
             "The unsupervised method with no input; the first row has its defaults, the others change one thing "
             "(the paper's ablations: what ranks the seed tracks, and online adaptation). J, F and J&F over every "
             "frame (DAVIS unsupervised protocol); seconds per frame of each stage (medians over the videos; "
             "embeddings, objectness and flow cached). Once per video and kept on disk (measured on the first "
             f"video of each root, median): optical flow {once['flow']:.3f} s and objectness "
             f"{once['objectness']:.3f} s per frame. Device `{p['device']}`, 1-minute load average "
             f"{p['machine']['load_average_1min']:.1f}.", "",
             "| sequences | variant | J | F | J&F | " + " | ".join(f"{s}, s" for s in STAGES) + " | total, s |",
             "|---|---|---|---|---|" + "---|" * (len(STAGES) + 1)]
    for root, variants in p["results"].items():
        for variant, r in variants.items():
            times = [r[f"{s}_s"] for s in STAGES]
            lines.append(f"| {root} ({', '.join(p['sequences'][root])}) | {variant} | {100 * r['J']:.1f} | "
                         f"{100 * r['F']:.1f} | {100 * r['J&F']:.1f} | " + " | ".join(f"{x:.3f}" for x in times)
                         + f" | {sum(times):.3f} |")
    return "\n".join(lines)


register_benchmark(Benchmark(
    "unsupervised", "the unsupervised method with no input, its ablations and the time of each stage",
    "The unsupervised method (no prompt) on the held-out sequences and a second root, with the paper's "
    "ablations as rows and the time per frame of each stage.",
    lambda a: run(*roots_from_args(a), a.device, Path(a.out), Path(a.docs)),
    check_argument,
    held_out=True))
