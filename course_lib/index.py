"""Nearest-neighbour search over embeddings, exact or approximate, behind one interface:
``add(ids, vectors)``, ``search(vectors, k) -> (ids, scores)``, ``save(path)``, ``load(path)``, ``len``.

Scores are inner products (cosine similarity for L2-normalised embeddings). ``HNSWIndex`` wraps hnswlib's
Hierarchical Navigable Small World graphs (Malkov & Yashunin, 2018, §4: M neighbours per node,
``ef_construction`` candidates while building, ``ef`` while searching). Exact search is the reference that
HNSW's recall is measured against.
"""

import hashlib
import json
import os
import pickle
import struct
from pathlib import Path

import hnswlib
import numpy as np
import torch

from course_lib.utils import atomic_path

M_RANGE = (2, 100)  # hnswlib's documented useful range of M; M=0 crashes hnswlib and M=1 cannot allocate a graph
SIDECAR_FORMAT = "course_lib.HNSWIndex/2"  # format 1 (no checksums) is refused: save the index again
# hnswlib's saveIndex header: offsetLevel0, max_elements, cur_element_count, size_data_per_element, label_offset,
# offsetData (size_t each), maxlevel (int), enterpoint (uint32), maxM, maxM0, M (size_t), mult (double), ef_construction
_HEADER = struct.Struct("<QQQQQQiIQQQdQ")
PARAM_NAMES = {"M", "ef_construction", "ef", "seed", "num_threads", "search_threads"}


def _check_int(name: str, value, low: int, high: int | None = None, hint: str = "") -> None:
    """``value`` must be an int (not a bool) in [low, high]; the error names the parameter, the value and the range."""
    allowed = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be {allowed}, got {value!r}{hint}")


def _check_hnsw_params(M, ef_construction, ef, seed, num_threads, search_threads) -> None:
    """The ranges hnswlib needs; checked before any value reaches it (bad ones crash or confuse it)."""
    _check_int("M", M, *M_RANGE, hint="; the paper uses 5-48, and this course 16 or 24")
    _check_int("ef_construction", ef_construction, 1, hint="; a few hundred is typical (200)")
    _check_int("ef", ef, 1, hint="; raise it for recall, lower it for speed (64)")
    _check_int("seed", seed, 0)
    _check_int("num_threads", num_threads, 1)
    if search_threads is not None:
        _check_int("search_threads", search_threads, 1, hint=" (or None for torch's thread count)")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _ids_sha256(ids: list) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


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
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
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
        """Read a file that ``save`` wrote. Checks: the file exists and torch can read it (``weights_only``), it
        holds ``dim``, ``ids`` and a (len(ids), dim) float tensor of vectors; anything else raises naming the file."""
        state = _read_exact_state(Path(path))
        index = cls(state["dim"])
        index.add(state["ids"], state["vectors"])
        return index


def _read_exact_state(path: Path) -> dict:
    """The checked contents of an ExactIndex file (see ``ExactIndex.load``)."""
    if not path.is_file():
        raise FileNotFoundError(f"no ExactIndex file at {path}; write one with ExactIndex.save")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(
            f"cannot read {path} as an ExactIndex file ({str(e).splitlines()[0] if str(e) else type(e).__name__}): "
            "it is truncated or not a file that ExactIndex.save wrote; save the index again"
        ) from e
    keys = sorted(state) if isinstance(state, dict) else None
    if keys is None or not {"dim", "ids", "vectors"} <= set(keys):
        hint = "; it looks like a training checkpoint: load it with course_lib.train.load_checkpoint" \
            if keys and "model" in keys else ""
        raise ValueError(f"{path} holds {f'the keys {keys}' if keys else type(state).__name__}, not an ExactIndex "
                         f"(a dict with 'dim', 'ids' and 'vectors', as ExactIndex.save writes){hint}")
    dim, ids, vectors = state["dim"], state["ids"], state["vectors"]
    _check_int(f"{path}: dim", dim, 1)
    if not isinstance(ids, list) or not isinstance(vectors, torch.Tensor) or not vectors.is_floating_point() \
            or tuple(vectors.shape) != (len(ids), dim):
        raise ValueError(f"{path}: expected a list of ids and a float tensor of shape (len(ids), dim) = "
                         f"({len(ids) if isinstance(ids, list) else '?'}, {dim}), got ids of type "
                         f"{type(ids).__name__} and vectors {getattr(vectors, 'shape', type(vectors).__name__)}; "
                         "the file is damaged or was not written by ExactIndex.save")
    return state


