"""`vosembed benchmark viewer`: a long 480p clip in a real napari viewer, from opening the file to
labels on every frame, as a user meets it.

The clip (`--frames` frames of `long_clip`) is opened with this plugin's reader, the dock is
docked, a clicks layer made and the object clicked once on frame 0, with "update as I click" on
and jobs in real threads; the embedding cache starts empty. Two ways: the click straight away
(the first click waits for the embedding), and "Compute embeddings" first, then the click.
Needs napari with Qt and a display (`xvfb-run` on a machine without one).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..io import list_sequences, read_sequence
from . import Benchmark, long_clip, machine, register_benchmark, report_arguments, write_report

WIDGET = "Video object segmentation"


def _wait(until, timeout_s: float = 1800.0) -> float:
    """Process Qt events until `until()` holds; the monotonic time it first did."""
    from qtpy.QtCore import QCoreApplication

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        QCoreApplication.processEvents()
        if until():
            return time.monotonic()
        time.sleep(0.005)
    raise TimeoutError("the viewer did not finish in time")


def _click_target(root: Path) -> tuple[int, int]:
    """The interior-most pixel of the object on the first frame of the clip (its first sequence)."""
    mask = read_sequence(root / list_sequences(root)[0]).ground_truth()[0] > 0
    return tuple(int(v) for v in np.unravel_index(np.argmax(ndimage.distance_transform_edt(mask)), mask.shape))


def one_way(clip: Path, target: tuple[int, int], embed_first: bool) -> dict:
    """Seconds from opening `clip` to each step a user sees, with an empty embedding cache."""
    import napari

    figures = {}
    with tempfile.TemporaryDirectory() as cache:
        os.environ["VOSEMBED_EMBEDDINGS_DIR"] = cache
        start = time.monotonic()
        viewer = napari.Viewer(show=True)
        try:
            (image, *_) = viewer.open(str(clip), plugin="napari-vosembed")
            _, dock = viewer.window.add_plugin_dock_widget("napari-vosembed", WIDGET)
            figures["open -> image and dock shown"] = _wait(lambda: True) - start
            points = dock.add_points_layer()
            if embed_first:
                began = time.monotonic()
                dock.embed_button.clicked.emit()
                figures["Compute embeddings"] = _wait(lambda: not dock.running()) - began
            viewer.dims.set_current_step(0, 0)  # the user goes to frame 0 and clicks there
            _wait(lambda: True)
            clicked = time.monotonic()
            points.add([0, *target])
            out = lambda: dock.output.value  # noqa: E731
            figures["click -> its mask on screen"] = _wait(lambda: out() is not None and out().data[0].any()) - clicked
            done = _wait(lambda: not dock.running() and out() is not None and out().data[-1].any())
            figures["click -> every frame labelled"] = done - clicked
            figures["open -> every frame labelled"] = done - start
        finally:
            viewer.close()
            del os.environ["VOSEMBED_EMBEDDINGS_DIR"]
    return figures


def run(args) -> dict:
    os.environ["VOSEMBED_SYNC_WORKERS"] = "0"
    root = Path(args.data)
    clip = long_clip(root, args.frames)
    target = _click_target(root)
    results = {"click at once": one_way(clip, target, False), "Compute embeddings, then click": one_way(clip, target,
                                                                                                        True)}
    payload = {"benchmark": "viewer", "data": str(root), "frames": args.frames, "click": target,
               "machine": machine(), "results": results}
    write_report("viewer", payload, _markdown(payload), Path(args.out), Path(args.docs))
    return payload


def _markdown(p: dict) -> str:
    steps = list(dict.fromkeys(k for r in p["results"].values() for k in r))
    lines = ["## A long clip in the viewer (`vosembed benchmark viewer`)", "",
             f"{p['frames']} frames of 854x480 (`long_clip` of {p['data']}) opened in a real napari viewer with this "
             "plugin's reader, one click on the object on frame 0 with the default method and \"update as I click\" "
             "on, jobs in threads, the embedding cache empty at the start; seconds, 1-minute load average "
             f"{p['machine']['load_average_1min']:.1f}.", "",
             "| step | " + " | ".join(p["results"]) + " |", "|---|" + "---|" * len(p["results"])]
    lines += [f"| {step} | " + " | ".join(f"{r[step]:.1f}" if step in r else "" for r in p["results"].values()) + " |"
              for step in steps]
    return "\n".join(lines)


def _arguments(b) -> None:
    b.add_argument("data", nargs="?", default="../shared/data/davis2016-train", help="root of sequences")
    b.add_argument("--frames", type=int, default=100, help="length of the clip")
    report_arguments(b)


register_benchmark(Benchmark(
    "viewer", "a long clip in a real napari viewer: open, click, labels on every frame",
    "Open a long 480p clip in a real napari viewer, click the object once on frame 0 and time what the user sees, "
    "with and without the dock's Compute embeddings step first. Needs napari with Qt and a display (xvfb-run).",
    run, _arguments))
