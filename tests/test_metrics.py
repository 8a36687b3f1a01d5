"""Ranking metrics against hand-computed cases, their error messages, and a few properties."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.metrics import KS, mrr_at_k, ndcg_at_k, recall_at_k, retrieval_metrics

LOG2_3 = math.log2(3)  # the nDCG discount of rank 2
LOG2_5 = math.log2(5)  # the nDCG discount of rank 4


# ---------------------------------------------------------------------------------------------------------
# one relevant document


def test_single_relevant_at_rank_2():
    ranked, relevant = [["a", "b", "c"]], [{"b"}]
    assert recall_at_k(ranked, relevant, 1) == 0.0  # b is not in the top 1: 0/1
    assert recall_at_k(ranked, relevant, 2) == 1.0  # 1/1
    assert mrr_at_k(ranked, relevant, 10) == pytest.approx(1 / 2)  # first hit at rank 2: 1/2
    assert mrr_at_k(ranked, relevant, 1) == 0.0  # not within the top 1
    # nDCG@10 = (1/log2(3)) / (1/log2(2)) = 1/log2(3) ≈ 0.6309
    assert ndcg_at_k(ranked, relevant, 10) == pytest.approx(1 / LOG2_3)
    assert ndcg_at_k(ranked, relevant, 1) == 0.0


def test_relevant_at_rank_1_is_perfect():
    ranked, relevant = [["a", "b", "c"]], [{"a"}]
    for k in (1, 2, 3, 10):
        assert recall_at_k(ranked, relevant, k) == 1.0
        assert mrr_at_k(ranked, relevant, k) == 1.0
        assert ndcg_at_k(ranked, relevant, k) == pytest.approx(1.0)


def test_mean_over_queries():
    ranked = [["a", "b", "c"], ["x", "y", "z"], ["p", "q", "r"]]
    relevant = [{"a"}, {"nowhere"}, {"r"}]
    # recall@3: (1 + 0 + 1) / 3 = 2/3
    assert recall_at_k(ranked, relevant, 3) == pytest.approx(2 / 3)
    # MRR@10: (1/1 + 0 + 1/3) / 3 = 4/9
    assert mrr_at_k(ranked, relevant, 10) == pytest.approx(4 / 9)
    # nDCG@10: (1 + 0 + (1/log2(4)) / 1) / 3 = (1 + 1/2) / 3 = 1/2
    assert ndcg_at_k(ranked, relevant, 10) == pytest.approx(1 / 2)


# ---------------------------------------------------------------------------------------------------------
# several relevant documents


def test_multiple_relevant():
    ranked, relevant = [["x", "a", "y", "b", "z"]], [{"a", "b", "c"}]
    assert recall_at_k(ranked, relevant, 1) == 0.0  # 0/3
    assert recall_at_k(ranked, relevant, 2) == pytest.approx(1 / 3)  # {a}: 1/3
    assert recall_at_k(ranked, relevant, 4) == pytest.approx(2 / 3)  # {a, b}: 2/3
    assert recall_at_k(ranked, relevant, 5) == pytest.approx(2 / 3)  # c is never retrieved
    assert mrr_at_k(ranked, relevant, 10) == pytest.approx(1 / 2)  # the first hit (a) is at rank 2
    # nDCG@4: DCG = 1/log2(3) + 1/log2(5) (hits at ranks 2 and 4);
    #         IDCG = 1/log2(2) + 1/log2(3) + 1/log2(4) = 1 + 1/log2(3) + 1/2 (three relevant, k = 4)
    dcg = 1 / LOG2_3 + 1 / LOG2_5
    idcg = 1 + 1 / LOG2_3 + 1 / 2
    assert ndcg_at_k(ranked, relevant, 4) == pytest.approx(dcg / idcg)


def test_ndcg_ideal_is_cut_at_k():
    # three relevant documents, k = 2: the ideal ranking only has room for two of them,
    # DCG = IDCG = 1 + 1/log2(3), so nDCG@2 = 1 (not (1 + 1/log2(3)) / (1 + 1/log2(3) + 1/2))
    ranked, relevant = [["a", "b", "c"]], [{"a", "b", "c"}]
    assert ndcg_at_k(ranked, relevant, 2) == pytest.approx(1.0)
    # but recall@2 = 2/3
    assert recall_at_k(ranked, relevant, 2) == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------------------------------
# k beyond the length of the ranking


def test_k_beyond_ranking_length():
    ranked, relevant = [["a", "b"]], [{"b"}]
    assert recall_at_k(ranked, relevant, 100) == 1.0  # 1/1
    assert mrr_at_k(ranked, relevant, 100) == pytest.approx(1 / 2)
    assert ndcg_at_k(ranked, relevant, 100) == pytest.approx(1 / LOG2_3)  # (1/log2(3)) / 1


def test_k_beyond_ranking_with_unretrieved_relevant():
    ranked, relevant = [["a", "b"]], [{"b", "z"}]
    assert recall_at_k(ranked, relevant, 100) == pytest.approx(1 / 2)  # 1/2
    # DCG = 1/log2(3); IDCG = 1 + 1/log2(3) (two relevant documents, min(2, 100) = 2 ideal slots)
    assert ndcg_at_k(ranked, relevant, 100) == pytest.approx((1 / LOG2_3) / (1 + 1 / LOG2_3))


def test_empty_ranking_for_a_query_scores_zero():
    ranked, relevant = [[], ["a"]], [{"a"}, {"a"}]
    assert recall_at_k(ranked, relevant, 5) == pytest.approx(1 / 2)  # (0 + 1) / 2
    assert mrr_at_k(ranked, relevant, 5) == pytest.approx(1 / 2)
    assert ndcg_at_k(ranked, relevant, 5) == pytest.approx(1 / 2)


# ---------------------------------------------------------------------------------------------------------
# retrieval_metrics


def test_retrieval_metrics_keys_and_values():
    ranked = [["x", "a", "y", "b", "z"], ["c", "d"]]
    relevant = [{"a", "b"}, {"c"}]
    out = retrieval_metrics(ranked, relevant, ks=(1, 2, 5))
    assert set(out) == {"recall@1", "recall@2", "recall@5", "mrr@10", "ndcg@10"}
    # recall@1: (0/2 + 1/1) / 2 = 1/2; recall@2: (1/2 + 1) / 2 = 3/4; recall@5: (2/2 + 1) / 2 = 1
    assert out["recall@1"] == pytest.approx(1 / 2)
    assert out["recall@2"] == pytest.approx(3 / 4)
    assert out["recall@5"] == pytest.approx(1.0)
    # MRR@10: (1/2 + 1/1) / 2 = 3/4
    assert out["mrr@10"] == pytest.approx(3 / 4)
    # nDCG@10, query 1: DCG = 1/log2(3) + 1/log2(5), IDCG = 1 + 1/log2(3); query 2: 1
    q1 = (1 / LOG2_3 + 1 / LOG2_5) / (1 + 1 / LOG2_3)
    assert out["ndcg@10"] == pytest.approx((q1 + 1) / 2)
    for value in out.values():
        assert isinstance(value, float)


def test_retrieval_metrics_default_ks():
    out = retrieval_metrics([["a"]], [{"a"}])
    assert set(out) == {f"recall@{k}" for k in KS} | {"mrr@10", "ndcg@10"}


# ---------------------------------------------------------------------------------------------------------
# errors


METRICS = [recall_at_k, mrr_at_k, ndcg_at_k]


@pytest.mark.parametrize("metric", METRICS)
def test_mismatched_lengths(metric):
    with pytest.raises(ValueError, match="2 rankings but 1 relevance sets"):
        metric([["a"], ["b"]], [{"a"}], 1)


@pytest.mark.parametrize("metric", METRICS)
def test_empty_lists(metric):
    with pytest.raises(ValueError, match="empty"):
        metric([], [], 1)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("k", [0, -1, 1.5, "3"])
def test_bad_k(metric, k):
    with pytest.raises(ValueError, match="k must be a positive int"):
        metric([["a"]], [{"a"}], k)


@pytest.mark.parametrize("metric", METRICS)
def test_empty_relevant_set(metric):
    with pytest.raises(ValueError, match="no relevant document"):
        metric([["a"], ["b"]], [{"a"}, set()], 1)


def test_retrieval_metrics_propagates_errors():
    with pytest.raises(ValueError, match="k must be a positive int"):
        retrieval_metrics([["a"]], [{"a"}], ks=(0, 1))


# ---------------------------------------------------------------------------------------------------------
# properties

DOC_IDS = [f"d{i}" for i in range(12)]


@st.composite
def ranking_problems(draw):
    """A few queries, each with a ranking (unique ids, possibly short) and a non-empty relevant set."""
    n = draw(st.integers(1, 4))
    ranked, relevant = [], []
    for _ in range(n):
        ranked.append(draw(st.permutations(DOC_IDS)).copy()[: draw(st.integers(0, len(DOC_IDS)))])
        relevant.append(set(draw(st.lists(st.sampled_from(DOC_IDS), min_size=1, max_size=5, unique=True))))
    return ranked, relevant


@settings(max_examples=150, deadline=None)
@given(ranking_problems(), st.integers(1, 15))
def test_metrics_are_in_unit_interval(problem, k):
    ranked, relevant = problem
    for metric in METRICS:
        value = metric(ranked, relevant, k)
        assert 0.0 <= value <= 1.0 + 1e-12, (metric.__name__, value)


@settings(max_examples=150, deadline=None)
@given(ranking_problems())
def test_recall_is_non_decreasing_in_k(problem):
    ranked, relevant = problem
    recalls = [recall_at_k(ranked, relevant, k) for k in range(1, 15)]
    assert all(a <= b + 1e-12 for a, b in zip(recalls, recalls[1:])), recalls


@settings(max_examples=150, deadline=None)
@given(ranking_problems(), st.integers(1, 15))
def test_perfect_ranking_scores_one(problem, k):
    _, relevant = problem
    # every relevant document first, then the rest
    perfect = [sorted(rel) + [d for d in DOC_IDS if d not in rel] for rel in relevant]
    assert mrr_at_k(perfect, relevant, k) == 1.0
    assert ndcg_at_k(perfect, relevant, k) == pytest.approx(1.0)
    if k >= max(len(rel) for rel in relevant):
        assert recall_at_k(perfect, relevant, k) == 1.0
    else:  # recall@k of a perfect ranking is min(|rel|, k) / |rel|
        expected = sum(min(len(rel), k) / len(rel) for rel in relevant) / len(relevant)
        assert recall_at_k(perfect, relevant, k) == pytest.approx(expected)
