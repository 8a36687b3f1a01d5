"""Hard-negative mining on small synthetic corpora: the static miner's invariants against a brute-force
ranking (exclusions, rank windows and the rank-counting rule, NV-Retriever's filters and their sign
robustness, the fill, counts, seeds), Conan-embedding's replacement rule and windows, the dynamic miner
(cadence, rescoring with the current model, next-window replacements, history), ANCE's refresh cadence,
a peer check against sentence-transformers' ``mine_hard_negatives`` and argument validation."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.index import ExactIndex, HNSWIndex
from course_lib.mining import (
    AnceRefresher,
    DynamicHardNegativeMiner,
    MinedNegatives,
    conan_window,
    mine_hard_negatives,
    should_replace,
)

N_DOCS, N_QUERIES, DIM = 300, 20, 16


def unit(n: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=1)  # (n, dim)


def corpus(seed: int = 0, n_docs: int = N_DOCS, n_queries: int = N_QUERIES, dim: int = DIM):
    """Random unit docs and queries; query i has 1 + i % 3 positives placed near it (closer for even i), so
    positives rank high and s⁺ sits among the scores of the top candidates. Doc 'd{250 + i}' carries the
    text of query i (a copy of the query, to be excluded when texts are given)."""
    queries, docs = unit(n_queries, dim, seed), unit(n_docs, dim, seed + 1)
    noise = unit(n_docs, dim, seed + 2)
    doc_ids = [f"d{j}" for j in range(n_docs)]
    positives = []
    for i in range(n_queries):
        rows = [3 * i + r for r in range(1 + i % 3)]
        spread = 0.6 if i % 2 == 0 else 1.2
        docs[rows] = F.normalize(queries[i] + spread * noise[rows], dim=1)
        positives.append({doc_ids[r] for r in rows})
    query_texts = [f"query {i}" for i in range(n_queries)]
    doc_texts = [f"doc {j}" for j in range(n_docs)]
    for i in range(n_queries):
        doc_texts[250 + i] = query_texts[i]
        docs[250 + i] = F.normalize(queries[i] + 0.3 * noise[250 + i], dim=0)
    return queries, positives, doc_ids, docs, query_texts, doc_texts


def reference(q: torch.Tensor, docs: torch.Tensor, doc_ids: list, excluded: set) -> dict:
    """Brute force: id -> (rank among non-excluded docs, score) for query vector q."""
    scores = docs @ q  # (N,)
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    order = [j for j in order if doc_ids[j] not in excluded]
    return {doc_ids[j]: (r, float(scores[j])) for r, j in enumerate(order)}


def excluded_by_text(i, positives, doc_ids, query_texts, doc_texts) -> set:
    pos_texts = {doc_texts[doc_ids.index(p)] for p in positives[i]}
    return positives[i] | {d for d, t in zip(doc_ids, doc_texts) if t == query_texts[i] or t in pos_texts}


# ---------------------------------------------------------------------------------------------------------
# mine_hard_negatives: invariants against the brute-force ranking


@pytest.mark.parametrize("filters", [{}, {"relative_margin": 0.05}, {"absolute_margin": 0.1},
                                     {"max_score": 0.5},
                                     {"relative_margin": 0.2, "absolute_margin": 0.05, "max_score": 0.7}])
def test_invariants(filters):
    queries, positives, doc_ids, docs, q_texts, d_texts = corpus()
    lo, hi, k = 3, 40, 8
    mined = mine_hard_negatives(queries, positives, doc_ids, docs, rank_range=(lo, hi), num_negatives=k,
                                query_texts=q_texts, doc_texts=d_texts, **filters)
    assert isinstance(mined, MinedNegatives) and len(mined.ids) == N_QUERIES
    n_fill_rows = 0
    for i in range(N_QUERIES):
        excluded = excluded_by_text(i, positives, doc_ids, q_texts, d_texts)
        ref = reference(queries[i], docs, doc_ids, excluded)
        s_plus = min(float(docs[doc_ids.index(p)] @ queries[i]) for p in positives[i])
        assert mined.positive_scores[i] == pytest.approx(s_plus, abs=1e-6)
        sp = mined.positive_scores[i]
        ids, scores, ranks = mined.ids[i], mined.scores[i], mined.ranks[i]
        assert len(ids) == len(scores) == len(ranks) == k  # fill="random" completes every row
        assert len(set(ids)) == k and not set(ids) & excluded
        assert f"d{250 + i}" not in ids  # the doc carrying the query's own text
        window = [r for r in ranks if r >= 0]
        assert window == sorted(window) and all(lo <= r < hi for r in window)
        assert all(r == -1 for r in ranks[len(window):])  # fill after the window negatives
        for doc, s, r in zip(ids, scores, ranks):
            assert s == pytest.approx(ref[doc][1], abs=1e-5)
            if r >= 0:
                assert r == ref[doc][0]
            # every negative, window or fill, passes the filters (exact float re-check)
            if "relative_margin" in filters:
                assert s <= sp - abs(sp) * filters["relative_margin"]
            if "absolute_margin" in filters:
                assert s + filters["absolute_margin"] <= sp
            if "max_score" in filters:
                assert s <= filters["max_score"]
        n_fill_rows += len(window) < k
    assert mined.n_filled == sum(r == -1 for row in mined.ranks for r in row)
    assert mined.n_short_rows == n_fill_rows
    assert set(mined.n_filtered) == {"absolute_margin", "relative_margin", "max_score"}
    assert all(v == 0 for name, v in mined.n_filtered.items() if name not in filters)
    if filters:
        assert sum(mined.n_filtered.values()) > 0  # the filters bite on this corpus


def test_filter_counts_and_window_candidates_match_brute_force():
    """Kept candidates = the window minus filtered ones; n_filtered counts each filter after the earlier."""
    queries, positives, doc_ids, docs, *_ = corpus()
    lo, hi, m_abs, m_rel = 0, 30, 0.02, 0.1
    mined = mine_hard_negatives(queries, positives, doc_ids, docs, rank_range=(lo, hi), num_negatives=hi,
                                absolute_margin=m_abs, relative_margin=m_rel, fill=None)
    counts = {"absolute_margin": 0, "relative_margin": 0, "max_score": 0}
    for i in range(N_QUERIES):
        ref = reference(queries[i], docs, doc_ids, positives[i])
        sp = mined.positive_scores[i]
        window = sorted((r, d) for d, (r, s) in ref.items() if lo <= r < hi)
        kept = []
        for r, d in window:
            s = mined.scores[i][mined.ids[i].index(d)] if d in mined.ids[i] else ref[d][1]
            if not s + m_abs <= sp:
                counts["absolute_margin"] += 1
            elif not s <= sp - abs(sp) * m_rel:
                counts["relative_margin"] += 1
            else:
                kept.append(d)
        assert mined.ids[i] == kept  # all kept ones, in rank order (num_negatives = window width)
    assert mined.n_filtered == counts
    assert mined.n_short_rows == sum(len(row) < hi for row in mined.ids) and mined.n_filled == 0


def test_rank_counting_rule_skips_positives_and_query_text():
    """Ranks count only non-excluded docs: with the positive at overall rank 0 and the query's text at
    overall rank 1, window (0, 1) returns the overall third doc, with rank 0."""
    q = torch.tensor([[1.0, 0.0]])
    sims = [0.99, 0.95, 0.9, 0.8, 0.7, 0.1]  # overall order d0 > d1 > ... > d5
    docs = torch.tensor([[s, math.sqrt(1 - s * s)] for s in sims])
    ids = [f"d{j}" for j in range(6)]
    texts = ["pos", "the query", "a", "b", "c", "e"]
    mined = mine_hard_negatives(q, [{"d0"}], ids, docs, rank_range=(0, 1), num_negatives=1,
                                query_texts=["the query"], doc_texts=texts, fill=None)
    assert mined.ids == [["d2"]] and mined.ranks == [[0]]
    mined = mine_hard_negatives(q, ["d0"], ids, docs, rank_range=(1, 3), num_negatives=2, fill=None)
    assert mined.ids == [["d2", "d3"]] and mined.ranks == [[1, 2]]  # without texts, d1 is rank 0


def test_positives_never_eat_the_window():
    """Many top-ranked positives: the search goes deep enough that the window is still full."""
    queries, _, doc_ids, docs, *_ = corpus()
    ref = reference(queries[0], docs, doc_ids, set())
    top = sorted(ref, key=lambda d: ref[d][0])
    positives = [set(top[:12])] + [{top[-1]}] * (N_QUERIES - 1)
    mined = mine_hard_negatives(queries, positives, doc_ids, docs, rank_range=(0, 5), num_negatives=5,
                                fill=None)
    assert mined.ids[0] == top[12:17] and mined.ranks[0] == [0, 1, 2, 3, 4]
    assert mined.n_short_rows == 0


def test_positive_need_not_be_retrieved_for_s_plus():
    """s⁺ is the minimum positive score, computed directly, even for a positive far below the window."""
    queries, _, doc_ids, docs, *_ = corpus()
    ref = reference(queries[0], docs, doc_ids, set())
    bottom, top = max(ref, key=lambda d: ref[d][0]), min(ref, key=lambda d: ref[d][0])
    mined = mine_hard_negatives(queries[:1], [{top, bottom}], doc_ids, docs, rank_range=(0, 5),
                                num_negatives=5, absolute_margin=0.0, fill=None)
    assert mined.positive_scores[0] == pytest.approx(ref[bottom][1], abs=1e-6)
    assert mined.ids == [[]] and mined.n_filtered["absolute_margin"] == 5 and mined.n_short_rows == 1


def test_sign_robust_relative_margin():
    """s⁺ = −0.5, m = 0.05: the threshold is s⁺ − |s⁺|·m = −0.525, so a candidate at −0.49 (above s⁺!) is
    dropped; the naive threshold s⁺·(1 − m) = −0.475 would keep it."""
    def vec(s):
        return [s, math.sqrt(1 - s * s)]
    q = torch.tensor([[1.0, 0.0]])
    docs = torch.tensor([vec(-0.5), vec(-0.49), vec(-0.6)])
    ids = ["pos", "close", "far"]
    mined = mine_hard_negatives(q, [{"pos"}], ids, docs, rank_range=(0, 2), num_negatives=2,
                                relative_margin=0.05, fill=None)
    s_plus, s_close = mined.positive_scores[0], -0.49
    assert s_plus == pytest.approx(-0.5)
    assert mined.ids == [["far"]] and mined.n_filtered["relative_margin"] == 1
    naive_threshold = s_plus * (1 - 0.05)
    assert s_close <= naive_threshold  # the sign-dependent formula would keep the false negative
    assert not s_close <= s_plus - abs(s_plus) * 0.05


@settings(max_examples=40, deadline=None)
@given(s_plus=st.floats(-1, 1), m=st.floats(0, 0.99),
       scores=st.lists(st.floats(-1, 1), min_size=1, max_size=6))
def test_relative_filter_property(s_plus, m, scores):
    """For any sign of s⁺, a kept candidate satisfies s ≤ s⁺ − |s⁺|·m ≤ s⁺ and a dropped one violates it."""
    def vec(s):
        return [s, math.sqrt(max(0.0, 1 - s * s))]
    q = torch.tensor([[1.0, 0.0]])
    docs = torch.tensor([vec(s_plus)] + [vec(s) for s in scores])
    ids = list(range(len(docs)))
    mined = mine_hard_negatives(q, [0], ids, docs, rank_range=(0, len(scores)), num_negatives=len(scores),
                                relative_margin=m, fill=None)
    sp = mined.positive_scores[0]
    for s in mined.scores[0]:
        assert s <= sp - abs(sp) * m <= sp
    assert len(mined.ids[0]) + mined.n_filtered["relative_margin"] == len(scores)


def test_fill_counts_and_fill_none():
    """A window narrower than num_negatives: every row is short; the fill tops it up with non-positive,
    non-duplicate docs; fill=None leaves the rows short."""
    queries, positives, doc_ids, docs, q_texts, d_texts = corpus()
    kw = dict(rank_range=(0, 3), num_negatives=7, query_texts=q_texts, doc_texts=d_texts)
    filled = mine_hard_negatives(queries, positives, doc_ids, docs, **kw)
    short = mine_hard_negatives(queries, positives, doc_ids, docs, fill=None, **kw)
    assert filled.n_short_rows == short.n_short_rows == N_QUERIES
    assert filled.n_filled == 4 * N_QUERIES and short.n_filled == 0
    assert all(len(row) == 3 for row in short.ids) and all(len(row) == 7 for row in filled.ids)
    for i, row in enumerate(filled.ids):
        assert row[:3] == short.ids[i] and filled.ranks[i][3:] == [-1] * 4
        assert len(set(row)) == 7 and not set(row) & excluded_by_text(i, positives, doc_ids, q_texts, d_texts)


def test_fill_never_picks_a_positive_when_positives_dominate_the_corpus():
    """FlagEmbedding's fill drew random corpus texts and could return a positive; here, with 8 positives in
    a 12-doc corpus, the fill uses exactly the 4 other docs, and a row that cannot be completed stays
    short."""
    docs, ids = unit(12, 4, 5), [f"d{j}" for j in range(12)]
    positives = [set(ids[:8]), set(ids[:8])]
    mined = mine_hard_negatives(unit(2, 4, 6), positives, ids, docs, rank_range=(0, 2), num_negatives=4)
    assert [set(row) for row in mined.ids] == [set(ids[8:])] * 2 and mined.n_filled == 4
    mined = mine_hard_negatives(unit(2, 4, 6), positives, ids, docs, rank_range=(0, 2), num_negatives=6)
    assert all(set(row) == set(ids[8:]) and len(row) == 4 for row in mined.ids)
    assert mined.n_short_rows == 2 and mined.n_filled == 4  # 2 window + 2 fill per row, 2 missing


def test_seed_reproducibility():
    queries, positives, doc_ids, docs, *_ = corpus()
    kw = dict(rank_range=(10, 110), num_negatives=5)
    a = mine_hard_negatives(queries, positives, doc_ids, docs, seed=1, **kw)
    b = mine_hard_negatives(queries, positives, doc_ids, docs, seed=1, **kw)
    c = mine_hard_negatives(queries, positives, doc_ids, docs, seed=2, **kw)
    assert a == b
    assert a.ids != c.ids
    assert sum(x != y for x, y in zip(a.ids, c.ids)) >= N_QUERIES // 2


def test_hnsw_index_gives_the_exact_answer_on_a_small_corpus():
    queries, positives, doc_ids, docs, *_ = corpus()
    hnsw = HNSWIndex(DIM, ef=400)
    hnsw.add(doc_ids, docs)
    kw = dict(rank_range=(2, 30), num_negatives=6, relative_margin=0.05)
    exact = mine_hard_negatives(queries, positives, doc_ids, docs, **kw)
    approx = mine_hard_negatives(queries, positives, doc_ids, docs, index=hnsw, **kw)
    assert approx.ids == exact.ids and approx.ranks == exact.ranks


# ---------------------------------------------------------------------------------------------------------
# Conan-embedding: replacement rule and windows


@pytest.mark.parametrize("s_init, s_now, paper, robust", [
    (0.60, 0.50, True, True),     # 0.575 < 0.60, |0.50| < 0.8
    (0.60, 0.53, False, False),   # 0.6095 >= 0.60
    (0.95, 0.81, False, False),   # 0.9315 < 0.95 but |0.81| >= 0.8
    (-0.50, -0.50, True, False),  # unchanged: the paper's ×1.15 gives -0.575 < -0.5 and fires wrongly
    (-0.50, -0.45, True, False),  # the negative got HARDER; the paper's rule still fires
    (-0.30, -0.60, True, True),   # it got much easier: both fire
    (0.10, -0.20, True, True),    # crossed zero downwards: both fire
    (-0.50, -0.85, False, False),  # |current| >= 0.8: neither
])
def test_conan_truth_table(s_init, s_now, paper, robust):
    assert should_replace(s_init, s_now) is paper
    assert should_replace(s_init, s_now, sign_robust=True) is robust


def test_should_replace_vectorised():
    init = torch.tensor([0.60, 0.60, 0.95, -0.50, -0.50])
    now = torch.tensor([0.50, 0.53, 0.81, -0.50, -0.45])
    assert should_replace(init, now).tolist() == [True, False, False, True, True]
    assert should_replace(init, now, sign_robust=True).tolist() == [True, False, False, False, False]


def test_conan_windows_disjoint_contiguous_and_skip_top_ten():
    for n in (1, 4, 15):
        windows = [conan_window(i, n) for i in range(1, 6)]
        assert windows[0] == (10, 10 + n)
        for (_, hi), (lo, _) in zip(windows, windows[1:]):
            assert hi == lo  # contiguous, hence disjoint
        assert all(hi - lo == n and lo >= 10 for lo, hi in windows)
    assert conan_window(3, 5, offset=0) == (10, 15)


# ---------------------------------------------------------------------------------------------------------
# DynamicHardNegativeMiner


class Counter:
    """An encoder stub: returns rows of a fixed embedding table and counts its calls."""

    def __init__(self, table: torch.Tensor, key):
        self.table, self.key, self.calls = table, key, 0

    def __call__(self, items):
        self.calls += 1
        return self.table[[self.key(x) for x in items]]


def dynamic_setup(per="example", n=4, **kw):
    queries, positives, doc_ids, docs = unit(6, 8, 10), [], [f"d{j}" for j in range(120)], unit(120, 8, 11)
    for i in range(6):
        docs[i] = F.normalize(queries[i] + 0.3 * unit(1, 8, 20 + i)[0], dim=0)
        positives.append({doc_ids[i]})
    initial = mine_hard_negatives(queries, positives, doc_ids, docs, rank_range=conan_window(1, n),
                                  num_negatives=n, fill=None)
    miner = DynamicHardNegativeMiner(initial, positives, doc_ids, per=per, **kw)
    return miner, queries, positives, doc_ids, docs


def encoders(queries, docs):
    return Counter(queries, lambda e: e), Counter(docs, lambda d: int(d[1:]))


def test_dynamic_no_check_off_cadence():
    miner, queries, _, _, docs = dynamic_setup(check_every=100)
    enc_q, enc_d = encoders(queries, docs)
    for step in (0, 1, 50, 99, 101, 150, 250):
        assert miner.maybe_update(step, enc_q, enc_d) == 0
    assert enc_q.calls == enc_d.calls == 0
    assert miner.maybe_update(100, enc_q, enc_d) == 0  # same model: scores unchanged, nothing fires
    assert enc_q.calls == 1 and enc_d.calls == 1
    assert all(h == [] for h in miner.history) and miner.window == [1] * 6
    late, *_ = dynamic_setup(check_every=100, start=30)  # mined at step 30: checks at 130, 230, ...
    assert [s for s in range(0, 300) if late.due(s)] == [130, 230]


@pytest.mark.parametrize("per", ["example", "negative"])
def test_dynamic_rescores_with_current_model_and_replaces_from_next_window(per):
    miner, queries, positives, doc_ids, docs = dynamic_setup(per=per, check_every=100)
    assert all(0.0 < s for row in miner.initial_scores for s in row)  # positive scores: no sign pitfall
    before = [list(r) for r in miner.negatives]
    miner.maybe_update(100, *encoders(queries, docs))
    same_model = [list(r) for r in miner.current_scores]
    for a, b in zip(same_model, miner.initial_scores):
        assert a == pytest.approx(b, abs=1e-5)
    # the "trained" model: queries moved, so the old negatives are no longer hard
    new_q = F.normalize(queries + 1.5 * unit(6, 8, 30), dim=1)
    replaced = miner.maybe_update(200, *encoders(new_q, docs))
    assert replaced > 0
    expected = 0
    for e in range(6):
        cur = [float(docs[int(d[1:])] @ new_q[e]) for d in before[e]]
        if per == "example":
            fired = list(range(4)) if should_replace(sum(miner_init(e, before, queries, docs)) / 4,
                                                     sum(cur) / 4) else []
        else:
            fired = [j for j in range(4) if should_replace(miner_init(e, before, queries, docs)[j], cur[j])]
        expected += len(fired)
        unchanged = [j for j in range(4) if j not in fired]
        assert [miner.negatives[e][j] for j in unchanged] == [before[e][j] for j in unchanged]
        assert [miner.current_scores[e][j] for j in unchanged] == pytest.approx([cur[j] for j in unchanged],
                                                                                abs=1e-5)
        assert [h[1] for h in miner.history[e]] == [before[e][j] for j in fired]
        assert [h[3] for h in miner.history[e]] == pytest.approx([cur[j] for j in fired], abs=1e-5)
        assert miner.window[e] == (2 if fired else 1)
        ref = reference(new_q[e], docs, doc_ids, positives[e])
        lo, hi = conan_window(2, 4)
        for step, old, new, _ in miner.history[e]:
            j = miner.negatives[e].index(new)
            assert step == 200 and lo <= ref[new][0] < hi and miner.ranks[e][j] == ref[new][0]
            assert miner.initial_scores[e][j] == pytest.approx(ref[new][1], abs=1e-5)  # new baseline
        assert len(set(miner.negatives[e])) == len(miner.negatives[e])
        assert not set(miner.negatives[e]) & positives[e]
    assert replaced == expected
    assert [list(r) for r in miner.current_scores] != same_model


def miner_init(e, before, queries, docs):
    """The initial scores of example e's original negatives (initial model)."""
    return [float(docs[int(d[1:])] @ queries[e]) for d in before[e]]


