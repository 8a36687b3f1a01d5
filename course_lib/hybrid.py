"""Hybrid retrieval: a dense encoder's cosine and BM25, fused per query.

The two make different mistakes: BM25 finds documents that share the query's words (the lemma, in WordNet) and
cannot tell the senses apart; a small dense encoder tells senses apart but misses exact word matches it never
learnt. Karpukhin et al. (2020, DPR, arXiv:2004.04906, §5.1) rank by a linear combination of the two scores; the
scales of the two differ (a cosine lies in [−1, 1], BM25 is unbounded and grows with the query's length), so
here BM25 is divided by the query's best BM25 score first, as the score normalisations compared by Ma et al.
(2021, "A replication study of dense passage retriever", arXiv:2104.05740, §5) do:

    score(q, d) = α · cos(q, d) + (1 − α) · BM25(q, d) / max_d' BM25(q, d')

over the union of each retriever's top candidates (a document outside BM25's top list scores 0 there; its
cosine is computed exactly). α = 1 is the dense ranking, α = 0 BM25's. ``tune_alpha`` picks α on a split that
is not the test split (the recipe uses dev), by MRR@10.
"""

import numpy as np
import torch

from course_lib.baselines import BM25
from course_lib.metrics import KS, mrr_at_k, retrieval_metrics

ALPHAS = tuple(round(0.05 * i, 2) for i in range(21))  # 0, 0.05, …, 1: BM25 alone to the encoder alone


class HybridSearcher:
    """Dense + BM25 search over one corpus: ``doc_ids`` (N) with unit-norm ``doc_emb`` (N, D) from the encoder,
    and a ``BM25`` built on the same corpus (the same ids)."""

    def __init__(self, doc_ids: list[str], doc_emb: torch.Tensor, bm25: BM25, *, dense_k: int = 200,
                 lexical_k: int = 1000):
        if list(doc_ids) != list(bm25.ids):
            raise ValueError("doc_ids and the BM25 index hold different documents (or orders); build both from the "
                             "same corpus: BM25 sorts the ids, so pass doc_ids = sorted(corpus)")
        if doc_emb.ndim != 2 or doc_emb.shape[0] != len(doc_ids):
            raise ValueError(f"doc_emb must be (N, D) with N = {len(doc_ids)} documents, got {tuple(doc_emb.shape)}")
        for name, k in (("dense_k", dense_k), ("lexical_k", lexical_k)):
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(doc_ids):
                raise ValueError(f"{name} must be an int in [1, {len(doc_ids)}] (the corpus size), got {k!r}")
        self.doc_ids, self.doc_emb, self.bm25 = list(doc_ids), doc_emb.float(), bm25
        self.dense_k, self.lexical_k = dense_k, lexical_k

    def candidates(self, query_emb: torch.Tensor, texts: list[str], chunk: int = 512) -> list:
        """Per query: the union of the dense and BM25 top candidates (document positions), their cosines and
        their max-normalised BM25 scores (0 outside BM25's list), as three arrays. Computed once, fused for any
        α; the cosines ``chunk`` queries at a time."""
        if query_emb.ndim != 2 or query_emb.shape[0] != len(texts) or query_emb.shape[1] != self.doc_emb.shape[1]:
            raise ValueError(f"query_emb must be (Q, {self.doc_emb.shape[1]}) with Q = {len(texts)} texts, got "
                             f"{tuple(query_emb.shape)}")
        position = {d: i for i, d in enumerate(self.doc_ids)}
        lexical_ids, lexical_scores = self.bm25.search(list(texts), self.lexical_k)  # (Q, lexical_k) each
        out = []
        for start in range(0, len(texts), chunk):
            cos = query_emb[start:start + chunk].float() @ self.doc_emb.T  # (c, N)
            dense_top = cos.topk(self.dense_k, dim=1).indices.numpy()  # (c, dense_k)
            for j in range(cos.shape[0]):
                q = start + j
                best = float(np.max(lexical_scores[q]))
                lex = {position[d]: float(s) / best if best > 0 else 0.0
                       for d, s in zip(lexical_ids[q], lexical_scores[q])}
                union = np.unique(np.concatenate([dense_top[j], np.fromiter(lex, dtype=np.int64)]))
                out.append((union, cos[j, union].numpy(), np.array([lex.get(i, 0.0) for i in union.tolist()])))
        return out

    @staticmethod
    def fuse(candidates, alpha: float, doc_ids: list[str], k: int = 100) -> list[list[str]]:
        """The top ``k`` ids per query under α · cosine + (1 − α) · normalised BM25 (ties: the lower position)."""
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be a number in [0, 1] (1: dense only, 0: BM25 only), got {alpha!r}")
        ranked = []
        for union, cos, lex in candidates:
            score = alpha * cos + (1.0 - alpha) * lex
            order = np.lexsort((union, -score))[:k]  # by score, descending; ties by position
            ranked.append([doc_ids[i] for i in union[order]])
        return ranked

    def search(self, query_emb: torch.Tensor, texts: list[str], alpha: float, k: int = 100) -> list[list[str]]:
        return self.fuse(self.candidates(query_emb, texts), alpha, self.doc_ids, k)


def tune_alpha(searcher: HybridSearcher, query_emb: torch.Tensor, texts: list[str], relevant: list[set[str]],
               alphas=ALPHAS) -> tuple[float, dict[float, float]]:
    """The α of ``alphas`` with the best MRR@10 on these (non-test) queries, and the MRR@10 of each; ties go to
    the larger α (more weight on the trained encoder)."""
    if not alphas:
        raise ValueError("alphas is empty: give at least one weight in [0, 1]")
    cands = searcher.candidates(query_emb, texts)
    scores = {float(a): mrr_at_k(searcher.fuse(cands, a, searcher.doc_ids, 10), relevant, 10) for a in alphas}
    best = max(scores, key=lambda a: (scores[a], a))
    return best, scores


def hybrid_metrics(searcher: HybridSearcher, query_emb: torch.Tensor, texts: list[str], relevant: list[set[str]],
                   alpha: float, ks=KS) -> dict[str, float]:
    """``retrieval_metrics`` of the fused ranking at ``alpha``."""
    return retrieval_metrics(searcher.search(query_emb, texts, alpha, max(ks)), relevant, ks)


def dev_tuned_hybrid(data, doc_ids: list[str], doc_emb: torch.Tensor, encode_queries) -> dict | None:
    """The recipe's hybrid stage: BM25 over ``data.corpus`` (words, or characters for Chinese), α tuned on the dev
    split by MRR@10, then the test split's metrics at that α. ``encode_queries(texts) -> (Q, D)`` embeds with the
    trained encoder. None when the data has no dev split to tune on (α is never chosen on test)."""
    from course_lib.baselines import lexical_tokenize

    if not data.queries.get("dev") or not data.queries.get("test"):
        return None
    n = len(doc_ids)
    searcher = HybridSearcher(doc_ids, doc_emb, BM25(data.corpus, tokenize=lexical_tokenize(data.corpus)),
                              dense_k=min(200, n), lexical_k=min(1000, n))
    _, dev_texts, dev_relevant = data.split_items("dev")
    alpha, by_alpha = tune_alpha(searcher, encode_queries(dev_texts), dev_texts, dev_relevant)
    _, texts, relevant = data.split_items("test")
    test = hybrid_metrics(searcher, encode_queries(texts), texts, relevant, alpha, ks=tuple(k for k in KS if k <= n))
    return {"alpha": alpha, "dev_mrr@10_by_alpha": {str(a): round(v, 4) for a, v in by_alpha.items()},
            "test": {k: round(v, 4) for k, v in test.items()}}
