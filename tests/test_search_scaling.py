"""search_scaling: growing a corpus from real vectors, measuring exact search against HNSW, finding the crossover."""

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest

from course_lib import grown_corpus as gc
from course_lib import search_scaling as ss

DIM = 32


def clustered(n: int, seed: int, dim: int = DIM, n_clusters: int = 25, spread: float = 0.35) -> np.ndarray:
    """L2-normalised gaussian blobs (structured like embeddings); the centres are fixed, so queries drawn with
    another seed come from the same clusters."""
    centres = np.random.default_rng(99).normal(size=(n_clusters, dim))
    rng = np.random.default_rng(seed)
    points = centres[rng.integers(0, n_clusters, size=n)] + spread * rng.normal(size=(n, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def base():
    return clustered(500, seed=1)


@pytest.fixture(scope="module")
def queries():
    return clustered(60, seed=2)


# ---------------------------------------------------------------------------------------------------------
# growing the corpus


def test_nearest_neighbour_distances_match_brute_force(base):
    d = gc.nearest_neighbour_distances(base, chunk=64)
    full = np.linalg.norm(base[:, None] - base[None], axis=2)
    np.fill_diagonal(full, np.inf)
    assert np.allclose(d, full.min(axis=1), atol=1e-3)
    dup = np.concatenate([base[:5], base[:1]])  # a duplicate is skipped, not a zero distance
    assert (gc.nearest_neighbour_distances(dup) > 0).all()
    with pytest.raises(ValueError, match="no distinct neighbour"):
        gc.nearest_neighbour_distances(np.repeat(base[:1], 4, axis=0))


def test_grow_corpus_subset_below_the_real_size(base):
    corpus, source = gc.grow_corpus(base, 200, seed=3)
    assert corpus.shape == (200, DIM) and corpus.dtype == np.float32 and source.shape == (200,)
    assert len(set(source.tolist())) == 200 and np.array_equal(corpus, base[source])


def test_grow_corpus_shape_determinism_and_normalisation(base):
    corpus, source = gc.grow_corpus(base, 2300, seed=0)
    assert corpus.shape == (2300, DIM) and corpus.dtype == np.float32
    assert np.allclose(np.linalg.norm(corpus, axis=1), 1, atol=1e-5)
    assert np.array_equal(np.sort(source[:500]), np.arange(500))  # every real vector first, once
    assert np.bincount(source, minlength=500).max() - np.bincount(source, minlength=500).min() <= 1  # copied evenly
    again, again_src = gc.grow_corpus(base, 2300, seed=0)
    assert np.array_equal(corpus, again) and np.array_equal(source, again_src)
    smaller, _ = gc.grow_corpus(base, 1200, seed=0)
    assert np.array_equal(smaller, corpus[:1200])  # a smaller corpus is a prefix of a larger one
    other, _ = gc.grow_corpus(base, 2300, seed=1)
    assert not np.array_equal(other, corpus)


def test_copies_are_near_their_source_but_not_identical(base):
    nn = gc.nearest_neighbour_distances(base)
    corpus, source = gc.grow_corpus(base, 1500, seed=0, noise=1.0, nn_dist=nn)
    copies, src = corpus[500:], source[500:]
    dist = np.linalg.norm(copies - base[src], axis=1)
    assert (dist > 1e-4).all()  # not duplicates
    ratio = np.median(dist / nn[src])
    assert 0.6 < ratio < 1.2, ratio  # about one nearest-neighbour distance away, as noise=1 promises
    closer, _ = gc.grow_corpus(base, 1500, seed=0, noise=0.25, nn_dist=nn)
    assert np.median(np.linalg.norm(closer[500:] - base[src], axis=1) / nn[src]) < 0.4 * ratio


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0}, "n must be an int >= 1"),
    ({"n": 10.0}, "n must be an int"),
    ({"n": 10, "noise": 0}, "noise must be a number > 0"),
    ({"n": 10, "noise": float("nan")}, "noise must be a number > 0"),
    ({"n": 10, "seed": -1}, "seed must be an int >= 0"),
    ({"n": 900, "nn_dist": np.ones(3)}, "nn_dist must hold one positive"),
    ({"n": 900, "nn_dist": np.zeros(500)}, "nn_dist must hold one positive"),
])
def test_grow_corpus_bad_inputs(base, kwargs, match):
    n = kwargs.pop("n")
    with pytest.raises(ValueError, match=match):
        gc.grow_corpus(base, n, **kwargs)


@pytest.mark.parametrize("vectors, match", [
    (np.ones((4, 3)), "L2-normalised"),
    (np.ones(8), "2-D array"),
    (np.zeros((0, 4)), "non-empty"),
    (np.full((2, 2), np.nan), "finite"),
])
def test_vectors_must_be_finite_unit_rows(vectors, match):
    with pytest.raises(ValueError, match=match):
        gc.grow_corpus(vectors, 5, seed=0)


# ---------------------------------------------------------------------------------------------------------
# measuring one size


