"""`vosembed benchmark speed` in its CI-sized form: the tiny backbone on a generated clip."""

import json

from napari_vosembed.benchmarks.speed import PIPELINES, clip, run


def test_the_generated_clip_moves_its_object_and_masks_it():
    video, masks = clip(None, 30)
    assert video.shape == (30, 96, 128, 3) and masks.shape == (30, 96, 128)
    assert all(masks[t].sum() == 32 * 32 for t in (0, 15, 29))
    assert not (masks[0] == masks[15]).all()


def test_the_speed_benchmark_runs_the_float32_pipelines_and_writes_its_report(tmp_path):
    docs = tmp_path / "benchmarks.md"
    payload = run(None, 20, "tiny", "cpu", 1, tmp_path / "out", docs)
    results = payload["results"]
    assert list(results) == [name for name, (precision, _) in PIPELINES.items() if precision == "fp32"]
    single, default = results.values()
    assert single["batch"] == 1 and default["batch"] > 1
    for r in results.values():
        assert r["frames"] == 20 and r["embed_frames_computed"] == 20
        assert r["embed_s_per_frame"] > 0 and r["click_frame_ms_median"] > 0 and r["peak_rss_mib"] > 100
        assert r["tvos_jf"] > 60 and r["pml_jf"] > 60, r
    assert json.loads((tmp_path / "out" / "speed.json").read_text())["results"] == results
    text = docs.read_text()
    assert "<!-- speed:start -->" in text and "| one frame per pass | fp32, 1 |" in text
