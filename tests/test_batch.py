"""`vosembed batch`: every video under a folder on a dask LocalCluster, resumable, a failed video
reported without losing the others, a killed worker's video done by another."""

import json
import os
import signal
import threading
import time

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from napari_vosembed import batch
from napari_vosembed.cli import main
from napari_vosembed.errors import VosEmbedError
from napari_vosembed.io import write_png_labels
from napari_vosembed.progress import drive
from napari_vosembed.sample import moving_square


def square_sequence(root, name, n=6, step=5):
    frames, masks = moving_square(n, height=120, width=160, side=40, step=step)
    (root / name / "frames").mkdir(parents=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(root / name / "frames" / f"{t:05d}.jpg")
    write_png_labels(masks, root / name / "masks")


def test_every_kind_of_video_under_the_root_is_found(tmp_path):
    square_sequence(tmp_path, "seq")
    (tmp_path / "frames").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "frames" / "0.png")
    (tmp_path / "clip.mp4").write_bytes(b"")
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((2, 8, 8), np.uint8))
    zarr.create_array(str(tmp_path / "cells.zarr"), shape=(2, 8, 8), dtype="uint8")
    (tmp_path / "notes.txt").write_text("not a video")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "empty").mkdir()
    davis = tmp_path / "JPEGImages" / "480p" / "bear"
    davis.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(davis / "00000.jpg")
    found = batch.find_videos(tmp_path)
    assert sorted(found) == ["bear", "cells", "clip", "frames", "seq", "stack"]
    assert found["seq"] == tmp_path / "seq" and found["stack"] == tmp_path / "stack.tif" and found["bear"] == davis


@pytest.fixture
def cluster_env(monkeypatch, tmp_path):
    """Worker processes inherit the environment: their own embedding cache, one thread each."""
    from napari_vosembed.engine.fetch import default_model_path

    if not default_model_path().exists():
        pytest.skip("the ISNet backbone is not cached (run `vosembed fetch-models`)")
    monkeypatch.setenv("VOSEMBED_EMBEDDINGS_DIR", str(tmp_path / "embeddings"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_a_batch_segments_each_video_reports_a_broken_one_and_resumes(tmp_path, cluster_env, capsys):
    root, out = tmp_path / "videos", tmp_path / "out"
    for name, step in (("slow", 4), ("fast", 8)):
        square_sequence(root, name, step=step)
    (root / "broken.mp4").write_text("not a video")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert main(["--quiet", "batch", str(root), "--out", str(out), "--method", "pml", "--workers", "2"]) == 1
    report = json.loads((out / "batch.json").read_text())
    videos = report["videos"]
    assert videos["broken"]["status"] == "failed"
    assert "broken.mp4: not a readable video file" in videos["broken"]["error"]
    for name in ("slow", "fast"):
        assert videos[name]["status"] == "done" and videos[name]["frames"] == 6
        assert videos[name]["J&F"] > 80, videos[name]
        assert len(list((out / name).glob("*.png"))) == 6 and (out / name / "result.json").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["batch.json", "batch.md", "fast", "slow"]  # no partial
    assert "| broken | failed: VideoReadError" in (out / "batch.md").read_text()
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    capsys.readouterr()

    (root / "broken.mp4").unlink()
    report = drive(batch.run(root, out, "pml", workers=1), quiet=True)  # nothing left to do: no cluster started
    assert {name: r["status"] for name, r in report["videos"].items()} == dict.fromkeys(("fast", "slow"),
                                                                                          "skipped (done before)")


def test_a_killed_worker_hands_its_video_to_another(tmp_path, cluster_env):
    psutil = pytest.importorskip("psutil")
    root, out = tmp_path / "videos", tmp_path / "out"
    for name in ("a", "b", "c"):
        square_sequence(root, name, n=8)
    killed = []

    def kill_a_worker():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            busy = [p for p in psutil.Process().children() if p.memory_info().rss > 400 << 20]
            if busy:  # a worker that has loaded torch and the backbone: mid-task
                os.kill(busy[0].pid, signal.SIGKILL)
                killed.append(busy[0].pid)
            time.sleep(0.2)

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    report = drive(batch.run(root, out, "pml", workers=2), quiet=True)
    killer.join()
    assert killed, "no worker was killed"
    assert {name: r["status"] for name, r in report["videos"].items()} == dict.fromkeys("abc", "done")
    assert all(len(list((out / name).glob("*.png"))) == 8 for name in "abc")
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "batch.json", "batch.md", "c"]


def test_a_folder_in_the_way_of_a_result_is_never_replaced(tmp_path):
    root, out = tmp_path / "videos", tmp_path / "out"
    square_sequence(root, "left")
    (out / "left").mkdir(parents=True)
    (out / "left" / "mine.png").write_bytes(b"the user's")
    with pytest.raises(VosEmbedError, match=r"out/left: exists but holds no finished result; move it away first"):
        drive(batch.run(root, out, "pml"), quiet=True)
    assert (out / "left" / "mine.png").read_bytes() == b"the user's"


def test_a_zarr_store_or_a_long_video_gets_its_labels_written_frame_by_frame(tmp_path, monkeypatch):
    """Without a cluster: one task as a worker runs it."""
    root, out = tmp_path / "videos", tmp_path / "out"
    square_sequence(root, "left")
    monkeypatch.setattr(batch, "IN_MEMORY_LABELS", 6 * 120 * 160 - 1)  # "left" counts as long
    result = batch.segment_one(batch.Job("left", str(root / "left"), str(out), "pml", "first-mask", "cpu", 1))
    stored = zarr.open_array(str(out / "left" / "labels.zarr"))
    assert stored.shape == (6, 120, 160) and stored.chunks == (1, 120, 160) and result["J&F"] > 80
    assert json.loads((out / "left" / batch.RESULT).read_text()) == result and not list(out.glob(".*"))
    frames, _ = moving_square(6, height=120, width=160, side=40, step=5)
    zarr.create_array(str(root / "cells.zarr"), shape=(6, 120, 160), dtype="uint16")[:] = frames.mean(-1) * 200
    monkeypatch.setattr(batch, "IN_MEMORY_LABELS", 2**29)
    batch.segment_one(batch.Job("cells", str(root / "cells.zarr"), str(out), "unsupervised", "none", "cpu", 1))
    assert zarr.open_array(str(out / "cells" / "labels.zarr")).shape == (6, 120, 160)


def test_a_chosen_scale_reaches_every_worker_and_a_bad_one_is_refused(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(batch, "_segment", lambda job: seen.append(os.environ.get("VOSEMBED_SCALE")) or {})
    monkeypatch.delenv("VOSEMBED_SCALE", raising=False)
    batch.segment_one(batch.Job("a", "a", str(tmp_path), "pml", "first-mask", "cpu", 1, scale=0.5))
    batch.segment_one(batch.Job("b", "b", str(tmp_path), "pml", "first-mask", "cpu", 1))
    assert seen == ["0.5", None] and "VOSEMBED_SCALE" not in os.environ
    square_sequence(tmp_path / "root", "left")
    with pytest.raises(VosEmbedError, match="--scale is the factor"):
        drive(batch.run(tmp_path / "root", tmp_path / "out", "pml", scale="0"), quiet=True)