def test_dynamic_search_callable_matches_default_and_examples_subset():
    """Passing search() built from the current model gives what the default (re-encode the corpus) gives;
    ``examples`` restricts the check to those rows."""
    new_q = F.normalize(unit(6, 8, 10) + 1.5 * unit(6, 8, 30), dim=1)
    a, queries, _, doc_ids, docs = dynamic_setup(check_every=10)
    b, *_ = dynamic_setup(check_every=10)
    index = ExactIndex(8)
    index.add(doc_ids, docs)
    enc_q, enc_d = encoders(new_q, docs)
    assert a.maybe_update(10, enc_q, enc_d) == b.maybe_update(10, *encoders(new_q, docs), search=index.search)
    assert a.negatives == b.negatives and a.history == b.history
    assert enc_d.calls == 2  # negatives, then the whole corpus for the fresh search
    wide, *_ = dynamic_setup(n=16, check_every=10)  # 6 × 16 negatives: at least half of the 120 documents
    wide_ref, *_ = dynamic_setup(n=16, check_every=10)
    enc_wide = Counter(docs, lambda x: int(x[1:]))
    assert len({x for row in wide.negatives for x in row}) * 2 >= 120
    assert wide.maybe_update(10, Counter(new_q, lambda e: e), enc_wide) > 0
    assert enc_wide.calls == 1  # the corpus once: the negatives' rows come from it
    wide_ref.maybe_update(10, Counter(new_q, lambda e: e), Counter(docs, lambda x: int(x[1:])), search=index.search)
    assert wide.negatives == wide_ref.negatives and wide.history == wide_ref.history
    c, *_ = dynamic_setup(check_every=10)
    untouched = [list(c.negatives[e]) for e in (0, 2, 4, 5)]
    assert a.history[1] and a.history[2] and a.history[3]  # these fire under the new model
    replaced = c.maybe_update(10, *encoders(new_q, docs), examples=[1, 3])
    assert replaced == len(c.history[1]) + len(c.history[3]) > 0
    assert all(c.history[e] == [] and c.window[e] == 1 for e in (0, 2, 4, 5))
    assert [c.negatives[e] for e in (0, 2, 4, 5)] == untouched


