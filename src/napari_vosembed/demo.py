"""`make demo`: segment the sample clip with the best installed method from the ground-truth mask of
frame 0, score it against the ground truth, and say in plain words what each step does."""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import Generator
from pathlib import Path

import cv2
import numpy as np

from .io import read_sequence, write_png_labels
from .methods import best_method, get_method, iter_segment
from .metrics import evaluate_sequence, format_report, summarize
from .prompts import Prompts
from .sample import write_sample_sequence

#: What the methods' progress stages do, in a line each (a stage not listed is shown by its name alone).
STAGES = {
    "embedding": "the ISNet backbone turns every frame into per-pixel features (cached on disk: the next run on the "
                 "same clip skips this), and the method's embedding head maps them to embedding vectors",
    "training": "fine-tuning, not training from scratch: the embedding head (a small network on the backbone's "
                "features) takes the optimiser steps counted below on the frame-0 mask alone, so that this clip's "
                "object and background pixels lie far apart; then every frame is embedded again with it",
    "retrieval": "frame after frame, each pixel takes the label most of its nearest reference pixels have: the "
                 "frame-0 mask, plus confident pixels of the frames just done (online adaptation)",
    "propagation": "frame after frame, the labels of earlier frames are carried over to each pixel, weighted by "
                   "how alike their embeddings are",
    "anchor graph": "a graph linking similar pixels across the whole video, along which clicks spread",
    "prompt model: encoding": "the promptable mask model (SAM) encodes the frames that carry clicks or boxes",
}

#: What the columns of `format_report` mean (DAVIS: Perazzi et al. 2016, Pont-Tuset et al. 2017).
COLUMNS = (
    "J = region similarity: intersection over union of the mask with the ground truth. F = contour accuracy: "
    "F-measure of the mask's boundary against the true one (boundary pixels matched within a few pixels).",
    "mean: average over the scored frames; rec (recall): fraction of those frames scoring above 0.5; dec (decay): "
    "how much the score drops from the first quarter of the clip to the last. J&F = (J mean + F mean) / 2, the "
    "DAVIS benchmark's headline number. 1 is perfect for all but decay (0 is best).",
)

#: Tints of objects 1, 2, ... in the overlay: bright and far from the reds and browns of most scenes (the DAVIS
#: palette of the mask files starts with a dark red, which vanishes on a red cup).
OVERLAY_COLOURS = ((0, 255, 128), (0, 200, 255), (255, 0, 255), (255, 255, 0), (255, 128, 0), (128, 128, 255))


def _wrap(text: str, indent: str = "", later: str | None = None) -> str:
    return textwrap.fill(text, 110, initial_indent=indent, subsequent_indent=indent if later is None else later)


def introduction(method: str, n_frames: int, height: int, width: int) -> str:
    """What the demo is about to do: the clip, the method, the prompt and how the result is scored."""
    cls = get_method(method)
    rows = (
        ("clip", f"{n_frames} frames of {width}x{height} made from scikit-image's bundled images: a horse silhouette "
                 "with cat fur pasted over a slowly panning photo of a coffee cup, so its true mask (the ground "
                 "truth) is known on every frame"),
        ("method", f"{method} - {cls.description or cls.title or 'no description'}"),
        ("prompt", "the ground-truth mask of frame 0, as a user would paint it in the viewer; nothing else"),
        ("result", f"frames 1 to {n_frames - 1} are segmented from that mask alone and compared with their ground "
                   f"truth (as DAVIS does, frames 1 to {n_frames - 2}: not the prompt frame, nor the last)"),
    )
    return "\n".join(["vosembed demo: segment a video from one painted mask, then score the result."] +
                     [_wrap(text, f"  {name + ':':<9}", " " * 11) for name, text in rows])


def drive_stages(gen: Generator, quiet: bool = False, stream=None):
    """Run a progress generator to its end, one stage after the other: what the stage does (`STAGES`), then
    its count (updated in place on a terminal) and time, the silent work before the next stage included;
    return the generator's value."""
    stream = stream or sys.stdout
    live = stream.isatty()
    stage, count, since = None, "", time.monotonic()

    def show(final: bool = False) -> None:
        seconds = time.monotonic() - since
        if final or live:
            line = f"    {count} done in {seconds:.1f} s\n" if final else f"    {count}, {seconds:.0f} s"
            stream.write(("\r" if live else "") + line)
            stream.flush()

    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            if stage is not None and not quiet:
                show(final=True)
            return stop.value
        if quiet:
            continue
        if step.stage != stage:
            if stage is not None:
                show(final=True)
                since = time.monotonic()
            stage = step.stage
            stream.write(_wrap(f"{stage}: {STAGES[stage]}" if stage in STAGES else stage, "  ", "    ") + "\n")
        count = f"{step.done}/{step.total}"
        show()


def overlay(frame: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB frame with each object tinted in a bright colour (`OVERLAY_COLOURS`, in turn) and outlined in white
    within black, so that it shows on any background."""
    out = frame.astype(np.float32).copy()
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    for obj in np.unique(labels):
        if obj == 0:
            continue
        region = (labels == obj).astype(np.uint8)
        colour = np.array(OVERLAY_COLOURS[(obj - 1) % len(OVERLAY_COLOURS)], np.float32)
        out[region > 0] = (1 - alpha) * out[region > 0] + alpha * colour
        inside = cv2.erode(region, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        outside = cv2.dilate(region, kernel)
        out[(outside > 0) & (region == 0)] = 0
        out[(region > 0) & (inside == 0)] = 255
    return out.astype(np.uint8)


def caption(image: np.ndarray, text: str) -> np.ndarray:
    """`image` (RGB) with `text` in its top-left corner, white outlined in black (legible on any background)."""
    out = image.copy()
    for colour, thickness in (((0, 0, 0), 4), ((255, 255, 255), 1)):
        cv2.putText(out, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, colour, thickness, cv2.LINE_AA)
    return out


def run(out: Path, device: str = "auto", quiet: bool = False) -> int:
    seq = read_sequence(write_sample_sequence(out / "input", overwrite=True))
    method = best_method()
    print(introduction(method, len(seq.video), *seq.video.shape[1:3]), flush=True)
    prompts = Prompts().add_mask(0, seq.masks[0])
    labels = drive_stages(iter_segment(seq.video, prompts, method, device), quiet)
    write_png_labels(labels, out / "masks", seq.video.frame_names, overwrite=True)
    picks = np.linspace(0, len(labels) - 1, 4).round().astype(int)
    strip = np.concatenate([caption(overlay(seq.video[t], labels[t]), f"frame {t}" + (" (prompt)" if t == 0 else ""))
                            for t in picks], axis=1)
    cv2.imwrite(str(out / "overlay.png"), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    report = summarize({seq.name: evaluate_sequence(list(labels), seq.ground_truth())})
    print(_wrap(f"masks in {out / 'masks'}; {out / 'overlay.png'} shows frames {', '.join(map(str, picks))} "
                "with the segmented object tinted and outlined"))
    print(format_report(report))
    print("\n".join(_wrap(text) for text in COLUMNS))
    return 0
