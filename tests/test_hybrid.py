"""Hybrid dense + BM25 retrieval (course_lib.hybrid), checked against a brute-force fusion over every document."""

import numpy as np
import pytest
import torch

from course_lib.baselines import BM25
from course_lib.hybrid import HybridSearcher, hybrid_metrics, tune_alpha

WORDS = "bank river money loan water fish boat shore credit account stream deposit".split()


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(0)
    corpus = {f"d{i:02d}": " ".join(rng.choice(WORDS, size=6)) for i in range(40)}
    ids = sorted(corpus)
    emb = torch.nn.functional.normalize(torch.randn(len(ids), 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    texts = [" ".join(rng.choice(WORDS, size=3)) for _ in range(12)]
    q = torch.nn.functional.normalize(torch.randn(len(texts), 8, generator=torch.Generator().manual_seed(2)), dim=-1)
    return corpus, ids, emb, BM25(corpus, stemmer=None), texts, q


def brute_force(corpus, ids, emb, bm25, texts, q, alpha, k):
    """Every document scored: the cosine, and BM25 over the whole corpus divided by the query's best score."""
    ranked_ids, scores = bm25.search(texts, len(ids))
    out = []
    for i, text in enumerate(texts):
        lexical = dict(zip(ranked_ids[i], scores[i].tolist()))
        best = max(lexical.values())
        fused = [(alpha * float(q[i] @ emb[j]) + (1 - alpha) * (lexical[d] / best if best > 0 else 0.0), j)
                 for j, d in enumerate(ids)]
        out.append([ids[j] for _, j in sorted(fused, key=lambda t: (-t[0], t[1]))[:k]])
    return out


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.8, 1.0])
def test_fusion_equals_brute_force_over_the_whole_corpus(toy, alpha):
    corpus, ids, emb, bm25, texts, q = toy
    searcher = HybridSearcher(ids, emb, bm25, dense_k=len(ids), lexical_k=len(ids))  # the union is everything
    assert searcher.search(q, texts, alpha, k=10) == brute_force(corpus, ids, emb, bm25, texts, q, alpha, 10)


def test_the_ends_are_the_two_retrievers(toy):
    """α = 1 is the dense ranking; α = 0 puts BM25's matches first in BM25's order."""
    corpus, ids, emb, bm25, texts, q = toy
    searcher = HybridSearcher(ids, emb, bm25, dense_k=10, lexical_k=10)
    dense = [[ids[j] for j in row] for row in (q @ emb.T).topk(10, dim=1).indices.tolist()]
    assert searcher.search(q, texts, 1.0, k=10) == dense
    lexical_ids, lexical_scores = bm25.search(texts, 10)
    for row, lex, scores in zip(searcher.search(q, texts, 0.0, k=10), lexical_ids, lexical_scores):
        matched = [d for d, s in zip(lex, scores) if s > 0]
        assert row[:len(matched)] == matched or sorted(row[:len(matched)]) == sorted(matched)  # ties may swap


def test_tune_alpha_returns_the_best_weight_on_the_given_queries(toy):
    corpus, ids, emb, bm25, texts, q = toy
    searcher = HybridSearcher(ids, emb, bm25, dense_k=20, lexical_k=20)
    relevant = [{row[0]} for row in bm25.search(texts, 1)[0]]  # BM25's own first hit: α = 0 must win
    best, by_alpha = tune_alpha(searcher, q, texts, relevant, alphas=(0.0, 0.5, 1.0))
    assert by_alpha[best] == max(by_alpha.values()) and by_alpha[0.0] >= by_alpha[1.0]
    m = hybrid_metrics(searcher, q, texts, relevant, best, ks=(1, 10))
    assert m["mrr@10"] == pytest.approx(by_alpha[best])


def test_bad_inputs_are_refused(toy):
    corpus, ids, emb, bm25, texts, q = toy
    with pytest.raises(ValueError, match="different documents"):
        HybridSearcher(ids[::-1], emb, bm25)
    with pytest.raises(ValueError, match=r"doc_emb must be \(N, D\)"):
        HybridSearcher(ids, emb[:5], bm25)
    with pytest.raises(ValueError, match="dense_k"):
        HybridSearcher(ids, emb, bm25, dense_k=0)
    searcher = HybridSearcher(ids, emb, bm25, dense_k=5, lexical_k=5)
    with pytest.raises(ValueError, match="alpha"):
        searcher.search(q, texts, 1.5)
    with pytest.raises(ValueError, match="query_emb"):
        searcher.search(q[:3], texts, 0.5)
    with pytest.raises(ValueError, match="alphas is empty"):
        tune_alpha(searcher, q, texts, [{ids[0]}] * len(texts), alphas=())
