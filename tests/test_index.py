"""ExactIndex and HNSWIndex: one interface, exact results equal brute force, HNSW is close and reproducible."""

import numpy as np
import pytest
import torch

from course_lib.index import ExactIndex, HNSWIndex, recall_vs_exact

DIM = 32
INDEXES = [ExactIndex, HNSWIndex]


def clustered(n: int, dim: int = DIM, n_clusters: int = 30, spread: float = 0.35, seed: int = 0) -> np.ndarray:
    """L2-normalised gaussian blobs around random centres: structured like real embeddings (many close
    neighbours), unlike uniform noise. The centres depend only on ``dim`` so that queries drawn with another
    seed come from the same clusters."""
    centres = np.random.default_rng(1234).normal(size=(n_clusters, dim))
    rng = np.random.default_rng(seed)
    points = centres[rng.integers(0, n_clusters, size=n)] + spread * rng.normal(size=(n, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def ids_for(n: int, prefix: str = "doc") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


@pytest.fixture(scope="module")
def corpus():
    return ids_for(3000), clustered(3000, seed=1)


@pytest.fixture(scope="module")
def queries():
    return clustered(200, seed=2)


@pytest.fixture(scope="module")
def hnsw(corpus):
    index = HNSWIndex(DIM, M=16, ef_construction=200, ef=64, seed=0, num_threads=1)
    index.add(*corpus)
    return index


@pytest.fixture(scope="module")
def exact(corpus):
    index = ExactIndex(DIM)
    index.add(*corpus)
    return index


def small_index(cls, n: int = 50, dim: int = 8):
    index = cls(dim)
    index.add(ids_for(n), clustered(n, dim=dim, n_clusters=5))
    return index


# ---------------------------------------------------------------------------------------------------------
# the shared interface


@pytest.mark.parametrize("cls", INDEXES)
def test_shared_interface(cls):
    index = cls(8)
    assert len(index) == 0 and index.dim == 8
    vectors = clustered(40, dim=8, n_clusters=4)
    index.add(ids_for(25), vectors[:25])
    index.add(ids_for(15, "more"), torch.from_numpy(vectors[25:]))  # tensors are accepted too
    assert len(index) == 40
    ids, scores = index.search(vectors[:3], 5)
    assert isinstance(ids, list) and len(ids) == 3 and all(len(row) == 5 for row in ids)
    assert all(isinstance(d, str) for row in ids for d in row)
    assert isinstance(scores, np.ndarray) and scores.shape == (3, 5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6), "scores must be best first"
    # a stored vector is its own nearest neighbour, with inner product 1 (unit vectors)
    assert [row[0] for row in ids] == ["doc0", "doc1", "doc2"]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    for name in ("add", "search", "save", "load"):
        assert callable(getattr(cls, name))


# ---------------------------------------------------------------------------------------------------------
# exact search is brute force


def test_exact_equals_numpy_bruteforce(exact, corpus, queries):
    doc_ids, docs = corpus
    k = 10
    ids, scores = exact.search(queries, k)
    full = queries.astype(np.float64) @ docs.astype(np.float64).T  # (Q, N)
    order = np.argsort(-full, axis=1, kind="stable")[:, : k + 1]
    expected = [[doc_ids[j] for j in row[:k]] for row in order]
    top = np.take_along_axis(full, order, axis=1)  # (Q, k + 1), best first
    np.testing.assert_allclose(scores, top[:, :k], atol=1e-5)
    # the ids must be the brute-force ones; where two scores are closer than float32 rounding (a near
    # tie), either order is right, so those queries are compared as sets of true scores instead
    position = {d: i for i, d in enumerate(doc_ids)}
    clear = np.min(-np.diff(top, axis=1), axis=1) > 1e-5
    assert clear.mean() > 0.8, "the test data has too many near-ties to be a good check"
    for q, (got, want) in enumerate(zip(ids, expected)):
        if clear[q]:
            assert got == want, q
        else:
            np.testing.assert_allclose(full[q, [position[d] for d in got]], top[q, :k], atol=1e-5)


def test_exact_search_in_chunks_is_the_same(exact, queries):
    ids, scores = exact.search(queries, 7)
    ids_chunked, scores_chunked = exact.search(queries, 7, chunk=16)
    assert ids == ids_chunked
    np.testing.assert_allclose(scores, scores_chunked, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# HNSW: close to exact, reproducible


def test_hnsw_recall_vs_exact(hnsw, exact, queries):
    approx_ids, _ = hnsw.search(queries, 10)
    exact_ids, _ = exact.search(queries, 10)
    recall = recall_vs_exact(approx_ids, exact_ids, 10)
    assert recall >= 0.98, recall


def test_hnsw_scores_are_inner_products(hnsw, corpus, queries):
    doc_ids, docs = corpus
    position = {d: i for i, d in enumerate(doc_ids)}
    ids, scores = hnsw.search(queries[:20], 5)
    for q, row, row_scores in zip(queries[:20], ids, scores):
        expected = docs[[position[d] for d in row]] @ q
        np.testing.assert_allclose(row_scores, expected, atol=1e-5)


def test_hnsw_same_seed_is_reproducible(corpus, queries):
    results = []
    for _ in range(2):
        index = HNSWIndex(DIM, M=8, ef_construction=64, ef=16, seed=7, num_threads=1)
        index.add(*corpus)
        results.append(index.search(queries, 10))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_hnsw_k_above_ef(hnsw, exact, queries):
    # ef=64 < k=100: search raises ef to k for that call, then restores it
    approx_ids, _ = hnsw.search(queries[:20], 100)
    exact_ids, _ = exact.search(queries[:20], 100)
    assert all(len(row) == 100 for row in approx_ids)
    assert recall_vs_exact(approx_ids, exact_ids, 100) >= 0.95
    assert hnsw.params["ef"] == 64


# ---------------------------------------------------------------------------------------------------------
# save / load


def test_exact_save_load_roundtrip(tmp_path, exact, queries):
    path = tmp_path / "exact.pt"
    exact.save(path)
    loaded = ExactIndex.load(path)
    assert len(loaded) == len(exact) and loaded.dim == exact.dim and loaded.ids == exact.ids
    ids, scores = exact.search(queries, 10)
    ids2, scores2 = loaded.search(queries, 10)
    assert ids == ids2
    np.testing.assert_array_equal(scores, scores2)
    assert [p.name for p in tmp_path.iterdir()] == ["exact.pt"], "a temporary file was left behind"


def test_hnsw_save_load_roundtrip(tmp_path, hnsw, queries):
    path = tmp_path / "hnsw.bin"
    hnsw.save(path)
    loaded = HNSWIndex.load(path)
    assert len(loaded) == len(hnsw) and loaded.dim == hnsw.dim and loaded.ids == hnsw.ids
    assert loaded.params == hnsw.params
    ids, scores = hnsw.search(queries, 10)
    ids2, scores2 = loaded.search(queries, 10)
    assert ids == ids2
    np.testing.assert_array_equal(scores, scores2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hnsw.bin", "hnsw.bin.json"]


def test_hnsw_loaded_index_accepts_more_vectors(tmp_path):
    index = small_index(HNSWIndex)
    index.save(tmp_path / "h.bin")
    loaded = HNSWIndex.load(tmp_path / "h.bin")
    extra = clustered(30, dim=8, n_clusters=5, seed=9)
    loaded.add(ids_for(30, "extra"), extra)
    assert len(loaded) == 80
    ids, _ = loaded.search(extra[:3], 1)
    assert ids == [["extra0"], ["extra1"], ["extra2"]]


# ---------------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("cls", INDEXES)
def test_add_wrong_width(cls):
    index = cls(8)
    with pytest.raises(ValueError, match="width 6 but this index holds 8-dimensional"):
        index.add(ids_for(3), np.ones((3, 6), dtype=np.float32))


@pytest.mark.parametrize("cls", INDEXES)
def test_search_wrong_width(cls):
    index = small_index(cls)
    with pytest.raises(ValueError, match="query vectors have width 9 but this index holds 8"):
        index.search(np.ones((2, 9), dtype=np.float32), 3)


@pytest.mark.parametrize("cls", INDEXES)
def test_not_a_matrix(cls):
    index = cls(8)
    with pytest.raises(ValueError, match="must be a 2-D array"):
        index.add(["a"], np.ones(8, dtype=np.float32))


@pytest.mark.parametrize("cls", INDEXES)
def test_k_larger_than_index(cls):
    index = small_index(cls, n=50)
    with pytest.raises(ValueError, match="k=51 is larger than the index \\(50 vectors\\)"):
        index.search(clustered(2, dim=8), 51)


@pytest.mark.parametrize("cls", INDEXES)
def test_search_empty_index(cls):
    with pytest.raises(ValueError, match="larger than the index \\(0 vectors\\)"):
        cls(8).search(clustered(2, dim=8), 1)


@pytest.mark.parametrize("cls", INDEXES)
@pytest.mark.parametrize("k", [0, -3, 2.0])
def test_k_below_one_or_not_int(cls, k):
    index = small_index(cls)
    with pytest.raises(ValueError, match="k must be a positive int"):
        index.search(clustered(2, dim=8), k)


@pytest.mark.parametrize("cls", INDEXES)
def test_duplicate_ids(cls):
    index = cls(8)
    with pytest.raises(ValueError, match="ids must be unique"):
        index.add(["a", "b", "a"], clustered(3, dim=8))
    assert len(index) == 0
    index.add(["a", "b"], clustered(2, dim=8))
    with pytest.raises(ValueError, match="ids must be unique"):  # against ids already in the index
        index.add(["c", "a"], clustered(2, dim=8, seed=5))
    assert len(index) == 2


@pytest.mark.parametrize("cls", INDEXES)
def test_ids_vector_count_mismatch(cls):
    with pytest.raises(ValueError, match="got 3 ids for 4 vectors"):
        cls(8).add(ids_for(3), clustered(4, dim=8))


@pytest.mark.parametrize("cls", INDEXES)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_vectors(cls, bad):
    vectors = clustered(4, dim=8)
    vectors[2, 3] = bad
    index = cls(8)
    with pytest.raises(ValueError, match="vectors contain NaN or inf"):
        index.add(ids_for(4), vectors)
    assert len(index) == 0
    index = small_index(cls)
    with pytest.raises(ValueError, match="query vectors contain NaN or inf"):
        index.search(vectors, 2)


@pytest.mark.parametrize("cls", INDEXES)
def test_zero_query_rows(cls):
    index = small_index(cls)
    with pytest.raises(ValueError, match="got 0 rows"):
        index.search(np.zeros((0, 8), dtype=np.float32), 3)


@pytest.mark.parametrize("cls", INDEXES)
@pytest.mark.parametrize("dim", [0, -1, 8.0])
def test_bad_dim(cls, dim):
    with pytest.raises(ValueError, match="dim must be a positive int"):
        cls(dim)


# ---------------------------------------------------------------------------------------------------------
# recall_vs_exact


def test_recall_vs_exact_hand_case():
    approx = [["a", "b", "x"], ["c", "d", "e"], ["y", "z", "w"]]
    exact = [["a", "b", "c"], ["e", "d", "c"], ["p", "q", "r"]]
    # per query: 2/3 (a, b), 3/3 (order does not matter), 0/3 → mean (2/3 + 1 + 0) / 3 = 5/9
    assert recall_vs_exact(approx, exact, 3) == pytest.approx(5 / 9)
    # only the top k of each list counts: at k = 1, 1/1, 0/1, 0/1 → 1/3
    assert recall_vs_exact(approx, exact, 1) == pytest.approx(1 / 3)


def test_recall_vs_exact_errors():
    with pytest.raises(ValueError, match="same, non-zero number"):
        recall_vs_exact([["a"]], [["a"], ["b"]], 1)
    with pytest.raises(ValueError, match="same, non-zero number"):
        recall_vs_exact([], [], 1)