def test_measure_size_fields_are_consistent(base, queries):
    relevant = [{int(i)} for i in np.argmax(queries @ base.T, axis=1)]  # the nearest real vector is "relevant"
    row = ss.measure_size(base, queries, 1500, M=8, ef_construction=40, ef=16, efs=(8, 64), threads=1, repeats=1,
                          relevant=relevant)
    assert row["n"] == 1500 and row["ef"] == 16
    assert 0 <= row["recall_at_10"] <= 1 and row["exact_qps"] > 0 and row["hnsw_qps"] > 0
    assert row["exact_cpu_qps"] > 0 and row["hnsw_cpu_qps"] > 0 and len(row["load_average"]) == 2
    assert row["exact_bytes_per_vector"] == 4 * DIM
    assert row["hnsw_bytes_per_vector"] > 4 * DIM + 4 * 2 * 8  # the vector plus level-0 links (2M per node)
    assert [p["ef"] for p in row["ef_sweep"]] == [8, 64]
    assert all(0 <= p["recall_at_10"] <= 1 and p["qps"] > 0 for p in row["ef_sweep"])
    assert row["ef_sweep"][1]["recall_at_10"] >= row["ef_sweep"][0]["recall_at_10"]
    c = row["checks"]
    assert c["copies_share_of_corpus"] == pytest.approx(1000 / 1500)
    assert 0 < c["copies_share_of_query_top10"] < 1 and 1 < c["distinct_sources_in_query_top10"] <= 10
    assert c["qrels_recall_at_10_copy_as_source"] == 1.0  # the nearest real vector always makes its top 10
    assert 0 <= c["qrels_recall_at_10"] <= 1
    assert 0 < c["copy_own_family_share_of_top10"] < 1 and 0 < c["copy_source_in_its_top10"] <= 1


def test_measure_size_large_ef_on_a_tiny_set_is_exact(base, queries):
    row = ss.measure_size(base, queries, 150, M=16, ef_construction=200, ef=150, threads=1, repeats=1)
    assert row["recall_at_10"] == 1.0 and row["ef_sweep"] == []
    assert "qrels_recall_at_10" not in row["checks"] and row["checks"]["copies_share_of_corpus"] == 0


def test_measure_size_bad_inputs(base, queries):
    kw = {"M": 8, "ef_construction": 40, "ef": 16, "threads": 1, "repeats": 1}
    with pytest.raises(ValueError, match="width"):
        ss.measure_size(base, queries[:, :16] / np.linalg.norm(queries[:, :16], axis=1, keepdims=True), 100, **kw)
    with pytest.raises(ValueError, match="n must be an int >= 11"):
        ss.measure_size(base, queries, 10, **kw)
    with pytest.raises(ValueError, match="one set per query"):
        ss.measure_size(base, queries, 100, relevant=[{0}], **kw)
    with pytest.raises(ValueError, match="repeats"):
        ss.measure_size(base, queries, 100, **(kw | {"repeats": 0}))
    with pytest.raises(ValueError, match="M must be"):
        ss.measure_size(base, queries, 100, **(kw | {"M": 1}))
    with pytest.raises(ValueError, match="each ef of efs"):
        ss.measure_size(base, queries, 100, efs=(0,), **kw)


def test_scaling_curve_small_sizes(base, queries):
    curve = ss.scaling_curve([200, 800], base, queries, M=8, ef_construction=40, ef=32, efs=(16,), threads=1,
                             repeats=1, log=None)
    assert [r["n"] for r in curve] == [200, 800] and all(r["wall_seconds"] > 0 for r in curve)
    fig = ss.plot_search_scaling(curve)
    assert len(fig.axes) == 5  # four panels and the bytes-per-vector twin axis
    plt.close(fig)
    for sizes in ([800, 200], [200, 200], [10, 200], [], [200.0]):
        with pytest.raises(ValueError, match="strictly increasing ints > 10"):
            ss.scaling_curve(sizes, base, queries, M=8, ef_construction=40, ef=32, log=None)


# ---------------------------------------------------------------------------------------------------------
# the crossover


def row(n, exact_qps, hnsw_qps, recall, sweep=()):
    return {"n": n, "exact_qps": exact_qps, "hnsw_qps": hnsw_qps, "recall_at_10": recall, "ef": 100,
            "ef_sweep": [{"ef": ef, "qps": q, "recall_at_10": r} for ef, q, r in sweep]}


def test_crossover_finds_the_first_size_where_hnsw_is_faster_at_the_bar():
    curve = [row(1_000, 900, 300, 1.0), row(10_000, 500, 450, 0.99), row(100_000, 80, 200, 0.99),
             row(1_000_000, 10, 150, 0.985)]
    assert ss.crossover(curve) == 100_000
    assert ss.crossover(list(reversed(curve))) == 100_000  # order of rows does not matter
    # faster, but below the bar: not a crossover ...
    fast_but_poor = [row(1_000, 900, 300, 1.0), row(10_000, 500, 900, 0.95), row(100_000, 80, 200, 0.99)]
    assert ss.crossover(fast_but_poor) == 100_000
    assert ss.crossover(fast_but_poor, min_recall=0.9) == 10_000
    # ... unless a swept ef reaches the bar and is still faster
    swept = [row(1_000, 900, 300, 1.0), row(10_000, 500, 900, 0.95, sweep=[(200, 600, 0.985), (400, 400, 0.995)])]
    assert ss.crossover(swept) == 10_000
    assert ss.best_at_recall(swept[1]) == {"ef": 200, "qps": 600, "recall_at_10": 0.985, "speedup": 1.2}
    assert ss.best_at_recall(swept[1], 0.999) is None


