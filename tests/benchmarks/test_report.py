import json

from napari_vosembed.benchmarks import write_report


def test_report_replaces_only_its_own_section(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nintro\n\n<!-- other:start -->\nkeep me\n<!-- other:end -->\n")
    write_report("embed", {"x": 1}, "| a |\n|---|\n| 1 |", tmp_path / "out", docs)
    write_report("embed", {"x": 2}, "| a |\n|---|\n| 2 |", tmp_path / "out", docs)
    text = docs.read_text()
    assert text.count("<!-- embed:start -->") == 1 and "| 2 |" in text and "| 1 |" not in text
    assert "keep me" in text and text.startswith("# Benchmarks\n\nintro")
    assert json.loads((tmp_path / "out" / "embed.json").read_text()) == {"x": 2}
