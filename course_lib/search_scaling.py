"""Search at scale: what exact search and HNSW cost as the corpus grows, and from which size HNSW pays off.

Exact search is one matrix product of the queries with every vector, then a top-k (Johnson, Douze & Jégou,
2017, arXiv 1702.08734, run brute-force search as a GEMM): its cost grows linearly with the corpus. HNSW
(Malkov & Yashunin, 2018, arXiv 1603.09320, §4) walks a layered neighbour graph whose search cost grows about
logarithmically (§4.2), but it stores up to 2M links per vector besides the vector (§4.2, memory) and takes
time to build. ``scaling_curve`` measures both as the corpus grows, reporting speed as ANN-Benchmarks does
(Aumüller, Bernhardsson & Faithfull, 2018, arXiv 1807.05614: recall against queries per second), and
``crossover`` finds the first size at which HNSW answers faster than exact search at recall@10 >= 0.98 of it.

The corpus grows from the course encoder's real embeddings with perturbed copies (``course_lib.grown_corpus``:
``real_embeddings``, ``grow_corpus``).
``measure_size`` reports checks that copies make the task neither trivial (a query's top 10 all one vector's
copies) nor random (copies that never come near a query).

    python -m course_lib.search_scaling --preset full --out results/full/search_scaling.json
    python -m course_lib.search_scaling --preset fast --out /tmp/search_scaling.json   # seconds

writes the JSON (machine, date, git commit, parameters, how the copies were made, the curve) and a PNG beside it.
"""

import argparse
import contextlib
import datetime
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from course_lib.grown_corpus import (
    _cached_nn_distances,
    _unit_rows,
    grow_corpus,
    nearest_neighbour_distances,
    real_embeddings,
)
from course_lib.index import ExactIndex, HNSWIndex, _check_int, recall_vs_exact
from course_lib.utils import atomic_path

# per preset: corpus sizes, the ef values swept at every size, timing repeats (best of), queries used (None = all)
SETTINGS = {
    "full": {"sizes": (10_000, 30_000, 100_000, 300_000, 1_000_000), "efs": (16, 32, 64, 128, 192, 256, 384, 512),
             "repeats": 3, "n_queries": None},
    # FAST: FAST's ~5k documents grown to 100k with a cheaper graph (ef_construction 64): seconds on 2 idle cores
    "fast": {"sizes": (1_000, 3_000, 10_000, 30_000, 100_000), "efs": (16, 32, 64, 128, 256), "repeats": 3,
             "n_queries": None, "ef_construction": 64},
}
K = 10  # recall@10: HNSW's top 10 against exact search's top 10
MIN_RECALL = 0.98  # the recall@10 (against exact search) at which HNSW's speed is compared with exact search's
EXACT_BLOCK = 2**26  # exact search scores at most this many (query, vector) pairs at once (256 MB of float32)
ROW_FIELDS = ("n", "recall_at_10", "ef", "ef_sweep")
CLOCKS = ("qps", "cpu_qps")  # queries per wall-clock second; per CPU-second of the process (threads summed)


@contextlib.contextmanager
def _torch_threads(threads: int):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _timed(search, repeats: int, budget_s: float = 60.0):
    """The best (shortest) wall seconds and process CPU seconds (summed over its threads: what other programs
    on a shared machine change least) of ``repeats`` runs of ``search()`` (fewer once the runs have taken
    ``budget_s``: a run that long averages over the machine's ups and downs), and the last run's result."""
    wall, cpu = [], []
    while len(wall) < repeats and sum(wall) < budget_s:
        t0, c0 = time.perf_counter(), time.process_time()
        result = search()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu), result


