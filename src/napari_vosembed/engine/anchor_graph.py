"""Label propagation over every cell of a video through an anchor graph.

With a few dozen clicks as references, a cell's k nearest references decide its label alone, and
a region unlike any click goes to whichever click it happens to resemble most. Label propagation
(Zhou, Bousquet, Lal, Weston, Schoelkopf, NIPS 2004, "Learning with local and global consistency")
lets the unlabelled cells carry the labels along the video's own structure instead:
F* = (I - alpha S)^{-1} Y, S the symmetrically normalised affinity with a zero diagonal (the limit
of F(t+1) = alpha S F(t) + (1 - alpha) Y, up to a constant factor). A graph over every cell (half
a million for 100 frames at 480p) is too large, so the propagation runs over an anchor graph (Liu,
He, Chang, ICML 2010, "Large graph construction for scalable semi-supervised learning"): m anchors
(spherical k-means of the cells' embeddings), each cell tied to its s nearest anchors with weights
Z (rows summing to 1, a kernel on the similarity), and the anchors' affinity
W = Lambda^{-1/2} Z^T Z Lambda^{-1/2} (Lambda = diag(Z^T 1)), which has the nonzero spectrum of
their cells' adjacency Z Lambda^{-1} Z^T. The references enter as anchor weights (each label's
references with equal total mass), propagate among the anchors, and come back to every cell
through Z. Embeddings wider than `dims` (the raw ISNet features, 1,408 channels) are first
projected onto their `dims` leading principal directions (uncentred, so inner products are what
is kept) and normalised again: the k-means then costs what it costs for a trained head.
"""

from __future__ import annotations

import numpy as np

from .retrieval import faiss

#: Anchors, anchors per cell, propagation strength and kernel bandwidth (chosen on a validation
#: split with the click robot, docs/pml.md).
ANCHORS, ANCHORS_PER_CELL, ALPHA, BANDWIDTH = 1024, 5, 0.9, 0.05
#: Wider embeddings are projected to this many dimensions, fitted on this many cells (the raw
#: features' graph in a quarter of the time, the same labels on a validation split: docs/pml.md).
PROJECTED_DIMS, PROJECTION_SAMPLE = 128, 20000


class AnchorGraph:
    """The anchor graph of a video's cells; `propagate` turns labelled references into label
    scores, `scores` reads them out for any cells."""

    def __init__(self, embeddings: np.ndarray, anchors: int = ANCHORS, per_cell: int = ANCHORS_PER_CELL,
                 alpha: float = ALPHA, bandwidth: float = BANDWIDTH, dims: int = PROJECTED_DIMS, seed: int = 0,
                 chunk: int = 65536):
        """`embeddings`: (N, d) L2-normalised cell embeddings (any float dtype; read in chunks)."""
        n, d = embeddings.shape
        m = int(min(anchors, max(2, n // 40)))  # faiss asks for 39 training points per centroid
        rng = np.random.default_rng(seed)
        self.projection = None
        if d > dims:
            fit = np.asarray(embeddings[rng.choice(n, min(n, PROJECTION_SAMPLE), replace=False)], np.float32)
            directions = np.linalg.eigh(fit.T @ fit)[1]  # eigenvalues ascending
            self.projection = np.ascontiguousarray(directions[:, ::-1][:, :dims])
            d = dims
        sample = self._project(embeddings[rng.choice(n, min(n, 100 * m), replace=False)])
        kmeans = faiss.Kmeans(d, m, niter=15, spherical=True, seed=seed + 1, verbose=False)
        kmeans.train(sample)
        self._index = faiss.IndexFlatIP(d)
        self._index.add(kmeans.centroids)
        self.per_cell, self.bandwidth = min(per_cell, m), bandwidth
        self.anchors = np.empty((n, self.per_cell), np.int32)
        self.weights = np.empty((n, self.per_cell), np.float32)
        w, lam = np.zeros(m * m), np.full(m, 1e-8)
        for start in range(0, n, chunk):
            rows = slice(start, min(n, start + chunk))
            a, z = self.anchors[rows], self.weights[rows]
            a[:], z[:] = self._tie(embeddings[rows])
            w += np.bincount((a[:, :, None].astype(np.int64) * m + a[:, None, :]).reshape(-1),
                             (z[:, :, None] * z[:, None, :]).reshape(-1), m * m)  # Z^T Z
            lam += np.bincount(a.reshape(-1), z.reshape(-1), m)  # Z^T 1
        w = w.reshape(m, m) / np.sqrt(np.outer(lam, lam))
        np.fill_diagonal(w, 0)
        degree = np.sqrt(w.sum(1) + 1e-12)
        self._propagator = np.linalg.inv(np.eye(m) - alpha * w / np.outer(degree, degree))
        self.m = m

    def _project(self, embeddings: np.ndarray) -> np.ndarray:
        """Rows in the graph's space: float32, projected and normalised again when the graph projects."""
        x = np.ascontiguousarray(embeddings, np.float32)
        if self.projection is None:
            return x
        x = x @ self.projection
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def _tie(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's `per_cell` nearest anchors and their kernel weights exp((s - s_max) / bandwidth), normalised."""
        sims, idx = self._index.search(self._project(embeddings), self.per_cell)
        w = np.exp((sims - sims[:, :1]) / self.bandwidth)
        return idx.astype(np.int32), (w / w.sum(1, keepdims=True)).astype(np.float32)

    def propagate(self, embeddings: np.ndarray, labels: np.ndarray, values: np.ndarray) -> np.ndarray:
        """(m, L) anchor scores F* = (I - alpha S)^{-1} Y from references (`embeddings`, `labels`);
        column l of Y is the mean anchor weight of the references labelled `values[l]`."""
        idx, w = self._tie(embeddings)
        seeds = np.zeros((self.m, len(values)))
        for i, v in enumerate(values):
            mine = labels == v
            np.add.at(seeds[:, i], idx[mine].reshape(-1), w[mine].reshape(-1) / max(int(mine.sum()), 1))
        return self._propagator @ seeds

    def scores(self, anchor_scores: np.ndarray, cells: np.ndarray | slice) -> np.ndarray:
        """(len(cells), L) label scores of `cells` (rows of the graph's embeddings) from `propagate`'s
        anchor scores, clipped at 0 and normalised per cell (uniform where nothing reached it)."""
        out = np.einsum("ns,nsl->nl", self.weights[cells], anchor_scores[self.anchors[cells]])
        out = np.maximum(out, 0)
        total = out.sum(1, keepdims=True)
        return np.where(total > 0, out / np.where(total > 0, total, 1), 1 / out.shape[1]).astype(np.float32)
