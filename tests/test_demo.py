import cv2
import numpy as np

from napari_vosembed import demo
from napari_vosembed.progress import Progress


def _frame_and_labels():
    frame = np.full((60, 80, 3), (200, 30, 30), np.uint8)  # red, as the cup the horse crosses
    labels = np.zeros((60, 80), np.uint8)
    labels[20:40, 30:60] = 1
    return frame, labels


def test_overlay_keeps_the_frame_size_and_outlines_the_object_in_white_within_black():
    frame, labels = _frame_and_labels()
    out = demo.overlay(frame, labels)
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert (out[20, 45] == 255).all() and (out[39, 45] == 255).all()  # the object's own border pixels
    assert (out[19, 45] == 0).all() and (out[40, 45] == 0).all()  # the pixels just outside it
    inside = out[30, 45].astype(int)
    assert np.abs(inside - frame[30, 45]).sum() > 150 and inside[1] > inside[0]  # a tint far from red
    assert (out[5, 5] == frame[5, 5]).all()  # the background far away is untouched


def test_caption_writes_in_the_top_left_corner_only():
    frame = np.full((60, 200, 3), 128, np.uint8)
    out = demo.caption(frame, "frame 8")
    assert out.shape == frame.shape
    corner = out[:30, :100]
    assert (corner == 255).all(axis=-1).any() and (corner == 0).all(axis=-1).any()
    assert (out[35:] == 128).all() and (out[:, 120:] == 128).all()


def test_introduction_names_the_prompt_and_the_scoring():
    text = demo.introduction("pml", 24, 240, 320)
    assert "the ground-truth mask of frame 0" in text
    assert "24 frames of 320x240" in text and "frames 1 to 22" in text
    assert "Pixel-wise metric learning" in text


def test_drive_stages_explains_each_stage_once_with_its_final_count(capsys):
    def job():
        yield Progress(1, 3, "training")
        yield Progress(3, 3, "training")
        yield Progress(0, 2, "step nobody explains")
        return "labels"

    assert demo.drive_stages(job()) == "labels"
    out = capsys.readouterr().out
    assert out.count("training: fine-tuning") == 1 and "1/3" not in out
    assert "    3/3 done in " in out and "  step nobody explains\n    0/2 done in " in out
    assert demo.drive_stages(job(), quiet=True) == "labels" and capsys.readouterr().out == ""


def test_demo_says_what_it_does_and_what_the_columns_mean(monkeypatch, tmp_path, capsys):
    def fake_segment(video, prompts, method, device):
        """The ground truth, shifted by 2 pixels after frame 0, without any network."""
        yield Progress(100, 100, "training")
        gt = np.asarray(prompts.masks[0])
        labels = np.stack([gt] + [np.roll(gt, 2, axis=1)] * (len(video) - 1))
        yield Progress(len(video), len(video), "retrieval")
        return labels

    monkeypatch.setattr(demo, "iter_segment", fake_segment)
    assert demo.run(tmp_path) == 0
    out = capsys.readouterr().out
    assert "prompt:  the ground-truth mask of frame 0" in out
    assert "100/100 done in" in out and "retrieval: frame after frame" in out
    assert "J = region similarity" in out and "F = contour accuracy" in out and "J&F = (J mean + F mean) / 2" in out
    assert out.index("prompt:") < out.index("J&F ") < out.index("J = region similarity")
    strip = cv2.imread(str(tmp_path / "overlay.png"))
    assert strip.shape == (240, 4 * 320, 3)
    assert len(list((tmp_path / "masks").iterdir())) == 24