def ef_sweep(hnsw: HNSWIndex, queries, exact_ids: list[list[str]], efs, *, repeats: int = 3) -> list[dict]:
    """Recall@10 against exact search (``exact_ids``, the exact top 10 of each query) and queries per second of
    ``hnsw`` for each ``ef`` in ``efs``; its own ``ef`` is restored afterwards. Checks: every ef an int >= 1."""
    efs = list(efs)
    for ef in efs:
        _check_int("each ef of efs", ef, 1)
    own, out = hnsw.params["ef"], []
    try:
        for ef in efs:
            hnsw.set_ef(ef)
            seconds, cpu, (ids, _) = _timed(lambda: hnsw.search(queries, K), repeats)
            out.append({"ef": ef, "qps": len(ids) / seconds, "cpu_qps": len(ids) / cpu,
                        "recall_at_10": recall_vs_exact(ids, exact_ids, K)})
    finally:
        hnsw.set_ef(own)
    return out


def _exact_chunk(n: int) -> int:
    """Queries per matrix product in exact search: the score block (chunk, n) stays under EXACT_BLOCK."""
    return max(1, min(1024, EXACT_BLOCK // n))


def _top_rows(queries: np.ndarray, corpus: np.ndarray, k: int) -> np.ndarray:
    """Row indices (Q, k) of each query's k best corpus rows by inner product, best first (exact, chunked)."""
    c, q = torch.from_numpy(corpus), torch.from_numpy(queries)
    step = _exact_chunk(len(corpus))
    return torch.cat([torch.topk(q[i : i + step] @ c.T, k, dim=1).indices for i in range(0, len(q), step)]).numpy()


def _copy_checks(corpus, source, n_real: int, exact_rows: np.ndarray, relevant, nn_dist, seed: int) -> dict:
    """Do the copies keep the task a retrieval task? For the queries' exact top 10: the share that are copies
    (next to their share of the corpus), how many distinct real vectors they stem from (10 on the real corpus),
    recall@10 against the relevance labels (``relevant``: sets of base rows), a copy counted wrong and, second,
    credited to its source. For 1,000 sampled copies: their distance to their source over the source's
    nearest-neighbour distance, whether the source is in their top 10, and the share of their top 10 (itself
    excluded) that is their own family (the source or its other copies)."""
    copies = exact_rows >= n_real
    src = source[exact_rows]  # (Q, k)
    out = {"copies_share_of_corpus": 1 - n_real / len(corpus), "copies_share_of_query_top10": float(copies.mean()),
           "distinct_sources_in_query_top10": float(np.mean([len(set(r)) for r in src.tolist()]))}
    if relevant is not None:
        out["qrels_recall_at_10"] = float(np.mean([len(rel & set(s[~c].tolist())) / len(rel)
                                                   for rel, s, c in zip(relevant, src, copies)]))
        out["qrels_recall_at_10_copy_as_source"] = float(np.mean([len(rel & set(s)) / len(rel)
                                                                  for rel, s in zip(relevant, src.tolist())]))
    if len(corpus) > n_real:
        row_of = np.empty(n_real, dtype=np.int64)
        row_of[source[:n_real]] = np.arange(n_real)  # the corpus row of each real vector
        pick = np.random.default_rng(seed + 1).choice(np.arange(n_real, len(corpus)), min(1000, len(corpus) - n_real),
                                                      replace=False)
        top = _top_rows(corpus[pick], corpus, K + 1)[:, 1:]  # (S, k) rows; itself (the best) dropped
        own = source[pick]
        dist = np.linalg.norm(corpus[pick] - corpus[row_of[own]], axis=1)
        out |= {"copy_to_source_over_nn_distance": float(np.median(dist / nn_dist[own])),
                "copy_source_in_its_top10": float((top == row_of[own][:, None]).any(axis=1).mean()),
                "copy_own_family_share_of_top10": float((source[top] == own[:, None]).mean())}
    return out


def measure_size(base, queries, n: int, *, M: int, ef_construction: int, ef: int, threads: int = 2, seed: int = 0,
                 noise: float = 1.0, nn_dist=None, efs=(), repeats: int = 3, relevant=None) -> dict:
    """Exact search and HNSW on a corpus of ``n`` vectors grown from ``base`` (``grow_corpus``), searched with
    ``queries`` (Q, D); every figure uses ``threads`` threads (torch's for exact search, hnswlib's for building
    and searching the graph) and search times are the best of ``repeats`` runs over all the queries.

    Returns: ``n``; ``build_seconds`` (HNSW, M / ef_construction / seed as given) and ``exact_build_seconds``
    (copying the matrix); ``exact_bytes_per_vector`` (the float32 row, 4 D) and ``hnsw_bytes_per_vector``
    (hnswlib's own count of the bytes its graph and vectors take, ``index_file_size``, over n; ids are not
    counted for either); ``exact_qps`` and ``hnsw_qps`` (queries per second at ``ef``; ``*_cpu_qps``: per
    CPU-second of this process, all threads summed) and ``recall_at_10``
    (of HNSW against exact search); ``ef_sweep`` (``ef_sweep`` at each ef of ``efs``); ``checks`` (what the
    copies do to the task, see ``_copy_checks``; qrels recall when ``relevant``, Q sets of base row indices,
    is given and every real vector is in the corpus); ``load_average`` (the machine's 1-minute load before and
    after: other programs slow the wall-clock figures down)."""
    base = _unit_rows(base, "base vectors")
    queries = _unit_rows(queries, "queries")
    if queries.shape[1] != base.shape[1]:
        raise ValueError(f"queries have width {queries.shape[1]} but the base vectors {base.shape[1]}; embed both "
                         "with the same encoder")
    _check_int("n", n, K + 1, hint=f" (a corpus larger than the {K} results asked for)")
    _check_int("threads", threads, 1)
    _check_int("repeats", repeats, 1, hint=" (search times are the best of this many runs)")
    if relevant is not None and len(relevant) != len(queries):
        raise ValueError(f"relevant has {len(relevant)} entries for {len(queries)} queries; give one set per query")
    if n > len(base) and nn_dist is None:
        nn_dist = nearest_neighbour_distances(base)
    corpus, source = grow_corpus(base, n, seed=seed, noise=noise, nn_dist=nn_dist)
    ids, load = [str(i) for i in range(n)], os.getloadavg()[0]
    with _torch_threads(threads):
        t0 = time.perf_counter()
        exact = ExactIndex(base.shape[1])
        exact.add(ids, corpus)
        exact_build = time.perf_counter() - t0
        chunk = _exact_chunk(n)
        exact_s, exact_cpu, (exact_ids, _) = _timed(lambda: exact.search(queries, K, chunk=chunk), repeats)
        exact = None  # free the matrix (and its torch copy) before the graph is built
        t0 = time.perf_counter()
        hnsw = HNSWIndex(base.shape[1], M=M, ef_construction=ef_construction, ef=ef, seed=seed, num_threads=threads,
                         search_threads=threads)
        hnsw.add(ids, corpus)
        build_s = time.perf_counter() - t0
        hnsw_s, hnsw_cpu, (hnsw_ids, _) = _timed(lambda: hnsw.search(queries, K), repeats)
        sweep = ef_sweep(hnsw, queries, exact_ids, efs, repeats=repeats)
        hnsw_bytes = hnsw._index.index_file_size()  # hnswlib: header + vectors + level-0 links + upper-level links
        exact_rows = np.array(exact_ids, dtype=np.int64)
        n_real = min(n, len(base))
        checks = _copy_checks(corpus, source, n_real, exact_rows, relevant if n >= len(base) else None, nn_dist,
                              seed)
    return {"n": n, "build_seconds": build_s, "exact_build_seconds": exact_build,
            "exact_bytes_per_vector": 4 * base.shape[1], "hnsw_bytes_per_vector": hnsw_bytes / n,
            "exact_qps": len(queries) / exact_s, "hnsw_qps": len(queries) / hnsw_s,
            "exact_cpu_qps": len(queries) / exact_cpu, "hnsw_cpu_qps": len(queries) / hnsw_cpu,
            "load_average": [load, os.getloadavg()[0]],
            "recall_at_10": recall_vs_exact(hnsw_ids, exact_ids, K), "ef": ef, "ef_sweep": sweep, "checks": checks}


def scaling_curve(sizes, base, queries, *, M: int, ef_construction: int, ef: int, efs=(), threads: int = 2,
                  seed: int = 0, noise: float = 1.0, repeats: int = 3, relevant=None, nn_dist=None,
                  log=print) -> list[dict]:
    """``measure_size`` at each of ``sizes`` (ints > 10, strictly increasing), with the same seed, so each corpus
    extends the previous one; the nearest-neighbour distances that scale the copies (``nn_dist``) are computed
    once when not given. Small
    sizes (a few thousand vectors, FAST's embeddings) run in seconds. ``log`` (None for quiet) gets one line a size."""
    sizes = list(sizes)
    if not sizes or any(isinstance(s, bool) or not isinstance(s, int) for s in sizes) \
            or sizes != sorted(set(sizes)) or sizes[0] <= 10:
        raise ValueError(f"sizes must be strictly increasing ints > 10 (the corpus needs more than the 10 results "
                         f"asked for), got {sizes!r}")
    base = _unit_rows(base, "base vectors")
    if nn_dist is None and sizes[-1] > len(base):
        nn_dist = nearest_neighbour_distances(base)
    curve = []
    for n in sizes:
        t0 = time.perf_counter()
        row = measure_size(base, queries, n, M=M, ef_construction=ef_construction, ef=ef, threads=threads, seed=seed,
                           noise=noise, nn_dist=nn_dist, efs=efs, repeats=repeats, relevant=relevant)
        curve.append(row | {"wall_seconds": time.perf_counter() - t0})
        if log:
            log(f"n={n:>9,}: build {row['build_seconds']:7.1f} s, exact {row['exact_qps']:9,.0f} q/s, HNSW "
                f"{row['hnsw_qps']:9,.0f} q/s at recall@10 {row['recall_at_10']:.4f} ({curve[-1]['wall_seconds']:.0f} s)")
    return curve


def _check_rows(curve, more=()) -> None:
    if not isinstance(curve, list) or not curve:
        raise ValueError("a scaling curve is a non-empty list of measure_size results; run scaling_curve first")
    for row in curve:
        missing = [f for f in ROW_FIELDS + tuple(more) if not isinstance(row, dict) or f not in row]
        if missing:
            raise ValueError(f"curve row {row if not isinstance(row, dict) else row.get('n')!r} lacks {missing}; "
                             "each row must be what measure_size returns")


def best_at_recall(row: dict, min_recall: float = MIN_RECALL, clock: str = "qps") -> dict | None:
    """The fastest HNSW setting of one curve row (its ``ef`` and every swept ef) by ``clock`` ("qps": queries per
    wall-clock second, or "cpu_qps": per CPU-second) whose recall@10 against exact search is at least
    ``min_recall``: its sweep point plus "speedup" (its speed over exact search's), or None when none reaches it."""
    main = {"ef": row["ef"], "qps": row["hnsw_qps"], "recall_at_10": row["recall_at_10"]}
    if "hnsw_cpu_qps" in row:
        main["cpu_qps"] = row["hnsw_cpu_qps"]
    ok = [p for p in [main] + list(row["ef_sweep"]) if p["recall_at_10"] >= min_recall]
    if not ok:
        return None
    best = max(ok, key=lambda p: p[clock])
    return dict(best) | {"speedup": best[clock] / row[f"exact_{clock}"]}


def crossover(curve: list[dict], min_recall: float = MIN_RECALL, clock: str = "qps") -> int | None:
    """The smallest corpus size of ``curve`` at which HNSW answers more queries per second (``clock``: "qps",
    wall-clock, or "cpu_qps", per CPU-second) than exact search with recall@10 against exact search >=
    ``min_recall`` (``best_at_recall``); None when it never does. Checks: ``curve`` a non-empty list of
    ``measure_size`` rows (with the clock's fields); ``min_recall`` in (0, 1]; ``clock`` one of ``CLOCKS``."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS} (wall-clock or CPU-time queries per second), got {clock!r}")
    _check_rows(curve, (f"exact_{clock}", f"hnsw_{clock}"))
    if isinstance(min_recall, bool) or not isinstance(min_recall, (int, float)) or not 0 < min_recall <= 1:
        raise ValueError(f"min_recall must be a number in (0, 1] (a recall@10), got {min_recall!r}")
    for row in sorted(curve, key=lambda r: r["n"]):
        best = best_at_recall(row, min_recall, clock)
        if best is not None and best["speedup"] > 1:
            return row["n"]
    return None


def run(preset: str, out: Path, sizes=None, *, noise: float = 1.0, threads: int = 2, seed: int = 0,
        resume: bool = False) -> dict:
    """The scaling curve of a preset on the ``in_batch`` encoder's embeddings (``real_embeddings``), HNSW with the
    preset's M, ef_construction (FAST: 64) and ef, written atomically to ``out`` (JSON) with a PNG next to it.
    After each size the rows so far go to ``out`` + ".partial"; ``resume`` reuses that file's rows (same preset,
    parameters and noise only) and measures the missing sizes."""
    from course_lib.benchmark import git_commit, machine
    from course_lib.config import get_config

    if preset not in SETTINGS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(SETTINGS)}")
    cfg, settings = get_config(preset), SETTINGS[preset]
    t0 = time.perf_counter()
    emb = real_embeddings(preset)
    row_of = {d: i for i, d in enumerate(emb["doc_ids"])}
    n_q = settings["n_queries"] or len(emb["queries"])
    queries, relevant = emb["queries"][:n_q], [{row_of[d] for d in r} for r in emb["relevant"][:n_q]]
    params = {"M": cfg.hnsw_m, "ef_construction": settings.get("ef_construction", cfg.hnsw_ef_construction),
              "ef": cfg.hnsw_ef_search, "efs": list(settings["efs"]), "seed": seed, "threads": threads,
              "repeats": settings["repeats"], "min_recall": MIN_RECALL}
    sizes = list(sizes or settings["sizes"])
    nn = _cached_nn_distances(emb) if sizes[-1] > len(emb["docs"]) else None
    partial, done = out.with_name(out.name + ".partial"), {}
    if resume and partial.is_file():
        before = json.loads(partial.read_text())
        if (before["preset"], before["params"], before["noise"]) != (preset, params, noise):
            raise ValueError(f"{partial} was measured with other settings ({before['preset']}, {before['params']}, "
                             f"noise {before['noise']}); delete it or run without --resume")
        done = {r["n"]: r for r in before["curve"]}
    curve = []
    for n in sizes:  # one size at a time (each corpus is a prefix of the next), saved as it comes
        curve += [done[n]] if n in done else scaling_curve(
            [n], emb["docs"], queries, relevant=relevant, noise=noise, nn_dist=nn,
            **{k: params[k] for k in ("M", "ef_construction", "ef", "efs", "seed", "threads", "repeats")})
        with atomic_path(partial) as tmp:
            tmp.write_text(json.dumps({"preset": preset, "params": params, "noise": noise, "curve": curve}))
    with _torch_threads(threads):
        where, real_top = machine(), _top_rows(queries, emb["docs"], K)  # the real corpus, for the checks' baseline
    real_recall = float(np.mean([len(rel & set(r)) / len(rel) for rel, r in zip(relevant, real_top.tolist())]))
    result = {
        "preset": preset, "machine": where, "date": datetime.date.today().isoformat(), "commit": git_commit(),
        "params": params,
        "embeddings": {"encoder": "in_batch", "n_real": len(emb["docs"]), "dim": int(emb["docs"].shape[1]),
                       "n_queries": n_q, "train_steps": emb["meta"]["steps"],
                       "qrels_recall_at_10_real_corpus": real_recall},
        "copies": {"noise": noise, "how": (
            "sizes up to n_real: a seeded random subset of the real document vectors; larger: all real vectors, then "
            "copy j of real vector x = order[j % n_real] (every vector copied equally often) is (x + e) / |x + e|, "
            f"e ~ N(0, ({noise} * d(x))^2 / D * I), d(x) = Euclidean distance from x to its nearest other real "
            "vector; queries are the real test-query vectors")},
        "exact": "course_lib.index.ExactIndex (float32 matrix, torch matmul + topk; queries in blocks of at most "
                 f"{EXACT_BLOCK:,} scores)",
        "timing": f"best of {params['repeats']} runs over all {n_q} queries (fewer once the runs of one setting have "
                  f"taken 60 s), {threads} threads; *_cpu_qps divide by this process's CPU seconds (all threads)",
        "curve": curve, "crossover": {c: crossover(curve, clock=c) for c in CLOCKS},
        "at_largest": {c: best_at_recall(curve[-1], clock=c) for c in CLOCKS},
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    partial.unlink()
    save_plot(result, out.with_suffix(".png"))
    return result


CLOCK_NAMES = {"qps": "queries per wall-clock second", "cpu_qps": "queries per CPU-second (threads summed)"}


def _speed_panel(ax, curve: list[dict], clock: str, min_recall: float) -> None:
    """Queries per second (``clock``) against corpus size: exact, HNSW at its ef, HNSW at the bar; crossover."""
    n = [r["n"] for r in curve]
    ax.plot(n, [r[f"exact_{clock}"] for r in curve], "o-", color="k", label="exact (one matrix product)")
    ax.plot(n, [r[f"hnsw_{clock}"] for r in curve], "s-", color="C0", label=f"HNSW, ef={curve[0]['ef']}")
    ok = [(r["n"], b) for r in curve if (b := best_at_recall(r, min_recall, clock)) is not None]
    ax.plot([x for x, _ in ok], [b[clock] for _, b in ok], "^--", color="C1",
            label=f"HNSW, fastest ef with recall@10 ≥ {min_recall}")
    for x, b in ok:
        ax.annotate(f"ef {b['ef']}", (x, b[clock]), textcoords="offset points", xytext=(4, 6), fontsize=7, color="C1")
    cross = crossover(curve, min_recall, clock)
    if cross is not None:
        ax.axvline(cross, color="C2", ls=":", label=f"HNSW faster from n = {cross:,}")
    ax.set(xscale="log", yscale="log", xlabel="corpus size (vectors)", ylabel=CLOCK_NAMES[clock],
           title=f"Search speed as the corpus grows ({'wall clock' if clock == 'qps' else 'CPU time'})")
    ax.legend(fontsize=7, loc="lower left")


def plot_search_scaling(curve: list[dict], min_recall: float = MIN_RECALL):
    """Four panels: queries per wall-clock second and per CPU-second against corpus size (log-log) for exact
    search, HNSW at its ``ef`` and HNSW at the fastest swept ef with recall@10 >= ``min_recall``, the crossover
    marked; HNSW build time and bytes per vector against size; recall@10 against queries per second for each
    swept ef at the largest size. Returns the Figure (matplotlib is imported here, not when the module loads)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    _check_rows(curve, [f"{who}_{c}" for who in ("exact", "hnsw") for c in CLOCKS])
    curve = sorted(curve, key=lambda r: r["n"])
    n = [r["n"] for r in curve]
    fig, ((wall, cpu), (cost, sweep)) = plt.subplots(2, 2, figsize=(12, 8.6))
    _speed_panel(wall, curve, "qps", min_recall)
    _speed_panel(cpu, curve, "cpu_qps", min_recall)
    cost.plot(n, [r["build_seconds"] for r in curve], "s-", color="C0", label="HNSW build (s)")
    cost.set(xscale="log", yscale="log", xlabel="corpus size (vectors)", ylabel="HNSW build seconds (wall clock)",
             title="What the index costs")
    mem = cost.twinx()
    mem.plot(n, [r["hnsw_bytes_per_vector"] for r in curve], "d--", color="C3", label="HNSW bytes / vector")
    mem.plot(n, [r["exact_bytes_per_vector"] for r in curve], "o--", color="k", label="exact bytes / vector")
    mem.set_ylim(0, 1.25 * max(r["hnsw_bytes_per_vector"] for r in curve))
    mem.set_ylabel("bytes per vector")
    mem.grid(False)
    handles, labels = (a + b for a, b in zip(cost.get_legend_handles_labels(), mem.get_legend_handles_labels()))
    cost.legend(handles, labels, fontsize=7, loc="lower right")
    last = curve[-1]
    points = sorted(last["ef_sweep"], key=lambda p: p["ef"])
    for clock, style, color in (("qps", "-", "C0"), ("cpu_qps", "--", "C4")):
        what = "wall clock" if clock == "qps" else "CPU time"
        sweep.plot([p[clock] for p in points], [p["recall_at_10"] for p in points], "o" + style, color=color,
                   label=f"HNSW ({what})")
        sweep.axvline(last[f"exact_{clock}"], color=color, ls=":", lw=1.5,
                      label=f"exact ({what}): {last[f'exact_{clock}']:,.0f} q/s")
    for i, p in enumerate(points):  # right of the wall-clock line, alternately above and below (the top crowds)
        sweep.annotate(f"ef {p['ef']}", (p["qps"], p["recall_at_10"]), textcoords="offset points", fontsize=7,
                       xytext=(5, 4) if i % 2 else (5, -10))
    sweep.axhline(min_recall, color="C1", ls=":", label=f"recall@10 = {min_recall}")
    sweep.set(xscale="log", xlabel="queries per second", ylabel="recall@10 against exact search",
              title=f"What ef buys at n = {last['n']:,}")
    sweep.legend(fontsize=7, loc="lower left")
    for ax in (wall, cpu, cost):  # the measured sizes as ticks: 10k, 300k, 1M
        ax.set_xticks(n, [f"{x / 1e6:g}M" if x >= 1e6 else f"{x / 1e3:g}k" for x in n])
        ax.xaxis.set_minor_formatter(NullFormatter())
    for axis in (wall.yaxis, cpu.yaxis, sweep.xaxis):  # plain numbers at 1, 2, 5 x 10^k, no crowded minor labels
        axis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        axis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    return fig


def save_plot(result: dict, png: Path) -> None:
    """Draw ``plot_search_scaling`` for a ``run`` result into ``png`` (written atomically)."""
    import matplotlib.pyplot as plt

    fig = plot_search_scaling(result["curve"], result["params"]["min_recall"])
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(SETTINGS), default="full")
    parser.add_argument("--out", type=Path, required=True, help="the JSON to write (the PNG goes next to it)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="corpus sizes (default: the preset's)")
    parser.add_argument("--noise", type=float, default=1.0, help="copy noise, in nearest-neighbour distances")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--replot", action="store_true", help="only redraw the PNG from an existing --out JSON")
    parser.add_argument("--resume", action="store_true", help="reuse the sizes saved in --out + '.partial'")
    args = parser.parse_args(argv)
    if args.replot:
        if not args.out.is_file():
            raise SystemExit(f"--replot needs {args.out}; run without --replot first")
        save_plot(json.loads(args.out.read_text()), args.out.with_suffix(".png"))
        return
    run(args.preset, args.out, args.sizes, noise=args.noise, threads=args.threads, resume=args.resume)


if __name__ == "__main__":
    main()
