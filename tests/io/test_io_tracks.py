"""Objects as tracks: napari Tracks data (centroids over time) and GEFF export, read back with geff."""

import geff
import numpy as np
import pytest

from napari_vosembed.errors import VosEmbedError
from napari_vosembed.io import object_tracks, track_features, write_geff


@pytest.fixture
def squares():
    """Three frames: object 1 (3x3) moves right by 2, object 4 (2x2) moves down by 1 each frame."""
    labels = np.zeros((3, 12, 16), np.uint16)
    for t in range(3):
        labels[t, 1:4, 1 + 2 * t : 4 + 2 * t] = 1
        labels[t, 6 + t : 8 + t, 10:12] = 4
    return labels


EXPECTED = [
    [1, 0, 2.0, 2.0], [1, 1, 2.0, 4.0], [1, 2, 2.0, 6.0],
    [4, 0, 6.5, 10.5], [4, 1, 7.5, 10.5], [4, 2, 8.5, 10.5],
]


def test_object_tracks_are_exact_centroids_sorted_by_track_then_time(squares):
    tracks = object_tracks(squares)
    assert tracks.dtype == np.float64 and tracks.shape == (6, 4)
    np.testing.assert_array_equal(tracks, EXPECTED)
    np.testing.assert_array_equal(track_features(squares)["area"], [9, 9, 9, 4, 4, 4])


def test_object_tracks_keep_the_id_over_a_gap_and_take_huge_ids():
    labels = np.zeros((4, 5, 5), np.uint32)
    labels[0, 0, 0] = labels[3, 4, 4] = 4_000_000_000  # missing on frames 1 and 2
    labels[1, 2, 2] = 3
    np.testing.assert_array_equal(object_tracks(labels), [[3, 1, 2, 2], [4e9, 0, 0, 0], [4e9, 3, 4, 4]])
    assert object_tracks(np.zeros((2, 3, 3), np.uint8)).shape == (0, 4)
    assert object_tracks(np.ones((3, 2, 2), bool))[:, 0].tolist() == [1, 1, 1]


def test_write_geff_reads_back_with_geff(squares, tmp_path):
    path = write_geff(squares, tmp_path / "tracks.geff")
    assert path == tmp_path / "tracks.geff"
    graph, meta = geff.read(str(path))
    assert graph.is_directed() and graph.number_of_nodes() == 6 and graph.number_of_edges() == 4
    nodes = sorted((d["seg_id"], d["t"], d["y"], d["x"]) for _, d in graph.nodes(data=True))
    assert nodes == [tuple(row) for row in EXPECTED]
    for a, b in graph.edges:
        na, nb = graph.nodes[a], graph.nodes[b]
        assert na["track_id"] == nb["track_id"] == na["seg_id"] and nb["t"] == na["t"] + 1
    assert sorted(d["area"] for _, d in graph.nodes(data=True)) == [4, 4, 4, 9, 9, 9]
    assert [(ax.name, ax.type, ax.unit) for ax in meta.axes] == [
        ("t", "time", "frame"), ("y", "space", "pixel"), ("x", "space", "pixel")]
    assert meta.track_node_props == {"tracklet": "track_id"}
    assert "pixels" in meta.node_props_metadata["area"].description


def test_write_geff_links_an_object_across_frames_where_it_is_missing(tmp_path):
    labels = np.zeros((4, 6, 6), np.uint8)
    labels[0, 1:3, 1:3] = labels[3, 2:4, 2:4] = 2
    graph, _ = geff.read(str(write_geff(labels, tmp_path / "gap.geff")))
    (a, b), = graph.edges
    assert (graph.nodes[a]["t"], graph.nodes[b]["t"]) == (0, 3)


def test_write_geff_refuses_an_existing_output_unless_overwrite(squares, tmp_path):
    path = write_geff(squares, tmp_path / "tracks.geff")
    with pytest.raises(VosEmbedError, match="overwrite=True"):
        write_geff(squares[:2], path)
    write_geff(squares[:2], path, overwrite=True)
    assert geff.read(str(path))[0].number_of_nodes() == 4
    (tmp_path / "empty").mkdir()
    assert geff.read(str(write_geff(squares, tmp_path / "empty")))[0].number_of_nodes() == 6
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's file")
    with pytest.raises(VosEmbedError, match="no GEFF"):
        write_geff(squares, mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "the user's file"


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 4), np.uint8), r"\(T, H, W\) volume of at least one pixel, got shape \(4, 4\)"),
    (np.full((2, 3, 3), 0.5), "integer ids"),
    (np.full((2, 3, 3), "a"), "integer ids"),
    (np.full((2, 3, 3), -1), "non-negative"),
])
def test_bad_labels_raise_a_clear_error(bad, message, tmp_path):
    with pytest.raises(VosEmbedError, match=message):
        write_geff(bad, tmp_path / "bad.geff")
    with pytest.raises(VosEmbedError, match=message):
        object_tracks(bad)
    assert not (tmp_path / "bad.geff").exists()