def test_dynamic_second_replacement_uses_third_window():
    miner, queries, positives, doc_ids, docs = dynamic_setup(check_every=1)
    q1 = F.normalize(queries + 1.5 * unit(6, 8, 30), dim=1)
    q2 = F.normalize(queries + 1.5 * unit(6, 8, 31), dim=1)
    miner.maybe_update(1, *encoders(q1, docs))
    first = list(miner.window)
    miner.maybe_update(2, *encoders(q2, docs))
    for e in range(6):
        if miner.window[e] == 3:
            ref = reference(q2[e], docs, doc_ids, positives[e])
            news = [h[2] for h in miner.history[e] if h[0] == 2]
            assert news and all(conan_window(3, 4)[0] <= ref[d][0] < conan_window(3, 4)[1] for d in news)
    assert any(w == 3 for w in miner.window) and all(w >= f for w, f in zip(miner.window, first))


# ---------------------------------------------------------------------------------------------------------
# AnceRefresher


def test_ance_refresh_cadence_and_staleness():
    queries, positives, doc_ids, docs, *_ = corpus()
    refresher = AnceRefresher(every=10, rank_range=(0, 200), num_negatives=1, seed=3)
    assert [s for s in range(0, 61) if refresher.due(s)] == [10, 20, 30, 40, 50, 60]
    late = AnceRefresher(every=10, start=7)  # counted from the first build, not from step 0
    assert [s for s in range(0, 40) if late.due(s)] == [17, 27, 37]
    checkpoints = {}
    for step in range(0, 55):
        if step == 0 or refresher.due(step):
            checkpoints[step] = F.normalize(docs + 0.02 * step * unit(N_DOCS, DIM, 100 + step), dim=1)
            refresher.refresh(step, queries, positives, doc_ids, checkpoints[step])
        mined = refresher.negatives_at(step)
        assert refresher.built_at_step <= step < refresher.built_at_step + 10
        ckpt = checkpoints[refresher.built_at_step]
        for i, (row, ranks) in enumerate(zip(mined.ids, mined.ranks)):
            assert len(row) == 1 and not set(row) & positives[i]
            ref = reference(queries[i], ckpt, doc_ids, positives[i])
            assert ranks[0] == ref[row[0]][0] < 200  # from the top 200 of the index built at built_at_step
    assert refresher.build_steps == [0, 10, 20, 30, 40, 50]
    with pytest.raises(ValueError, match="built later"):
        refresher.negatives_at(49)
    with pytest.raises(ValueError, match="steps must increase"):
        refresher.refresh(50, queries, positives, doc_ids, docs)


