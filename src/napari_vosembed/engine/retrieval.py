"""The reference pool and its exact k-nearest-neighbour search.

PML (Chen et al. 2018, Sec. 3.2) labels every pixel with the majority label of its k nearest
reference pixels in embedding space. Embeddings are L2-normalised, so the nearest neighbours are
those of largest inner product. On the CPU the search is an exact `faiss.IndexFlatIP`; on a GPU it
is `knn` in torch (one matrix product and a top-k per chunk of queries), so the references and the
vote stay on the device and faiss-gpu is not needed. faiss is imported after `configure_openblas`,
which lets its bundled OpenBLAS use the kernels of the CPU it runs on (`_blas`).
"""

from __future__ import annotations

import numpy as np
import torch

from ._blas import configure_openblas

configure_openblas()

import faiss  # noqa: E402  (OpenBLAS reads OPENBLAS_CORETYPE when faiss loads it)

#: Bytes of query-by-reference similarities `knn` holds at once.
KNN_CHUNK_BYTES = 1 << 28


def knn(references: torch.Tensor, queries: torch.Tensor, k: int, chunk_bytes: int = KNN_CHUNK_BYTES
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k largest inner products: `(sims, idx)`, each (Q, k), nearest first. Queries go in
    chunks so that at most `chunk_bytes` of similarities exist at once."""
    rows = max(1, chunk_bytes // (4 * max(len(references), 1)))
    sims, idx = [], []
    for start in range(0, len(queries), rows):
        top = torch.topk(queries[start : start + rows] @ references.T, k, dim=1)
        sims.append(top.values)
        idx.append(top.indices)
    return torch.cat(sims), torch.cat(idx)


class ReferencePool:
    """Labelled reference embeddings in groups (one per prompt, or per adapted frame).

    Groups can be removed (a deleted click), so the result follows the user's edits. `search`
    uses faiss (`search="faiss"`, the default on a CPU) or `knn` on the pool's device
    (`"torch"`, the default on a GPU); both are exact.
    """

    def __init__(self, dim: int, device: str | torch.device = "cpu", search: str | None = None):
        self.dim = dim
        self.device = torch.device(device)
        self.backend = search or ("torch" if self.device.type == "cuda" else "faiss")
        if self.backend not in ("faiss", "torch"):
            raise ValueError(f"search must be 'faiss' or 'torch', not {search!r}")
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
        if self._index is not None and self.backend == "faiss":
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
        """The faiss index, or for `knn` the references and their labels on the device."""
        if self._index is None:
            if self.backend == "torch":
                self._index = (torch.from_numpy(self.embeddings).to(self.device),
                               torch.from_numpy(self.labels).to(self.device))
            else:
                self._index = faiss.IndexFlatIP(self.dim)
                self._index.add(self.embeddings)
        elif self.backend == "torch" and len(self._index[0]) < len(self):
            refs, labels = self._index
            added = slice(len(refs), len(self))
            self._index = (torch.cat([refs, torch.from_numpy(self.embeddings[added]).to(self.device)]),
                           torch.cat([labels, torch.from_numpy(self.labels[added]).to(self.device)]))
        return self._index

    def search(self, queries: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Similarities and labels of the `k` nearest references of each query, nearest first."""
        sims, labels = self._search(queries, k)
        return np.asarray(torch.as_tensor(sims).cpu()), np.asarray(torch.as_tensor(labels).cpu())

    def _search(self, queries, k: int):
        if len(self) == 0:
            raise ValueError("the reference pool is empty")
        k = min(k, len(self))
        if self.backend == "torch":
            refs, labels = self._search_index()
            queries = torch.as_tensor(queries).to(self.device, torch.float32).reshape(-1, self.dim)
            sims, idx = knn(refs, queries, k)
            return sims, labels[idx]
        queries = np.ascontiguousarray(torch.as_tensor(queries).cpu(), dtype=np.float32).reshape(-1, self.dim)
        sims, idx = self._search_index().search(queries, k)
        return torch.from_numpy(sims), torch.from_numpy(self.labels[idx])

    def vote(self, queries: np.ndarray | torch.Tensor, k: int, host: bool = True) -> tuple:
        """Majority vote of the k nearest references (Sec. 3.2), computed where the search ran.

        Returns `scores (Q, L)`, the fraction of neighbours with each of `label_values` (ties
        broken towards the nearest neighbour's label), and `unanimous (Q,)`, True where all k
        neighbours agree: the pixels online adaptation may add to the pool. numpy arrays, or with
        `host` False tensors where the search ran (on a GPU they stay there).
        """
        _, neighbours = self._search(queries, k)
        values = torch.from_numpy(self.label_values).to(neighbours.device)
        scores = (neighbours[:, :, None] == values).float().mean(1)
        nearest = torch.searchsorted(values, neighbours[:, 0].contiguous())
        scores[torch.arange(len(neighbours), device=scores.device), nearest] += 1e-3
        unanimous = (neighbours == neighbours[:, :1]).all(1)
        return (scores.cpu().numpy(), unanimous.cpu().numpy()) if host else (scores, unanimous)