def test_crossover_by_cpu_time():
    curve = [row(1_000, 900, 300, 1.0) | {"exact_cpu_qps": 2000, "hnsw_cpu_qps": 900},
             row(10_000, 500, 450, 0.99) | {"exact_cpu_qps": 800, "hnsw_cpu_qps": 1000}]
    for r in curve:
        r["ef_sweep"] = [{"ef": 50, "qps": 1.0, "cpu_qps": 1.0, "recall_at_10": 0.5}]
    assert ss.crossover(curve) is None and ss.crossover(curve, clock="cpu_qps") == 10_000
    assert ss.best_at_recall(curve[1], clock="cpu_qps")["speedup"] == pytest.approx(1000 / 800)
    with pytest.raises(ValueError, match="clock must be one of"):
        ss.crossover(curve, clock="seconds")
    with pytest.raises(ValueError, match="lacks"):
        ss.crossover([row(1_000, 900, 300, 1.0)], clock="cpu_qps")


def test_crossover_none_when_hnsw_never_pays_off():
    assert ss.crossover([row(1_000, 900, 300, 1.0), row(10_000, 500, 400, 0.999)]) is None
    assert ss.crossover([row(1_000, 900, 3000, 0.5)]) is None  # fast but far from exact


def test_crossover_bad_inputs():
    with pytest.raises(ValueError, match="non-empty list"):
        ss.crossover([])
    with pytest.raises(ValueError, match="lacks"):
        ss.crossover([{"n": 5, "exact_qps": 1.0}])
    for bad in (0, 1.5, True, "0.98"):
        with pytest.raises(ValueError, match="min_recall"):
            ss.crossover([row(1_000, 900, 300, 1.0)], min_recall=bad)


# ---------------------------------------------------------------------------------------------------------
# the embeddings cache and the CLI's replot


def test_damaged_embeddings_cache_raises_clearly(tmp_path):
    bad = tmp_path / "in_batch-full-0.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="rebuild=True"):
        gc._read_embeddings(bad)


def test_replot_needs_the_json(tmp_path, base, queries):
    with pytest.raises(SystemExit, match="run without --replot"):
        ss.main(["--out", str(tmp_path / "missing.json"), "--replot"])
    curve = ss.scaling_curve([100, 300], base, queries, M=8, ef_construction=40, ef=32, threads=1, repeats=1, log=None)
    out = tmp_path / "s.json"
    out.write_text(json.dumps({"curve": curve, "params": {"min_recall": 0.98}}))
    ss.main(["--out", str(out), "--replot"])
    assert (tmp_path / "s.png").stat().st_size > 10_000


def test_run_saves_each_size_and_resumes_only_the_missing_ones(tmp_path, monkeypatch, base, queries):
    """An interrupted run keeps the sizes it finished in ``out.partial``; ``resume`` measures only the rest, and a
    partial file made with other settings is refused."""
    emb = {"doc_ids": [f"d{i}" for i in range(len(base))], "docs": base, "queries": queries,
           "relevant": [[f"d{i}"] for i in range(len(queries))], "meta": {"steps": 0}, "path": tmp_path / "e.npz"}
    monkeypatch.setattr(ss, "real_embeddings", lambda preset: emb)
    measured, real_curve = [], ss.scaling_curve

    def counting(sizes, *args, **kwargs):
        if sizes == [300] and "crash" not in measured:
            measured.append("crash")
            raise KeyboardInterrupt  # the first run dies on its second size
        measured.extend(sizes)
        return real_curve(sizes, *args, **{**kwargs, "log": None})

    monkeypatch.setattr(ss, "scaling_curve", counting)
    out = tmp_path / "curve.json"
    with pytest.raises(KeyboardInterrupt):
        ss.run("fast", out, [100, 300], threads=1)
    partial = tmp_path / "curve.json.partial"
    assert [r["n"] for r in json.loads(partial.read_text())["curve"]] == [100] and not out.exists()
    result = ss.run("fast", out, [100, 300], threads=1, resume=True)
    assert measured == [100, "crash", 300]  # 100 was not measured again
    assert [r["n"] for r in result["curve"]] == [100, 300] and not partial.exists() and out.is_file()
    partial.write_text(json.dumps({"preset": "fast", "params": {"M": 1}, "noise": 1.0, "curve": []}))
    with pytest.raises(ValueError, match="other settings"):
        ss.run("fast", out, [100, 300], threads=1, resume=True)