# ---------------------------------------------------------------------------------------------------------
# Peer check against sentence-transformers (needs the `datasets` package)


def test_peer_sentence_transformers():
    """Unfiltered, both count ranks among non-positive docs, so ST's 'top' strategy with range_min=lo and
    num_negatives=hi − lo returns exactly our window; with relative_margin (ST filters before ranking), its
    top-1 is our highest-ranked kept candidate."""
    datasets = pytest.importorskip("datasets", reason="sentence-transformers' mine_hard_negatives takes a "
                                   "datasets.Dataset and `datasets` is not installed")
    from sentence_transformers.util import mine_hard_negatives as st_mine

    queries, positives, doc_ids, docs, *_ = corpus()
    positives = [{sorted(p)[0]} for p in positives]  # one positive per query, one Dataset row each
    q_text = [f"q{i}" for i in range(N_QUERIES)]
    vectors = {**dict(zip(q_text, queries)), **dict(zip(doc_ids, docs))}

    class Stub:  # the parts of SentenceTransformer that mine_hard_negatives uses
        device = torch.device("cpu")
        model_card_data = type("Card", (), {"base_model": "stub"})()

        def encode_query(self, texts, **_):
            return torch.stack([vectors[t] for t in texts]).numpy()

        encode_document = encode_query

        def similarity(self, a, b):
            return torch.as_tensor(a) @ torch.as_tensor(b).T

        def similarity_pairwise(self, a, b):
            return (torch.as_tensor(a) * torch.as_tensor(b)).sum(-1)

    data = datasets.Dataset.from_dict({"query": q_text, "positive": [next(iter(p)) for p in positives]})
    lo, hi = 5, 12
    ours = mine_hard_negatives(queries, positives, doc_ids, docs, rank_range=(lo, hi), num_negatives=hi - lo)
    theirs = st_mine(data, Stub(), corpus=doc_ids, range_min=lo, range_max=hi, num_negatives=hi - lo,
                     sampling_strategy="top", output_format="n-tuple", verbose=False)
    assert len(theirs) == N_QUERIES
    for i, row in enumerate(theirs):
        assert [row[f"negative_{j}"] for j in range(1, hi - lo + 1)] == ours.ids[i]
    ours = mine_hard_negatives(queries, positives, doc_ids, docs, rank_range=(0, 100), num_negatives=100,
                               relative_margin=0.05, fill=None)
    theirs = st_mine(data, Stub(), corpus=doc_ids, range_max=100, num_negatives=1, relative_margin=0.05,
                     sampling_strategy="top", output_format="n-tuple", verbose=False)
    assert len(theirs) == N_QUERIES
    for i, row in enumerate(theirs):
        assert row["negative_1"] == ours.ids[i][0]


