"""`make demo`: segment the sample clip with the best installed method and score it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .io import read_sequence, write_png_labels
from .methods import best_method, iter_segment
from .metrics import evaluate_sequence, format_report, summarize
from .prompts import Prompts
from .sample import write_sample_sequence


def overlay(frame: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB frame with each object tinted in its DAVIS palette colour and outlined."""
    from .io import davis_palette

    palette = davis_palette()
    out = frame.astype(np.float32).copy()
    for obj in np.unique(labels):
        if obj == 0:
            continue
        region = labels == obj
        out[region] = (1 - alpha) * out[region] + alpha * palette[obj]
        edges = cv2.morphologyEx(region.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        out[edges] = palette[obj]
    return out.astype(np.uint8)


def run(out: Path, device: str = "auto", quiet: bool = False) -> int:
    from .progress import drive

    seq = read_sequence(write_sample_sequence(out / "input", overwrite=True))
    method = best_method()
    prompts = Prompts().add_mask(0, seq.masks[0])
    labels = drive(iter_segment(seq.video, prompts, method, device), quiet)
    write_png_labels(labels, out / "masks", seq.video.frame_names, overwrite=True)
    picks = np.linspace(0, len(labels) - 1, 4).round().astype(int)
    strip = np.concatenate([overlay(seq.video[t], labels[t]) for t in picks], axis=1)
    cv2.imwrite(str(out / "overlay.png"), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    gt = seq.ground_truth()
    report = summarize({seq.name: evaluate_sequence(list(labels), gt)})
    print(f"method {method}: masks in {out / 'masks'}, overlay {out / 'overlay.png'}")
    print(format_report(report))
    return 0
