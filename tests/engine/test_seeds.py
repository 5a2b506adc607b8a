"""The embedding graph's seeds, regions and minimax distances (engine.seeds)."""

import numpy as np

from napari_vosembed.engine.seeds import (candidates, edge_map, edge_weights, grid_edges, minimax, regions,
                                          sample_seeds)


def _brute_minimax(weights, a, b, n, seeds):
    """Minimax distance to the nearest seed by a Floyd-Warshall over (min, max)."""
    d = np.full((n, n), np.inf)
    np.fill_diagonal(d, 0)
    d[a, b] = d[b, a] = weights
    for k in range(n):
        d = np.minimum(d, np.maximum(d[:, k:k + 1], d[k:k + 1, :]))
    return d[:, seeds].min(1)


def test_minimax_equals_a_brute_force_reference_on_a_small_graph():
    rng = np.random.default_rng(3)
    shape = (7, 9)
    a, b = grid_edges(shape)
    for trial in range(5):
        weights = rng.random(len(a)).round(2)  # ties included
        seeds = rng.choice(63, 1 + trial, replace=False)
        expected = _brute_minimax(weights, a, b, 63, seeds)
        np.testing.assert_allclose(minimax(weights, a, b, shape, seeds).ravel(), expected, atol=1e-5)


def _two_region_embedding(shape=(20, 30)):
    """An embedding that is one value left of column 12 and another right of it, plus noise."""
    rng = np.random.default_rng(0)
    emb = np.zeros((*shape, 4), np.float32)
    emb[:, 12:, 0] = 1.0
    emb += rng.normal(0, 0.01, emb.shape).astype(np.float32)
    return emb.reshape(-1, 4)


def test_edge_map_candidates_and_seeds_sit_inside_regions_and_split_the_frame():
    shape = (20, 30)
    emb = _two_region_embedding(shape)
    a, b = grid_edges(shape)
    w = edge_weights(emb, a, b)
    edges = edge_map(w, a, b, shape)
    assert edges[:, 11:13].min() > 0.9 and edges[:, :10].max() < 0.1  # the edge is where the regions meet
    cells = candidates(edges, 5)
    assert not np.isin(cells % 30, [11, 12]).any()
    objectness = np.zeros(shape)
    objectness[:, 20:] = 1
    seeds = sample_seeds(cells, emb, objectness, 2)
    assert seeds[0] % 30 >= 12 and seeds[1] % 30 < 12  # most object-like first, then the farthest
    labels = regions(w, a, b, shape, seeds)
    assert (labels[:, 12:] == 0).all() and (labels[:, :12] == 1).all()
    d = minimax(w, a, b, shape, seeds[:1])
    assert d[:, 12:].max() < 0.1 and d[:, :12].min() > 0.9  # crossing the edge costs its weight