# ---------------------------------------------------------------------------------------------------------
# Validation


def _args():
    queries, positives, doc_ids, docs, *_ = corpus()
    return dict(query_emb=queries, positive_ids=positives, doc_ids=doc_ids, doc_emb=docs)


@pytest.mark.parametrize("change, error, message", [
    ({"query_emb": torch.zeros(3)}, ValueError, "2-D"),
    ({"query_emb": torch.zeros(2, 3, dtype=torch.long)}, TypeError, "floating"),
    ({"doc_emb": torch.zeros(N_DOCS, DIM + 1)}, ValueError, "same model"),
    ({"doc_emb": torch.full((N_DOCS, DIM), math.nan)}, ValueError, "NaN"),
    ({"doc_ids": [f"d{j}" for j in range(N_DOCS - 1)]}, ValueError, "unique ids"),
    ({"doc_ids": ["same"] * N_DOCS}, ValueError, "unique ids"),
    ({"positive_ids": [{"d0"}]}, ValueError, "one entry each"),
    ({"positive_ids": [set()] * N_QUERIES}, ValueError, "at least one positive"),
    ({"positive_ids": [{"nope"}] * N_QUERIES}, ValueError, "not in doc_ids"),
    ({"rank_range": (5, 5)}, ValueError, "rank_range\\[1\\] must be >= 6"),
    ({"rank_range": (-1, 5)}, ValueError, "rank_range\\[0\\] must be >= 0"),
    ({"rank_range": (0, N_DOCS + 1)}, ValueError, "past the corpus"),
    ({"rank_range": 10}, TypeError, "pair"),
    ({"num_negatives": 0}, ValueError, "num_negatives must be >= 1"),
    ({"relative_margin": 1.0}, ValueError, "relative_margin must be in \\[0.0, 1.0\\)"),
    ({"absolute_margin": -0.1}, ValueError, "absolute_margin must be finite and >= 0"),
    ({"max_score": math.inf}, ValueError, "max_score must be finite"),
    ({"absolute_margin": "0.1"}, TypeError, "real number"),
    ({"fill": "top"}, ValueError, "fill must be"),
    ({"query_texts": ["q"] * N_QUERIES}, ValueError, "both query_texts and doc_texts"),
    ({"query_texts": ["q"], "doc_texts": ["d"]}, ValueError, "query_texts"),
    ({"index": object()}, TypeError, "search"),
])
def test_mine_validation(change, error, message):
    with pytest.raises(error, match=message):
        mine_hard_negatives(**{**_args(), **change})