class HNSWIndex(_Base):
    """Approximate inner-product search with hnswlib. ``seed`` fixes the level assignment; building with
    ``num_threads=1`` (the default) makes the graph, and so every result, reproducible. Queries are
    independent of each other, so searching uses ``search_threads`` (default: torch's thread count, as exact
    search does) without changing any result.

    Checks (before hnswlib sees a value): ``M`` an int in [2, 100], ``ef_construction``, ``ef``, ``num_threads``
    and ``search_threads`` ints >= 1, ``seed`` an int >= 0."""

    def __init__(self, dim: int, M: int = 16, ef_construction: int = 200, ef: int = 64, seed: int = 0,
                 num_threads: int = 1, search_threads: int | None = None):
        _check_hnsw_params(M, ef_construction, ef, seed, num_threads, search_threads)
        super().__init__(dim)
        search_threads = search_threads or torch.get_num_threads()
        self.params = {"M": M, "ef_construction": ef_construction, "ef": ef, "seed": seed, "num_threads": num_threads,
                       "search_threads": search_threads}
        self._index = hnswlib.Index(space="ip", dim=dim)
        self._index.init_index(max_elements=1024, ef_construction=ef_construction, M=M, random_seed=seed)
        self._index.set_ef(ef)

    def set_ef(self, ef: int) -> None:
        """Search breadth (an int >= 1): higher is slower and closer to exact."""
        _check_int("ef", ef, 1)
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
        """Write ``path`` (the graph) and ``path.json`` (ids, parameters, the graph's sha256 and the ids' digest).

        Both are written to temporary names first and then renamed; when the second rename fails, the old
        sidecar is put back, so the files on disk are the old pair or the new one. (A crash between the two
        renames leaves a pair whose checksums disagree, which ``load`` refuses.)"""
        path = Path(path)
        side = _sidecar(path)
        for p in (path, side):
            if p.is_dir():
                raise IsADirectoryError(f"cannot save an HNSWIndex to {p}: it is a directory; give a file path")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_graph, tmp_side = (p.with_name(f"{p.name}.tmp{os.getpid()}") for p in (path, side))
        try:
            self._index.save_index(str(tmp_graph))
            meta = {"format": SIDECAR_FORMAT, "dim": self.dim, "count": len(self.ids), "ids": self.ids,
                    "params": self.params, "graph_sha256": _sha256(tmp_graph), "ids_sha256": _ids_sha256(self.ids)}
            tmp_side.write_text(json.dumps(meta))
            _replace_pair(tmp_graph, path, tmp_side, side)
        finally:
            for tmp in (tmp_graph, tmp_side):
                tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path) -> "HNSWIndex":
        """Read a pair that ``save`` wrote. Checks, before hnswlib reads a byte: both files exist, the sidecar is
        well-formed JSON of the current format, the graph's sha256 is the one the sidecar recorded (a truncated,
        damaged or replaced graph would crash hnswlib), the graph header's dim, element count and M match the
        sidecar, and the ids match their digest (ids edited or reordered would answer with wrong ids)."""
        path = Path(path)
        meta = _read_sidecar(path)
        index = cls(meta["dim"], **meta["params"])
        graph = hnswlib.Index(space="ip", dim=meta["dim"])  # fresh, not init_index'ed: load_index initialises it
        graph.load_index(str(path), max_elements=max(meta["count"], 1))
        graph.set_ef(meta["params"]["ef"])
        index._index, index.ids = graph, list(meta["ids"])
        return index


