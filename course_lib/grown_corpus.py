"""A corpus grown from real embeddings, for measuring search at sizes the data set does not reach.

``real_embeddings`` trains the course's ``in_batch`` encoder once per preset and caches its unit-length
embeddings of the corpus and the test queries (``.cache/scaling/``). ``grow_corpus`` turns them into a corpus of
any size: below the real size a seeded random subset; above, all real vectors plus perturbed copies, a copy of
``x`` being ``(x + e) / |x + e|``, ``e ~ N(0, (noise * d(x))^2 / D * I)``, ``d(x)`` the distance from ``x`` to
its nearest other real vector (``nearest_neighbour_distances``), so ``noise=1`` puts a copy about as far from
its source as the source's nearest neighbour. ``course_lib.search_scaling`` times exact search and HNSW on it.
"""

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from course_lib.index import _check_int
from course_lib.utils import atomic_path, cache_dir

EMBEDDINGS_FORMAT = "course_lib.search_scaling.embeddings/1"  # the cache files' format (name kept from its first home)


def real_embeddings(preset: str = "full", *, rebuild: bool = False) -> dict:
    """The ``in_batch`` encoder's embeddings of the whole corpus and of the test queries (training it once with
    ``course_lib.recipes.run_in_batch`` when the cache under ``.cache/scaling/`` is missing: ~10 min for full).

    Returns a dict: ``doc_ids`` (list of N str), ``docs`` (N, D) and ``queries`` (Q, D) float32, L2-normalised;
    ``relevant`` (Q lists of relevant doc ids) and ``meta`` (the preset, the encoder's test metrics, its
    training steps and seconds)."""
    from course_lib.config import get_config

    cfg = get_config(preset)
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir()) / "scaling" / f"in_batch-{preset}-{digest}.npz"  # named by every preset value
    if path.is_file() and not rebuild:
        return _read_embeddings(path)
    from course_lib.data import load_dataset
    from course_lib.recipes import run_in_batch
    from course_lib.tokenizer import load_tokenizer

    data = load_dataset("wordnet", preset)
    result = run_in_batch(cfg, data, load_tokenizer(data, cfg.vocab_size))
    doc_ids, doc_emb, q_emb = result.embeddings
    relevant = [sorted(r) for r in data.split_items("test")[2]]
    meta = {"format": EMBEDDINGS_FORMAT, "preset": preset, "encoder": "in_batch", "metrics": result.metrics,
            "train_seconds": result.train_seconds, "steps": result.steps}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, doc_ids=np.array(doc_ids), docs=doc_emb.numpy().astype(np.float32),
                 queries=q_emb.numpy().astype(np.float32), relevant=json.dumps(relevant), meta=json.dumps(meta))
    return _read_embeddings(path)


def _cached_nn_distances(emb: dict) -> np.ndarray:
    """``nearest_neighbour_distances`` of the real document vectors, cached next to the embeddings (minutes
    to compute for the full corpus on 2 cores)."""
    path = emb["path"].with_name(emb["path"].stem + "-nn.npy")
    if path.is_file():
        nn = np.load(path, allow_pickle=False)
        if nn.shape != (len(emb["docs"]),):
            raise ValueError(f"{path} holds {nn.shape} distances for {len(emb['docs'])} vectors: it belongs to other "
                             "embeddings; delete it (it is recomputed)")
        return nn
    nn = nearest_neighbour_distances(emb["docs"])
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, nn)
    return nn


def _read_embeddings(path: Path) -> dict:
    """The checked contents of a cache file that ``real_embeddings`` wrote."""
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {"doc_ids": z["doc_ids"].tolist(), "docs": z["docs"], "queries": z["queries"],
                   "relevant": json.loads(str(z["relevant"])), "meta": json.loads(str(z["meta"])), "path": path}
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot read the embeddings cache {path} ({e}); delete it (it is rebuilt, ~10 min for the "
                         "full preset) or call real_embeddings(preset, rebuild=True)") from None
    if out["meta"].get("format") != EMBEDDINGS_FORMAT or len(out["doc_ids"]) != len(out["docs"]) \
            or len(out["relevant"]) != len(out["queries"]):
        raise ValueError(f"the embeddings cache {path} is of another format or inconsistent; delete it or call "
                         "real_embeddings(preset, rebuild=True)")
    return out


