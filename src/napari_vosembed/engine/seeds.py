"""Seeds and regions on a frame's embedding graph (Li et al., CVPR 2018, Sec. 3.2 and 3.4).

The graph joins each grid cell to its four neighbours, weighted by the Euclidean distance of their
embeddings. Its edge map (Eq. 4) is, per cell, the largest weight to a neighbour; candidate points
are the cells where the edge map is lowest in an n x n window (Eq. 5), the inside of regions;
`sample_seeds` picks N_S diverse ones among them (Eq. 6). `regions` gives every cell the seed at the
shortest geodesic distance, `minimax` the bottleneck distance (the largest weight on the best path,
d(p, s) of Eq. 11) to the nearest of some seeds: on the minimum spanning tree, whose paths are the
minimax paths, with a virtual root joined to those seeds, by pointer jumping (log-depth vectorised
sweeps, no per-seed search).
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order, dijkstra, minimum_spanning_tree

#: A weight added to every edge: scipy's sparse graphs read a zero weight as no edge.
EPSILON = 1e-6


def grid_edges(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The 4-neighbour edges of an (h, w) grid as two arrays of flat cell indices (each edge once)."""
    h, w = shape
    index = np.arange(h * w).reshape(h, w)
    a = np.concatenate([index[:, :-1].ravel(), index[:-1, :].ravel()])
    b = np.concatenate([index[:, 1:].ravel(), index[1:, :].ravel()])
    return a, b


def edge_weights(embedding: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """||f_a - f_b|| for the edges (a, b) of an (h*w, d) embedding."""
    return np.linalg.norm(embedding[a] - embedding[b], axis=1)


def edge_map(weights: np.ndarray, a: np.ndarray, b: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Eq. 4: each cell's largest edge weight to its neighbours, (h, w)."""
    out = np.zeros(shape[0] * shape[1], np.float32)
    np.maximum.at(out, a, weights)
    np.maximum.at(out, b, weights)
    return out.reshape(shape)


def candidates(edges: np.ndarray, window: int) -> np.ndarray:
    """Eq. 5: flat indices of the cells whose edge-map value is the lowest in the `window` x `window`
    window around them."""
    lowest = ndi.minimum_filter(edges, size=window, mode="nearest")
    return np.flatnonzero(edges.ravel() <= lowest.ravel())


def sample_seeds(cells: np.ndarray, embedding: np.ndarray, objectness: np.ndarray, n: int) -> np.ndarray:
    """Eq. 6: `n` of the candidate `cells`, the first the most object-like, each next one the
    candidate farthest in embedding from the seeds chosen so far (farthest-point sampling)."""
    cells = np.asarray(cells)
    features = embedding[cells]
    chosen = [int(np.argmax(objectness.ravel()[cells]))]
    nearest = np.linalg.norm(features - features[chosen[0]], axis=1)
    while len(chosen) < min(n, len(cells)):
        nxt = int(np.argmax(nearest))
        if nearest[nxt] <= 0:
            break
        chosen.append(nxt)
        nearest = np.minimum(nearest, np.linalg.norm(features - features[nxt], axis=1))
    return cells[chosen]


def _graph(weights: np.ndarray, a: np.ndarray, b: np.ndarray, n: int) -> sp.csr_matrix:
    return sp.coo_matrix((weights + EPSILON, (a, b)), shape=(n, n)).tocsr()


def regions(weights: np.ndarray, a: np.ndarray, b: np.ndarray, shape: tuple[int, int], seeds: np.ndarray
            ) -> np.ndarray:
    """(h, w) index into `seeds` of the seed each cell is geodesically closest to (one multi-source
    Dijkstra on the embedding graph)."""
    n = shape[0] * shape[1]
    _, _, sources = dijkstra(_graph(weights, a, b, n), directed=False, indices=seeds, min_only=True,
                             return_predecessors=True)
    rank = np.full(n, -1)
    rank[seeds] = np.arange(len(seeds))
    return rank[sources].reshape(shape)


def minimax(weights: np.ndarray, a: np.ndarray, b: np.ndarray, shape: tuple[int, int], seeds: np.ndarray
            ) -> np.ndarray:
    """(h, w) minimax distance of every cell to the nearest of `seeds`: the smallest, over paths, of
    the largest edge weight on the path (module docstring)."""
    n = shape[0] * shape[1]
    root = n
    seeds = np.asarray(seeds)
    graph = sp.coo_matrix((np.concatenate([weights + EPSILON, np.full(len(seeds), EPSILON / 2)]),
                           (np.concatenate([a, np.full(len(seeds), root)]), np.concatenate([b, seeds]))),
                          shape=(n + 1, n + 1))
    tree = minimum_spanning_tree(graph)
    tree = (tree + tree.T).tocsr()
    _, parent = breadth_first_order(tree, root, directed=False, return_predecessors=True)
    parent[root] = root
    parent[parent < 0] = root  # cells the graph does not reach (none on a grid)
    up = np.asarray(tree[np.arange(n + 1), parent]).ravel()
    for _ in range(int(np.ceil(np.log2(n + 1))) + 1):
        up = np.maximum(up, up[parent])
        parent = parent[parent]
    return np.maximum(up[:n] - EPSILON, 0).reshape(shape)
