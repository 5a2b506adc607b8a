"""Make docs/images/saliency-<seq>.png: ISNet objectness on DAVIS training frames.

    .venv/bin/python docs/scripts/saliency_overlay.py ../shared/data/davis2016-train breakdance-flare 0
"""

import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from napari_vosembed.engine import get_backbone
from napari_vosembed.io import normalize_frame, read_sequence

root, name, t = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
seq = read_sequence(root / name)
frame = seq.video[t]
image = torch.from_numpy(normalize_frame(frame, *seq.video.intensity_range())).permute(2, 0, 1)[None]
with torch.inference_mode():
    saliency = get_backbone("isnet", "cpu")(image).saliency[0, 0].numpy()
heat = cv2.applyColorMap((saliency * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[..., ::-1]
blend = (0.45 * frame + 0.55 * heat).astype(np.uint8)
edges = cv2.morphologyEx((seq.masks[t] > 0).astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
blend[edges] = (0, 255, 0)
panel = np.concatenate([frame, blend], axis=1)
panel = cv2.resize(panel, (panel.shape[1] // 2, panel.shape[0] // 2), interpolation=cv2.INTER_AREA)
out = Path(__file__).parents[1] / "images" / f"saliency-{name}.png"
cv2.imwrite(str(out), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
inside = saliency[seq.masks[t] > 0].mean()
outside = saliency[seq.masks[t] == 0].mean()
print(f"{out}: mean saliency on the object {inside:.3f}, on the background {outside:.3f}")
