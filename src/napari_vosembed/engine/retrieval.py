"""The reference pool and its exact k-nearest-neighbour search (faiss).

PML (Chen et al. 2018, Sec. 3.2) labels every pixel with the majority label of its k nearest
reference pixels in embedding space. Embeddings are L2-normalised, so the nearest neighbours are
those of largest inner product: an exact `faiss.IndexFlatIP`, moved to the GPU when the method
runs on CUDA and faiss-gpu is installed. faiss is imported after `configure_openblas`, which
lets its bundled OpenBLAS use the kernels of the CPU it runs on (`_blas`).
"""

from __future__ import annotations

import numpy as np
import torch

from ._blas import configure_openblas

configure_openblas()

import faiss  # noqa: E402  (OpenBLAS reads OPENBLAS_CORETYPE when faiss loads it)


class ReferencePool:
    """Labelled reference embeddings in groups (one per prompt, or per adapted frame).

    Groups can be removed (a deleted click), so the result follows the user's edits.
    """

    def __init__(self, dim: int, device: str | torch.device = "cpu"):
        self.dim = dim
        self.device = torch.device(device)
        self.embeddings = np.zeros((0, dim), np.float32)
        self.labels = np.zeros(0, np.int64)
        self.groups = np.zeros(0, np.int64)
        self.version = 0  # counts the edits, for what callers derive from the pool
        self._index = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def label_values(self) -> np.ndarray:
        """The distinct labels in the pool, ascending (0, the background, first when present)."""
        return np.unique(self.labels)

    def add(self, embeddings: np.ndarray, labels: np.ndarray, group: int = 0) -> None:
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32).reshape(-1, self.dim)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(embeddings) != len(labels):
            raise ValueError(f"{len(embeddings)} embeddings but {len(labels)} labels")
        self.embeddings = np.concatenate([self.embeddings, embeddings])
        self.labels = np.concatenate([self.labels, labels])
        self.groups = np.concatenate([self.groups, np.full(len(labels), group, np.int64)])
        self.version += 1
        if self._index is not None:
            self._index.add(embeddings)

    def remove(self, group: int) -> int:
        """Drop every reference of `group`; returns how many were removed."""
        keep = self.groups != group
        removed = int((~keep).sum())
        if removed:
            self.embeddings, self.labels, self.groups = self.embeddings[keep], self.labels[keep], self.groups[keep]
            self.version += 1
            self._index = None
        return removed

    def _search_index(self):
        if self._index is None:
            index = faiss.IndexFlatIP(self.dim)
            if self.device.type == "cuda" and hasattr(faiss, "StandardGpuResources"):
                index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), self.device.index or 0, index)
            index.add(self.embeddings)
            self._index = index
        return self._index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Similarities and labels of the `k` nearest references of each query, nearest first."""
        if len(self) == 0:
            raise ValueError("the reference pool is empty")
        k = min(k, len(self))
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        sims, idx = self._search_index().search(queries, k)
        return sims, self.labels[idx]

    def vote(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Majority vote of the k nearest references (Sec. 3.2).

        Returns `scores (Q, L)`, the fraction of neighbours with each of `label_values` (ties
        broken towards the nearest neighbour's label), and `unanimous (Q,)`, True where all k
        neighbours agree: the pixels online adaptation may add to the pool.
        """
        _, neighbours = self.search(queries, k)
        values = self.label_values
        scores = np.stack([(neighbours == v).mean(1) for v in values], axis=1).astype(np.float32)
        scores[np.arange(len(neighbours)), np.searchsorted(values, neighbours[:, 0])] += 1e-3
        unanimous = (neighbours == neighbours[:, :1]).all(1)
        return scores, unanimous