def test_index_must_hold_the_corpus():
    args = _args()
    small = ExactIndex(DIM)
    small.add(args["doc_ids"][:10], args["doc_emb"][:10])
    with pytest.raises(ValueError, match="index exactly doc_ids"):
        mine_hard_negatives(**args, index=small)


def test_other_validation():
    with pytest.raises(ValueError, match="i must be >= 1"):
        conan_window(0, 5)
    with pytest.raises(ValueError, match="factor must be finite and >= 1"):
        should_replace(0.5, 0.4, factor=0.9)
    with pytest.raises(ValueError, match="every must be >= 1"):
        AnceRefresher(0)
    with pytest.raises(ValueError, match="no index built yet"):
        AnceRefresher(5).negatives_at(3)
    miner, queries, _, _, docs = dynamic_setup(check_every=10)
    with pytest.raises(ValueError, match="per must be"):
        dynamic_setup(per="batch")
    with pytest.raises(ValueError, match="examples must be indices"):
        miner.maybe_update(10, *encoders(queries, docs), examples=[99])
    with pytest.raises(ValueError, match="one embedding per input"):
        miner.maybe_update(10, lambda rows: queries[:2], encoders(queries, docs)[1])
    with pytest.raises(TypeError, match="MinedNegatives"):
        DynamicHardNegativeMiner({"ids": []}, [], [])


