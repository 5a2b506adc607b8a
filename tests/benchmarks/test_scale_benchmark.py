"""`vosembed benchmark scale` in its CI-sized form: the tiny backbone on short generated time-lapses."""

import json

import numpy as np
import zarr

from napari_vosembed.benchmarks.scale import Cells, make_timelapse
from napari_vosembed.cli import main


def test_the_generated_time_lapse_is_16_bit_with_its_cells_where_the_masks_say(tmp_path):
    make_timelapse(tmp_path / "video.zarr", 3, 160)
    video = zarr.open_array(str(tmp_path / "video.zarr"))
    assert video.shape == (3, 160, 160) and video.dtype == np.uint16 and video.chunks == (1, 160, 160)
    mask = np.load(tmp_path / "mask0.npy")
    assert np.array_equal(mask, Cells(160).labels(0)) and set(np.unique(mask)) == set(range(10))
    frame = video[0].astype(float)
    assert frame[mask > 0].mean() > frame[mask == 0].mean() + 1000  # cells are brighter than the background
    assert not np.array_equal(Cells(160).labels(0), Cells(160).labels(2))  # and they move


def test_the_benchmark_reports_time_memory_and_j_at_each_length(tmp_path):
    """A 300-frame Zarr time-lapse segmented into a Zarr store, its peak memory checked by the benchmark."""
    docs = tmp_path / "benchmarks.md"
    assert main(["--quiet", "benchmark", "scale", "--lengths", "20", "300", "--size", "256", "--backbone", "tiny",
                 "--threads", "1", "--work", str(tmp_path), "--out", str(tmp_path / "out"), "--docs", str(docs)]) == 0
    payload = json.loads((tmp_path / "out" / "scale.json").read_text())
    assert [r["frames"] for r in payload["runs"]] == [20, 300] and payload["within_bound"]
    for r in payload["runs"]:
        assert 0 < r["peak_rss_mib"] <= payload["rss_bound_mib"] and r["segment_s"] > 0
        assert r["J"] > 0.3  # the cells are tracked, not lost
    assert "| 300 | default (4) |" in docs.read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("vosembed-scale-")] == []  # videos removed
