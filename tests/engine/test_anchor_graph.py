import numpy as np
import pytest

from napari_vosembed.engine.anchor_graph import AnchorGraph


def two_arcs(n=2000, h=0.3):
    """Two parallel half circles, z = +h (label 1) and z = -h (label 2), L2-normalised: the far end
    of arc 1 lies closer to arc 2's far end than to arc 1's own start."""
    theta = np.linspace(0, np.pi, n)
    arcs = [np.stack([np.cos(theta), np.sin(theta), np.full(n, z)], 1) for z in (h, -h)]
    x = np.concatenate(arcs).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.repeat([1, 2], n)


def test_labels_follow_the_data_where_the_nearest_reference_misleads():
    x, truth = two_arcs()
    seeds = np.array([0, 2 * 2000 - 1])  # arc 1 at theta = 0, arc 2 at theta = pi
    nearest = np.array([1, 2])[np.argmax(x @ x[seeds].T, 1)]
    assert (nearest == truth).mean() < 0.8  # arc 1's far half is nearer arc 2's reference

    graph = AnchorGraph(x, anchors=100)
    values = np.array([1, 2])
    scores = graph.scores(graph.propagate(x[seeds], truth[seeds], values), slice(None))
    assert scores.shape == (len(x), 2) and np.allclose(scores.sum(1), 1)
    assert (values[scores.argmax(1)] == truth).mean() > 0.99


def test_cells_are_read_out_by_index_as_by_slice():
    x, truth = two_arcs(n=300)
    graph = AnchorGraph(x, anchors=64)
    anchor_scores = graph.propagate(x[[5, 400]], truth[[5, 400]], np.array([1, 2]))
    rows = np.array([10, 20, 350])
    assert np.array_equal(graph.scores(anchor_scores, rows), graph.scores(anchor_scores, slice(None))[rows])
    with pytest.raises(IndexError):
        graph.scores(anchor_scores, np.array([len(x)]))


def test_wide_embeddings_are_projected_and_give_the_same_labels():
    x, truth = two_arcs()
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(512, 512)))[0][:, :3]
    wide = (x @ rotation.T).astype(np.float32)  # the arcs in 512 dimensions, inner products kept
    seeds = np.array([0, 2 * 2000 - 1])
    graph = AnchorGraph(wide, anchors=100)
    assert graph.projection.shape == (512, 128)
    scores = graph.scores(graph.propagate(wide[seeds], truth[seeds], np.array([1, 2])), slice(None))
    assert (np.array([1, 2])[scores.argmax(1)] == truth).mean() > 0.99
    assert AnchorGraph(x, anchors=100).projection is None