def test_peer_sentence_transformers_with_minilm():
    """The same check on real data and a real model: 40 WordNet training pairs, a 400-document corpus that holds
    their positives, all-MiniLM-L6-v2 loaded by sentence-transformers from the installed package (offline).
    Both rank the corpus by cosine and count ranks after removing the positive, so with ST's 'top' strategy
    over ranks [lo, hi) and our window (lo, hi) without sampling they return the same documents in the same
    order. Where they differ (not exercised here): ST works on texts, so two documents with the same text are
    one candidate; with margins it filters before counting ranks (the test above); and it does not fill short
    rows, where ours does unless ``fill=None`` (as here)."""
    datasets = pytest.importorskip("datasets", reason="sentence-transformers' mine_hard_negatives takes a "
                                   "datasets.Dataset and `datasets` is not installed")
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives as st_mine

    from course_lib.data import load_dataset
    from course_lib.models import minilm_dir

    data = load_dataset("wordnet", "fast")
    pairs = [e for e in data.train if e.positive in data.corpus][:40]
    doc_ids = sorted({e.positive for e in pairs} | set(sorted(data.corpus)[:400 - len(pairs)]))
    texts = [data.corpus[d] for d in doc_ids]
    assert len(set(texts)) == len(texts)  # ST works on texts: ids and texts must map one to one
    model = SentenceTransformer(str(minilm_dir()), device="cpu")
    q_emb = torch.as_tensor(model.encode([e.query for e in pairs], normalize_embeddings=True))  # (40, 384)
    d_emb = torch.as_tensor(model.encode(texts, normalize_embeddings=True))  # (400, 384)
    lo, hi = 3, 10
    ours = mine_hard_negatives(q_emb, [e.positive for e in pairs], doc_ids, d_emb, rank_range=(lo, hi),
                               num_negatives=hi - lo, fill=None)
    dataset = datasets.Dataset.from_dict({"query": [e.query for e in pairs],
                                          "positive": [data.corpus[e.positive] for e in pairs]})
    theirs = st_mine(dataset, model, corpus=texts, range_min=lo, range_max=hi, num_negatives=hi - lo,
                     sampling_strategy="top", output_format="n-tuple", verbose=False, batch_size=64)
    assert len(theirs) == len(pairs)
    text_of = dict(zip(doc_ids, texts))
    agree = [[row[f"negative_{j}"] for j in range(1, hi - lo + 1)] == [text_of[d] for d in ours.ids[i]]
             for i, row in enumerate(theirs)]
    assert sum(agree) >= len(pairs) - 1, f"{len(pairs) - sum(agree)} rows differ"  # a float tie may swap one pair