def _replace_pair(tmp_graph: Path, path: Path, tmp_side: Path, side: Path) -> None:
    """Rename the sidecar, then the graph, into place; if the graph's rename fails, restore the old sidecar."""
    old_side = side.read_bytes() if side.is_file() else None
    os.replace(tmp_side, side)
    try:
        os.replace(tmp_graph, path)
    except BaseException:
        if old_side is None:
            side.unlink(missing_ok=True)
        else:
            with atomic_path(side) as tmp:
                tmp.write_bytes(old_side)
        raise


def _read_sidecar(path: Path) -> dict:
    """The checked sidecar of the graph at ``path`` (see ``HNSWIndex.load``)."""
    side = _sidecar(path)
    for p, what in ((path, "graph"), (side, "sidecar")):
        if not p.is_file():
            raise FileNotFoundError(f"no HNSW {what} file at {p}; HNSWIndex.save writes {path} and {side}")
    try:
        meta = json.loads(side.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{side} is not valid JSON ({e}); the sidecar is damaged: save the index again") from None
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise ValueError(f"{side} is not a sidecar of format {SIDECAR_FORMAT!r} (an older course_lib wrote it without "
                         "checksums, or it is another file); build the index and save it again")
    missing = {"dim", "count", "ids", "params", "graph_sha256", "ids_sha256"} - set(meta)
    if missing or not isinstance(meta["ids"], list) or not isinstance(meta["params"], dict):
        raise ValueError(f"{side} lacks {sorted(missing) or 'a list of ids and a dict of params'}; save the index again")
    _check_int(f"{side}: dim", meta["dim"], 1)
    if set(meta["params"]) != PARAM_NAMES:
        raise ValueError(f"{side} has params {sorted(meta['params'])}, expected {sorted(PARAM_NAMES)}; save the index again")
    if _sha256(path) != meta["graph_sha256"]:
        raise ValueError(f"{path} does not match the sha256 recorded in {side}: the graph is truncated, damaged or "
                         "from another save (a save was interrupted?); save the index again")
    _check_header(path, side, meta)
    if len(meta["ids"]) != meta["count"] or _ids_sha256(meta["ids"]) != meta["ids_sha256"]:
        raise ValueError(f"the ids in {side} do not match their recorded count and digest (edited or reordered?); "
                         "they would answer with the wrong ids: save the index again")
    return meta


def _check_header(path: Path, side: Path, meta: dict) -> None:
    """The graph's own header must agree with the sidecar on dim, element count and M."""
    with open(path, "rb") as f:
        head = f.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise ValueError(f"{path} is {len(head)} bytes, shorter than an hnswlib header; save the index again")
    fields = _HEADER.unpack(head)
    count, label_offset, offset_data, m = fields[2], fields[4], fields[5], fields[10]
    graph = {"dim": (label_offset - offset_data) // 4, "count": count, "M": m}
    recorded = {"dim": meta["dim"], "count": meta["count"], "M": meta["params"].get("M")}
    if graph != recorded:
        raise ValueError(f"{side} records {recorded} but the graph {path} holds {graph}; the two files do not "
                         "belong together: save the index again")


def recall_vs_exact(approx_ids: list[list[str]], exact_ids: list[list[str]], k: int = 10) -> float:
    """Fraction of the exact top-k that the approximate top-k also returns (ANN recall@k). Checks: ``k`` an
    int >= 1; the same, non-zero number of lists."""
    _check_int("k", k, 1, hint=" (recall@k divides by k)")
    if len(approx_ids) != len(exact_ids) or not exact_ids:
        raise ValueError("need the same, non-zero number of approximate and exact result lists")
    return float(np.mean([len(set(a[:k]) & set(e[:k])) / k for a, e in zip(approx_ids, exact_ids)]))
