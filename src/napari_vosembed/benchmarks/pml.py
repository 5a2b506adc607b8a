"""`vosembed benchmark pml` and `vosembed benchmark clicks`: PML accuracy, latency and the click curve.

Both run on the sequences our split holds out of training (`training.common.davis_split`), with the
trained head and with the raw (untrained) backbone features, from the cached embeddings (the
backbone pass is measured by `benchmark embed`, not here).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

from ..engine.refine import STRAY_DISTANCE
from ..errors import VosEmbedError
from ..io import list_sequences, read_sequence
from ..engine.pml_index import CLICK_PROPAGATION, FINETUNE_STEPS, K_CLICK, PMLIndex
from ..metrics import db_eval_iou, evaluate_sequence, summarize
from ..progress import drive
from ..prompts import Prompts
from . import Benchmark, register_benchmark

#: Semi-supervised variants: name -> (head, online adaptation, fine-tuning steps, stray distance).
VARIANTS = {
    "trained head, fine-tuned, online adaptation": ("default", True, FINETUNE_STEPS, STRAY_DISTANCE),
    "trained head, fine-tuned, online adaptation, no spatial check": ("default", True, FINETUNE_STEPS, 0),
    "trained head, online adaptation": ("default", True, 0, STRAY_DISTANCE),
    "raw ISNet features, online adaptation": (None, True, 0, STRAY_DISTANCE),
    "raw ISNet features, no adaptation": (None, False, 0, STRAY_DISTANCE),
    "trained head, no adaptation": ("default", False, 0, STRAY_DISTANCE),
}
#: Click-robot variants: name -> (head, click propagation).
CLICK_VARIANTS = {
    "trained head": ("default", CLICK_PROPAGATION),
    "trained head, the vote alone (no click propagation)": ("default", 0.0),
    "raw ISNet features": (None, CLICK_PROPAGATION),
}


def held_out(data: Path, names: list[str] | None) -> list[str]:
    from ..training.common import davis_split

    return names or davis_split(list_sequences(data))[1]


def _open(seq, head, device, **options):
    return drive(PMLIndex.open(seq.video, head, device, **options), quiet=True)


def semi_supervised(data: Path, names: list[str] | None, device: str, out_dir: Path, docs: Path) -> dict:
    """J&F with the first frame's mask per variant; retrieval time per frame and per click."""
    from . import machine

    names = held_out(data, names)
    measured_on = machine()
    results = {}
    for variant, (head, adapt, steps, stray) in VARIANTS.items():
        scores, per_frame, finetune, graph, click_frame, first_video, click_video = {}, [], [], [], [], [], []
        for name in names:
            seq = read_sequence(data / name)
            gt = seq.ground_truth()
            session = _open(seq, head, device)
            session.add_prompts(Prompts().add_mask(0, gt[0]))
            if steps:
                start = time.perf_counter()
                session = drive(session.finetuned(steps), quiet=True)
                finetune.append(time.perf_counter() - start)
            start = time.perf_counter()
            labels = drive(session.predict_all(online_adaptation=adapt, finetune_steps=0, stray_distance=stray),
                           quiet=True)
            per_frame.append((time.perf_counter() - start) / len(labels))
            scores[name] = evaluate_sequence(list(labels), gt)

            clicks = _open(seq, head, device)
            start = time.perf_counter()
            drive(clicks.build_anchor_graph(), quiet=True)
            graph.append(time.perf_counter() - start)
            rng = np.random.default_rng(0)
            t_mid = len(gt) // 2
            for i, (label, pick) in enumerate(((1, gt[t_mid] > 0), (0, gt[t_mid] == 0)) * 3):
                y, x = _random_pixel(pick, rng)
                start = time.perf_counter()
                clicks.add_prompts(Prompts().add_point(t_mid, y, x, label), group=i)
                clicks.predict_frame(t_mid)
                click_frame.append(time.perf_counter() - start)
            start = time.perf_counter()
            drive(clicks.predict_all(online_adaptation=False), quiet=True)
            first_video.append(time.perf_counter() - start)
            y, x = _random_pixel(gt[t_mid] > 0, rng)
            start = time.perf_counter()
            clicks.add_prompts(Prompts().add_point(t_mid, y, x, 1), group=6)
            drive(clicks.predict_all(online_adaptation=False), quiet=True)
            click_video.append(time.perf_counter() - start)
            print(f"{variant} {name}: J&F {summarize({name: scores[name]})['global']['J&F-Mean']:.3f}",
                  file=sys.stderr)
        results[variant] = {
            "report": summarize(scores), "retrieval_s_per_frame_median": statistics.median(per_frame),
            "finetune_s_median": statistics.median(finetune) if finetune else None,
            "anchor_graph_s_median": statistics.median(graph),
            "click_to_frame_s_median": statistics.median(click_frame),
            "first_video_s_median": statistics.median(first_video),
            "click_to_video_s_median": statistics.median(click_video),
        }
        _write_semi_supervised(results, names, data, device, measured_on, out_dir, docs)
    return results