def _unit_rows(vectors, what: str) -> np.ndarray:
    """A non-empty, finite (N, D) float32 matrix whose rows have length 1 (inner product = cosine)."""
    arr = vectors.detach().cpu().numpy() if isinstance(vectors, torch.Tensor) else np.asarray(vectors)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty 2-D array (N, D), got shape {tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
        raise ValueError(f"{what} must be finite floats, got dtype {arr.dtype} (or NaN/inf values)")
    norms = np.linalg.norm(arr, axis=1)
    if np.abs(norms - 1).max() > 1e-3:
        raise ValueError(f"{what} must be L2-normalised (the course's encoders return unit vectors); row norms "
                         f"range over [{norms.min():.3g}, {norms.max():.3g}]: divide each row by its norm first")
    return np.ascontiguousarray(arr, dtype=np.float32)


def nearest_neighbour_distances(vectors, chunk: int = 1024) -> np.ndarray:
    """Euclidean distance from each (unit) row to its nearest other, distinct row (|x - y|^2 = 2 - 2<x, y>;
    itself and rows closer than 1e-3, duplicates up to float32 rounding, are skipped). Exact, by chunked matrix
    products."""
    arr = torch.from_numpy(_unit_rows(vectors, "vectors"))
    out = np.empty(arr.shape[0], dtype=np.float32)
    for start in range(0, arr.shape[0], chunk):
        ip = arr[start : start + chunk] @ arr.T  # (c, N)
        rows = torch.arange(ip.shape[0])
        ip[rows, start + rows] = -np.inf  # not itself
        best = ip.max(dim=1).values
        dup = (2 - 2 * best) < 1e-6  # a duplicate of another row: look past it
        if dup.any():
            ip[dup] = torch.where(2 - 2 * ip[dup] < 1e-6, -np.inf, ip[dup])
            best[dup] = ip[dup].max(dim=1).values
        out[start : start + chunk] = (2 - 2 * best).clamp(min=0).sqrt().numpy()
    if not np.isfinite(out).all():
        raise ValueError("some rows have no distinct neighbour (every row identical?); grow_corpus needs vectors "
                         "that differ, to scale the noise of their copies")
    return out


def grow_corpus(vectors, n: int, *, seed: int = 0, noise: float = 1.0, nn_dist=None) -> tuple[np.ndarray, np.ndarray]:
    """A corpus of ``n`` unit vectors grown from the real ``vectors`` (N, D), and each row's source row.

    The real rows come first, in a seeded random order: ``n <= N`` gives a random subset. Past ``N``, copy ``j``
    of the grown part has source ``order[j % N]`` (every real vector is copied equally often) and is
    ``(x + e) / |x + e|`` with ``e ~ N(0, (noise * nn_dist[x])^2 / D * I)``; ``nn_dist`` (from
    ``nearest_neighbour_distances``, computed when None) scales each copy to its source's neighbourhood. The
    same seed gives the same corpus, and a smaller ``n`` gives a prefix of a larger one.

    Returns ``corpus`` (n, D) float32 and ``source`` (n,) int64 (rows >= N are copies). Checks: ``vectors``
    unit rows, ``n`` an int >= 1, ``seed`` an int >= 0, ``noise`` a number > 0, ``nn_dist`` (N,) positive."""
    base = _unit_rows(vectors, "vectors")
    _check_int("n", n, 1, hint=" (the size of the corpus to grow)")
    _check_int("seed", seed, 0)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not np.isfinite(noise) or noise <= 0:
        raise ValueError(f"noise must be a number > 0 (copies identical to their source would be duplicates), "
                         f"got {noise!r}; 1.0 puts a copy about as far from its source as its nearest neighbour")
    rng = np.random.default_rng(seed)
    order = rng.permutation(base.shape[0])
    if n <= base.shape[0]:
        return base[order[:n]], order[:n].astype(np.int64)
    if nn_dist is None:
        nn_dist = nearest_neighbour_distances(base)
    nn_dist = np.asarray(nn_dist, dtype=np.float32)
    if nn_dist.shape != (base.shape[0],) or not np.isfinite(nn_dist).all() or (nn_dist <= 0).any():
        raise ValueError(f"nn_dist must hold one positive finite distance per vector ({base.shape[0]}), got shape "
                         f"{nn_dist.shape}; compute it with nearest_neighbour_distances(vectors)")
    source = np.concatenate([order, order[np.arange(n - base.shape[0]) % base.shape[0]]]).astype(np.int64)
    corpus = np.empty((n, base.shape[1]), dtype=np.float32)
    corpus[: base.shape[0]] = base[order]
    scale = noise / np.sqrt(base.shape[1])
    for start in range(base.shape[0], n, 65536):  # in blocks: the noise of 1M copies at once would take 0.5 GB more
        src = source[start : start + 65536]
        block = base[src] + rng.standard_normal((len(src), base.shape[1]), dtype=np.float32) * (scale * nn_dist[src])[:, None]
        corpus[start : start + len(src)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return corpus, source
