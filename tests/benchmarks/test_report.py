import json

import pytest

from napari_vosembed.benchmarks import write_report
from napari_vosembed.benchmarks.pml import clicks
from napari_vosembed.errors import VosEmbedError


def test_report_replaces_only_its_own_section(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nintro\n\n<!-- other:start -->\nkeep me\n<!-- other:end -->\n")
    write_report("embed", {"x": 1}, "| a |\n|---|\n| 1 |", tmp_path / "out", docs)
    write_report("embed", {"x": 2}, "| a |\n|---|\n| 2 |", tmp_path / "out", docs)
    text = docs.read_text()
    assert text.count("<!-- embed:start -->") == 1 and "| 2 |" in text and "| 1 |" not in text
    assert "keep me" in text and text.startswith("# Benchmarks\n\nintro")
    assert json.loads((tmp_path / "out" / "embed.json").read_text()) == {"x": 2}


@pytest.mark.parametrize("option, value, words", [("seeds", 0, "at least one seed, not 0"),
                                                 ("max_clicks_per_frame", 0.0, "max_clicks_per_frame is 0.0")])
def test_the_click_robot_refuses_settings_that_would_measure_nothing(tmp_path, option, value, words):
    settings = {"seeds": 1, "max_clicks_per_frame": 0.4, option: value}
    docs = tmp_path / "benchmarks.md"
    with pytest.raises(VosEmbedError, match=words):
        clicks(tmp_path / "no-data", None, "cpu", settings["max_clicks_per_frame"], tmp_path / "out", docs,
               tmp_path / "plot.png", seeds=settings["seeds"])
    assert not docs.exists() and not (tmp_path / "out").exists()
