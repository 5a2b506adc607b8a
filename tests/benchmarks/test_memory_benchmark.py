"""`vosembed benchmark memory` on a small generated sequence."""

import json

import pytest

from napari_vosembed.benchmarks.memory import fit, run
from napari_vosembed.sample import write_sample_sequence


def test_the_fit_is_the_line_through_the_shortest_and_longest_run():
    assert fit([10, 30], [600.0, 800.0]) == (500.0, 10.0)
    assert fit([10, 20, 30], [600.0, 650.0, 590.0]) == (600.0, 0.0)  # no negative cost per frame


def test_the_memory_benchmark_measures_a_method_at_two_lengths_and_writes_its_report(tmp_path):
    from napari_vosembed.engine.fetch import default_model_path

    if not default_model_path().exists():
        pytest.skip("the ISNet backbone is not cached (run `vosembed fetch-models`)")
    sequence = write_sample_sequence(tmp_path / "sample")
    docs = tmp_path / "benchmarks.md"
    payload = run(str(sequence), [3, 6], ["pml"], "cpu", 1, tmp_path / "out", docs)
    pml = payload["results"]["pml"]
    assert [r["frames"] for r in pml["runs"]] == [3, 6]
    assert all(r["labelled_frames"] == r["frames"] for r in pml["runs"])  # the object was found on every frame
    assert pml["runs"][0]["peak_rss_mib"] > 200 and pml["base_mib"] > 0 and pml["per_frame_mib"] >= 0
    assert json.loads((tmp_path / "out" / "memory.json").read_text())["results"]["pml"] == pml
    assert "| pml | " in docs.read_text()