def _write_semi_supervised(results, names, data, device, measured_on, out_dir, docs) -> None:
    """The report of the variants measured so far (rewritten after each one)."""
    from . import peak_rss_mib, write_report

    payload = {"benchmark": "pml", "data": str(data), "sequences": names, "device": device,
               "machine": measured_on, "peak_rss_mib": peak_rss_mib(), "results": results}
    lines = ["## PML, semi-supervised (`vosembed benchmark pml`)", "",
             f"Held-out sequences: {', '.join(names)}. Mask of frame 0, k = 5, guided-filter upsampling, the "
             f"spatial check ({STRAY_DISTANCE} grid cells) unless a row says otherwise; "
             f"DAVIS protocol (first and last frames excluded). Device `{device}`, {measured_on['torch_threads']} "
             "torch and faiss threads; "
             f"times exclude the backbone (embeddings cached); 1-minute load average "
             f"{measured_on['load_average_1min']:.1f} at the start. Peak RSS {peak_rss_mib():.0f} MiB. "
             "Click latency: the video's anchor graph built first (label propagation from clicks; median s "
             "per video), then six alternating clicks on the middle frame, median time from adding a click "
             "to the labels of that frame; then the labels of the whole video without adaptation (first: "
             "the session builds each frame's guided-filter statistics), and after a seventh click (later: "
             "it keeps them), median s per video. Fine-tuning: "
             f"{FINETUNE_STEPS} steps on the mask of frame 0, then the video re-embedded (median s per video).", "",
             "| variant | J&F | J mean | J recall | F mean | F recall | fine-tuning s | retrieval s/frame "
             "| anchor graph s | click -> frame s | first video s | click -> video s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for variant, r in results.items():
        g = r["report"]["global"]
        lines.append(f"| {variant} | {100 * g['J&F-Mean']:.1f} | {100 * g['J-Mean']:.1f} | {100 * g['J-Recall']:.1f} "
                     f"| {100 * g['F-Mean']:.1f} | {100 * g['F-Recall']:.1f} "
                     f"| {'-' if r['finetune_s_median'] is None else format(r['finetune_s_median'], '.1f')} "
                     f"| {r['retrieval_s_per_frame_median']:.3f} | {r['anchor_graph_s_median']:.1f} "
                     f"| {r['click_to_frame_s_median']:.4f} | {r['first_video_s_median']:.2f} "
                     f"| {r['click_to_video_s_median']:.2f} |")
    lines += ["", "J&F per sequence (" + " / ".join(results) + "):", ""]
    for name in names:
        lines.append(f"- {name}: " + " / ".join(
            f"{100 * r['report']['sequences'][name]['J&F-Mean']:.1f}" for r in results.values()))
    write_report("pml", payload, "\n".join(lines), out_dir, docs)


def _random_pixel(region: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    ys, xs = np.nonzero(region)
    i = rng.integers(len(ys))
    return int(ys[i]), int(xs[i])


def click_curve(session: PMLIndex, gt: np.ndarray, max_clicks_per_frame: float, seed: int = 0
                ) -> list[tuple[float, float]]:
    """The click robot of Sec. 4.3 on a view of `session` against the (T, H, W) mask `gt`: a
    random object click and a random background click on a random frame to start, then
    each new click on a random wrongly labelled pixel of the whole video, labelled from the ground
    truth. Returns [(clicks per frame, mean J over frames)]."""
    n = len(gt)
    rng = np.random.default_rng(seed)
    with_object = np.flatnonzero(gt.reshape(n, -1).any(1))
    t0 = int(rng.choice(with_object))
    first = Prompts()
    for label, region in ((1, gt[t0]), (0, ~gt[t0])):
        first.add_point(t0, *_random_pixel(region, rng), label)
    session = session.with_prompts(first)
    curve = []
    clicks = 2
    while True:
        labels = drive(session.predict_all(online_adaptation=False), quiet=True) > 0
        curve.append((clicks / n, float(np.mean([db_eval_iou(gt[t], labels[t]) for t in range(n)]))))
        wrong = labels != gt
        if clicks / n >= max_clicks_per_frame or not wrong.any():
            return curve
        flat = np.flatnonzero(wrong)
        t, y, x = np.unravel_index(flat[rng.integers(len(flat))], wrong.shape)
        session.add_prompts(Prompts().add_point(int(t), int(y), int(x), int(gt[t, y, x])))
        clicks += 1


def clicks(data: Path, names: list[str] | None, device: str, max_clicks_per_frame: float, out_dir: Path,
           docs: Path, plot: Path, seeds: int = 1) -> dict:
    """Write the J-versus-clicks-per-frame curves (JSON, PNG, Markdown), averaged over sequences and
    `seeds` runs of the robot (seeds 0 to seeds - 1): one different label early in a run sends the
    robot along other clicks, so one seed moves the curve by several points."""
    from . import machine, write_report

    if seeds < 1:
        raise VosEmbedError(f"the click robot needs at least one seed, not {seeds}")
    if not max_clicks_per_frame >= 0.05:
        raise VosEmbedError(f"max_clicks_per_frame is {max_clicks_per_frame}: the curve starts at 0.05 clicks "
                            "per frame, give at least that")
    names = held_out(data, names)
    measured_on = machine()
    grid = np.round(np.arange(0.05, max_clicks_per_frame + 1e-9, 0.05), 2)
    marks = [m for m in (0.1, 0.2, 0.3, 0.4, 0.6, 1.0) if m <= max_clicks_per_frame + 1e-9]
    results = {}
    for variant, (head, propagation) in CLICK_VARIANTS.items():
        per_seq = {}
        for name in names:
            seq = read_sequence(data / name)
            gt = np.stack(seq.ground_truth()) > 0
            session = _open(seq, head, device, click_propagation=propagation)  # embedded once for all seeds
            per_seq[name] = []
            for seed in range(seeds):
                curve = click_curve(session, gt, max_clicks_per_frame, seed)
                per_seq[name].append(curve)
                print(f"{variant} {name} seed {seed}: J {curve[-1][1]:.3f} at {curve[-1][0]:.2f} clicks/frame",
                      file=sys.stderr)
        on_grid = {name: [[float(np.interp(g, *zip(*c))) for g in grid] for c in curves]
                   for name, curves in per_seq.items()}
        per_seed = np.mean([runs for runs in on_grid.values()], axis=0)
        results[variant] = {"per_sequence": per_seq, "grid": grid.tolist(), "mean_J": per_seed.mean(0).tolist(),
                            "mean_J_per_seed": per_seed.tolist()}
        _plot_curves(results, plot)
        payload = {"benchmark": "clicks", "data": str(data), "sequences": names, "device": device, "seeds": seeds,
                   "machine": measured_on, "results": results}
        runs = "one run of the robot (seed 0)" if seeds == 1 else f"{seeds} runs of the robot (seeds 0 to {seeds - 1})"
        lines = ["## PML, interactive: the click robot (`vosembed benchmark clicks`)", "",
                 f"Held-out sequences: {', '.join(names)}. Sec. 4.3 of the paper: one object and one background "
                 "click on a random frame to start, then each click on a random wrongly labelled pixel of the "
                 f"video, k = {K_CLICK} (at most 2c - 1 while a label has c clicks), the vote blended with labels "
                 f"propagated from the clicks (weight {CLICK_PROPAGATION}) unless a row says otherwise, no online "
                 "adaptation. Mean J "
                 f"over frames, sequences and {runs}. Plot: `{plot.as_posix()}`.",
                 "", "| embedding | " + " | ".join(f"J @ {m} clicks/frame" for m in marks) + " |",
                 "|---|" + "---|" * len(marks)]
        for name, r in results.items():
            lines.append(f"| {name} | " + " | ".join(
                f"{100 * np.interp(m, r['grid'], r['mean_J']):.1f}" for m in marks) + " |")
        if seeds > 1:
            lines += ["", f"Per robot seed, J @ {marks[-1]} clicks/frame: " + "; ".join(
                f"{name} " + " / ".join(f"{100 * np.interp(marks[-1], r['grid'], c):.1f}"
                                        for c in r["mean_J_per_seed"]) for name, r in results.items()) + "."]
        write_report("clicks", payload, "\n".join(lines), out_dir, docs)
    return results


def _plot_curves(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=110)
    for variant, r in results.items():
        ax.plot(r["grid"], r["mean_J"], label=variant)
    ax.set(xlabel="clicks per frame", ylabel="mean J", ylim=(0, 1), title="PML click robot (held-out DAVIS)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _click_arguments(b) -> None:
    b.add_argument("--max-clicks-per-frame", type=float, default=1.0)
    b.add_argument("--plot", default="docs/images/pml-clicks.png", help="where the curve is drawn")
    b.add_argument("--seeds", type=int, default=1, help="runs of the robot per sequence (seeds 0 to N - 1), "
                   "averaged: one seed moves the curve by several points")


register_benchmark(Benchmark(
    "pml", "PML J&F with the first mask, retrieval time per frame and per click",
    "PML J&F with the first mask, retrieval time per frame and per click, with the trained head and with raw "
    "backbone features.",
    lambda a: semi_supervised(Path(a.data), a.sequences, a.device, Path(a.out), Path(a.docs)), held_out=True))
register_benchmark(Benchmark(
    "clicks", "the click robot: J versus clicks per frame (PNG + JSON)",
    "The click robot: J versus clicks per frame (PNG + JSON), with the trained head and with raw backbone features.",
    lambda a: clicks(Path(a.data), a.sequences, a.device, a.max_clicks_per_frame, Path(a.out), Path(a.docs),
                     Path(a.plot), a.seeds),
    _click_arguments, held_out=True))
