"""Nearest-neighbour search over embeddings, exact or approximate, behind one interface:
``add(ids, vectors)``, ``search(vectors, k) -> (ids, scores)``, ``save(path)``, ``load(path)``, ``len``.

Scores are inner products (cosine similarity for L2-normalised embeddings). ``HNSWIndex`` wraps hnswlib's
Hierarchical Navigable Small World graphs (Malkov & Yashunin, 2018, §4: M neighbours per node,
``ef_construction`` candidates while building, ``ef`` while searching). Exact search is the reference that
HNSW's recall is measured against.
"""

import json
from pathlib import Path

import hnswlib
import numpy as np
import torch

from course_lib.utils import atomic_path


def _as_matrix(vectors, dim: int, what: str = "vectors") -> np.ndarray:
    arr = vectors.detach().cpu().numpy() if isinstance(vectors, torch.Tensor) else np.asarray(vectors)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (N, {dim}), got shape {tuple(arr.shape)}")
    if arr.shape[1] != dim:
        raise ValueError(
            f"{what} have width {arr.shape[1]} but this index holds {dim}-dimensional vectors; "
            "encode with the same model that built the index"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contain NaN or inf")
    return np.ascontiguousarray(arr, dtype=np.float32)


class _Base:
    def __init__(self, dim: int):
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.dim = dim
        self.ids: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    def _check_add(self, ids, vectors) -> np.ndarray:
        ids = list(ids)
        arr = _as_matrix(vectors, self.dim)
        if len(ids) != arr.shape[0]:
            raise ValueError(f"got {len(ids)} ids for {arr.shape[0]} vectors; give one id per vector")
        if len(set(ids)) != len(ids) or set(ids) & set(self.ids):
            raise ValueError("ids must be unique (within the call and against ids already in the index)")
        return arr

    def _check_search(self, vectors, k: int) -> np.ndarray:
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if k > len(self):
            raise ValueError(f"k={k} is larger than the index ({len(self)} vectors); ask for at most {len(self)}")
        arr = _as_matrix(vectors, self.dim, "query vectors")
        if arr.shape[0] == 0:
            raise ValueError("no query vectors to search with (got 0 rows)")
        return arr


class ExactIndex(_Base):
    """Brute-force inner-product search: every query against every vector, top k by ``torch.topk``."""

    def __init__(self, dim: int):
        super().__init__(dim)
        self.vectors = torch.empty(0, dim)

    def add(self, ids, vectors) -> None:
        arr = self._check_add(ids, vectors)
        self.vectors = torch.cat([self.vectors, torch.from_numpy(arr)])  # (N, D)
        self.ids.extend(ids)

    def search(self, vectors, k: int, chunk: int = 1024) -> tuple[list[list[str]], np.ndarray]:
        """Top-k ids and scores, best first; ties go to the lower insertion index."""
        q = torch.from_numpy(self._check_search(vectors, k))  # (Q, D)
        out_ids, out_scores = [], []
        for start in range(0, q.shape[0], chunk):
            scores = q[start : start + chunk] @ self.vectors.T  # (q, N)
            top = torch.topk(scores, k, dim=1)  # values, indices: (q, k)
            out_scores.append(top.values.numpy())
            out_ids.extend([[self.ids[j] for j in row] for row in top.indices.tolist()])
        return out_ids, np.concatenate(out_scores)

    def save(self, path) -> None:
        with atomic_path(path) as tmp:
            torch.save({"dim": self.dim, "ids": self.ids, "vectors": self.vectors}, tmp)

    @classmethod
    def load(cls, path) -> "ExactIndex":
        state = torch.load(Path(path), weights_only=True)
        index = cls(state["dim"])
        index.add(state["ids"], state["vectors"])
        return index


class HNSWIndex(_Base):
    """Approximate inner-product search with hnswlib. ``seed`` fixes the level assignment; building with
    ``num_threads=1`` (the default) makes the graph, and so every result, reproducible. Queries are
    independent of each other, so searching uses ``search_threads`` (default: torch's thread count, as exact
    search does) without changing any result."""

    def __init__(self, dim: int, M: int = 16, ef_construction: int = 200, ef: int = 64, seed: int = 0,
                 num_threads: int = 1, search_threads: int | None = None):
        super().__init__(dim)
        search_threads = search_threads or torch.get_num_threads()
        self.params = {"M": M, "ef_construction": ef_construction, "ef": ef, "seed": seed, "num_threads": num_threads,
                       "search_threads": search_threads}
        self._index = hnswlib.Index(space="ip", dim=dim)
        self._index.init_index(max_elements=1024, ef_construction=ef_construction, M=M, random_seed=seed)
        self._index.set_ef(ef)

    def set_ef(self, ef: int) -> None:
        """Search breadth: higher is slower and closer to exact."""
        self.params["ef"] = ef
        self._index.set_ef(ef)

    def add(self, ids, vectors) -> None:
        arr = self._check_add(ids, vectors)
        needed = len(self) + arr.shape[0]
        if needed > self._index.get_max_elements():
            self._index.resize_index(max(needed, 2 * self._index.get_max_elements()))
        self._index.set_num_threads(self.params["num_threads"])
        self._index.add_items(arr, np.arange(len(self), needed))
        self.ids.extend(ids)

    def search(self, vectors, k: int) -> tuple[list[list[str]], np.ndarray]:
        """Approximate top-k ids and scores, best first (ef is raised to k when k is larger)."""
        arr = self._check_search(vectors, k)
        self._index.set_ef(max(self.params["ef"], k))
        self._index.set_num_threads(self.params["search_threads"])
        try:
            labels, dist = self._index.knn_query(arr, k=k)  # (Q, k) each; hnswlib's ip distance is 1 - <q, v>
        except RuntimeError as e:  # the graph walk found fewer than k neighbours
            raise ValueError(
                f"HNSW could not return k={k} neighbours from {len(self)} vectors ({e}); ask for fewer, raise M, "
                "or use ExactIndex for k close to the index size"
            ) from None
        finally:
            self._index.set_ef(self.params["ef"])
        return [[self.ids[j] for j in row] for row in labels.tolist()], (1.0 - dist).astype(np.float32)

    def save(self, path) -> None:
        """Write ``path`` (the graph) and ``path.json`` (ids and parameters)."""
        path = Path(path)
        with atomic_path(path) as tmp:
            self._index.save_index(str(tmp))
        with atomic_path(path.with_name(path.name + ".json")) as tmp:
            tmp.write_text(json.dumps({"dim": self.dim, "ids": self.ids, "params": self.params}))

    @classmethod
    def load(cls, path) -> "HNSWIndex":
        path = Path(path)
        meta = json.loads(path.with_name(path.name + ".json").read_text())
        index = cls(meta["dim"], **meta["params"])
        index._index.load_index(str(path), max_elements=max(len(meta["ids"]), 1))
        index._index.set_ef(meta["params"]["ef"])
        index.ids = list(meta["ids"])
        return index


def recall_vs_exact(approx_ids: list[list[str]], exact_ids: list[list[str]], k: int = 10) -> float:
    """Fraction of the exact top-k that the approximate top-k also returns (ANN recall@k)."""
    if len(approx_ids) != len(exact_ids) or not exact_ids:
        raise ValueError("need the same, non-zero number of approximate and exact result lists")
    return float(np.mean([len(set(a[:k]) & set(e[:k])) / k for a, e in zip(approx_ids, exact_ids)]))
