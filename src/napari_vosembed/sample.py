"""The redistributable sample clip, generated from images bundled with scikit-image.

A horse (scikit-image's `horse` silhouette, textured with the striped fur of `chelsea`) gallops
across a slowly panning `coffee` scene, with its exact ground-truth mask on every frame. It is fully
in view on frame 0 (the frame the demo annotates) and travels across 40 % of the width, growing by
a quarter, as objects in DAVIS clips do. Everything is derived from scikit-image's bundled images
(BSD / public-domain, see their README), so the clip can ship with the plugin and the demo can
score itself.

`moving_square` is a second, simpler clip with a known answer: a fur-textured square moving over a
static brick wall (what the unsupervised method must find with no input).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

SAMPLE_NAME = "horse-gallop"


def sample_clip(n_frames: int = 24, height: int = 240, width: int = 320) -> tuple[np.ndarray, np.ndarray]:
    """Return `(frames (T, H, W, 3) uint8, masks (T, H, W) uint8 with 0/1)`."""
    from skimage import data

    scene = data.coffee()
    fur = data.chelsea()
    horse = ~data.horse()
    pan = scene.shape[1] - width * scene.shape[0] // height
    frames = np.empty((n_frames, height, width, 3), np.uint8)
    masks = np.empty((n_frames, height, width), np.uint8)
    for t in range(n_frames):
        phase = t / max(n_frames - 1, 1)
        x_off = int(round(pan * phase))
        crop = scene[:, x_off : x_off + scene.shape[0] * width // height]
        frame = cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA)

        scale = 0.42 * height / horse.shape[0] * (1 + 0.25 * phase)
        h_h, h_w = int(horse.shape[0] * scale), int(horse.shape[1] * scale)
        sil = cv2.resize(horse.astype(np.uint8), (h_w, h_h), interpolation=cv2.INTER_NEAREST).astype(bool)
        tex = cv2.resize(fur[5:115, 190:330], (h_w, h_h), interpolation=cv2.INTER_LINEAR)
        top = int(height * 0.45 - h_h / 2 + 8 * np.sin(2 * np.pi * 3 * phase))
        left = int(0.05 * width + phase * 0.4 * width)
        mask = np.zeros((height, width), bool)
        ys, xs = np.nonzero(sil)
        ys, xs = ys + top, xs + left
        keep = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
        mask[ys[keep], xs[keep]] = True
        frame[ys[keep], xs[keep]] = tex[ys[keep] - top, xs[keep] - left]
        frames[t], masks[t] = frame, mask
    return frames, masks


def moving_square(n_frames: int = 10, height: int = 240, width: int = 320, side: int = 80, step: int = 10
                  ) -> tuple[np.ndarray, np.ndarray]:
    """`(frames, masks)`: a `chelsea`-fur square moving `step` pixels right per frame over a static
    `brick` wall."""
    from skimage import data

    wall = cv2.resize(np.repeat(data.brick()[..., None], 3, 2), (width, height), interpolation=cv2.INTER_AREA)
    fur = cv2.resize(data.chelsea()[40:240, 120:320], (side, side), interpolation=cv2.INTER_AREA)
    frames = np.repeat(wall[None], n_frames, 0)
    masks = np.zeros((n_frames, height, width), np.uint8)
    top = (height - side) // 2
    for t in range(n_frames):
        left = side // 2 + step * t
        frames[t, top:top + side, left:left + side] = fur
        masks[t, top:top + side, left:left + side] = 1
    return frames, masks


def write_sample_sequence(root: str | Path, overwrite: bool = False) -> Path:
    """Write the clip as a sequence folder `root/horse-gallop/{frames/*.jpg, masks/*.png}`."""
    from .io import write_png_labels

    seq = Path(root) / SAMPLE_NAME
    frames, masks = sample_clip()
    names = [f"{t:05d}" for t in range(len(frames))]
    (seq / "frames").mkdir(parents=True, exist_ok=True)
    for name, frame in zip(names, frames):
        path = seq / "frames" / f"{name}.jpg"
        if path.exists() and not overwrite:
            continue
        cv2.imwrite(str(path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    write_png_labels(masks, seq / "masks", names, overwrite=True)
    return seq
