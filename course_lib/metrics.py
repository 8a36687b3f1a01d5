"""Ranking metrics, written once: Recall@k, MRR@k, nDCG@k, and ``evaluate`` for an encoder on a split.

Definitions (binary relevance, averaged over queries; Manning, Raghavan & Schütze, *Introduction to
Information Retrieval*, 2008, §8.4 and §8.4's nDCG; BEIR, Thakur et al., 2021, §4 reports nDCG@10):
- Recall@k = |relevant ∩ top-k| / |relevant|
- MRR@k = 1 / rank of the first relevant document in the top k (0 if none)
- nDCG@k = Σ_{i≤k} rel_i / log2(i + 1), divided by its value for an ideal ranking

and, for generated text, a word-overlap F1 (``token_f1``) and corpus BLEU (``corpus_bleu``).
"""

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

KS = (1, 5, 10, 20, 50, 100)


def _check_shapes(ranked: list[list[str]], relevant: list[set[str]]) -> None:
    """Each ranking is a sequence of ids (not a str: a flat list of ids is one ranking, not one per query), and
    each relevance entry a set of ids (a str would match substrings)."""
    for i, r in enumerate(ranked):
        if isinstance(r, (str, bytes)) or not isinstance(r, (Sequence, np.ndarray)):
            raise TypeError(
                f"ranked[{i}] is {type(r).__name__} {r!r:.60}, not a ranking: ranked must be a list of ranked-id lists, "
                "one per query, e.g. [['d1', 'd7'], ['d3']]; wrap a single query's ranking in a list"
            )
    for i, rel in enumerate(relevant):
        if not isinstance(rel, (set, frozenset)):
            raise TypeError(
                f"relevant[{i}] must be a set of ids, got {type(rel).__name__} {rel!r:.60}: relevant is a list of sets, "
                "one per query, e.g. [{'d1'}, {'d3', 'd4'}]"
            )


def _check(ranked: list[list[str]], relevant: list[set[str]], k: int) -> None:
    """Checks: as many rankings as relevance sets, at least one; each ranking a list of ids and each relevance
    entry a non-empty set; k a positive int."""
    _check_shapes(ranked, relevant)
    if len(ranked) != len(relevant):
        raise ValueError(f"got {len(ranked)} rankings but {len(relevant)} relevance sets; one of each per query")
    if not ranked:
        raise ValueError("no queries to score: the list of rankings is empty")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if any(not rel for rel in relevant):
        raise ValueError("a query has no relevant document; drop it before scoring (its recall is undefined)")


def recall_at_k(ranked: list[list[str]], relevant: list[set[str]], k: int) -> float:
    """Mean over queries of the fraction of relevant documents found in the top k."""
    _check(ranked, relevant, k)
    return float(np.mean([len(rel.intersection(r[:k])) / len(rel) for r, rel in zip(ranked, relevant)]))


def mrr_at_k(ranked: list[list[str]], relevant: list[set[str]], k: int = 10) -> float:
    """Mean reciprocal rank of the first relevant document within the top k (0 when none is there)."""
    _check(ranked, relevant, k)
    scores = []
    for r, rel in zip(ranked, relevant):
        first = next((i for i, d in enumerate(r[:k]) if d in rel), None)
        scores.append(0.0 if first is None else 1.0 / (first + 1))
    return float(np.mean(scores))


def ndcg_at_k(ranked: list[list[str]], relevant: list[set[str]], k: int = 10) -> float:
    """Normalised discounted cumulative gain at k with binary gains."""
    _check(ranked, relevant, k)
    scores = []
    for r, rel in zip(ranked, relevant):
        first_seen = {d: i for i, d in reversed(list(enumerate(r[:k])))}  # a repeated id gains only once
        dcg = sum(1.0 / math.log2(i + 2) for d, i in first_seen.items() if d in rel)
        ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(rel), k)))
        scores.append(dcg / ideal)
    return float(np.mean(scores))


def retrieval_metrics(ranked: list[list[str]], relevant: list[set[str]], ks=KS) -> dict[str, float]:
    """Recall@k for every k in ``ks``, MRR@10 and nDCG@10, as one dict."""
    out = {f"recall@{k}": recall_at_k(ranked, relevant, k) for k in ks}
    out["mrr@10"] = mrr_at_k(ranked, relevant, 10)
    out["ndcg@10"] = ndcg_at_k(ranked, relevant, 10)
    return out


def embed_corpus(model, tokenizer, data, *, max_length: int = 48, batch_size: int = 256) -> tuple[list[str], torch.Tensor]:
    """Doc ids (sorted) and their embeddings (N, D)."""
    from course_lib.models import encode

    ids = sorted(data.corpus)
    return ids, encode(model, tokenizer, [data.corpus[i] for i in ids], max_length=max_length, batch_size=batch_size)


def build_index(kind, doc_ids: list[str], doc_emb: torch.Tensor, **hnsw_kwargs):
    """An index over the corpus: ``kind`` is "exact", "hnsw", or an index object to fill."""
    from course_lib.index import ExactIndex, HNSWIndex

    if kind == "exact":
        index = ExactIndex(doc_emb.shape[1])
    elif kind == "hnsw":
        index = HNSWIndex(doc_emb.shape[1], **hnsw_kwargs)
    elif hasattr(kind, "add") and hasattr(kind, "search"):
        index = kind
    else:
        raise ValueError(f"index must be 'exact', 'hnsw' or an index object, got {kind!r}")
    index.add(doc_ids, doc_emb)
    return index


def evaluate(
    model,
    data,
    split: str = "test",
    *,
    tokenizer,
    index="exact",
    ks=KS,
    max_query_len: int = 32,
    max_doc_len: int = 48,
    doc_embeddings: tuple[list[str], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Embed the corpus and a split's queries, search, and score (``retrieval_metrics``).

    ``index`` is "exact" (brute force, the reference), "hnsw", or a prepared index already holding the corpus.
    Pass ``doc_embeddings=(ids, emb)`` to reuse corpus embeddings. Raises if a k exceeds the corpus size.
    """
    from course_lib.models import encode

    if max(ks) > len(data.corpus):
        raise ValueError(
            f"ks go up to {max(ks)} but the corpus has {len(data.corpus)} documents; pass smaller ks, "
            f"e.g. ks={tuple(k for k in ks if k <= len(data.corpus)) or (1,)}"
        )
    qids, texts, relevant = data.split_items(split)
    if hasattr(index, "search") and len(index) > 0:
        searcher = index
    else:
        ids, emb = doc_embeddings or embed_corpus(model, tokenizer, data, max_length=max_doc_len)
        searcher = build_index(index, ids, emb)
    q = encode(model, tokenizer, texts, max_length=max_query_len)  # (Q, D)
    ranked, _ = searcher.search(q, max(ks))
    return retrieval_metrics(ranked, relevant, ks)


def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> float:
    """Wang & Isola (2020), §4.1, ℓ_align: mean ‖x_i − y_i‖^α over positive pairs of unit vectors (B, D)."""
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"x and y must be (B, D) of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    return (x - y).norm(dim=1).pow(alpha).mean().item()


def uniformity(x: torch.Tensor, t: float = 2.0) -> float:
    """Wang & Isola (2020), §4.1, ℓ_uniform: log mean exp(−t‖x_i − x_j‖²) over distinct pairs of unit vectors."""
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"x must be (N, D) with N >= 2, got {tuple(x.shape)}")
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log().item()


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _check_generated(predictions: list[str], references: list[str]) -> None:
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need as many predictions as references, at least one; got {len(predictions)} and {len(references)}")


def token_f1(prediction: str, reference: str) -> float:
    """Word-overlap F1 of a generated text against a reference, as SQuAD scores answers (Rajpurkar et al.,
    2016, §6): lower-cased ``\\w+`` words, counted with multiplicity; 0 when either side has no word."""
    pred, ref = _words(prediction), _words(reference)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def frequent_words(texts: list[str], k: int) -> str:
    """The ``k`` most frequent words of ``texts`` (ties broken alphabetically), joined by spaces: the output of
    a generator that learned word frequencies and nothing else, a floor for ``token_f1``."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    counts = Counter(w for t in texts for w in _words(t))
    if not counts:
        raise ValueError("frequent_words got no words: texts is empty or has no \\w characters")
    return " ".join(w for w, _ in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))[:k])


def corpus_bleu(predictions: list[str], references: list[str], max_n: int = 4) -> float:
    """Corpus BLEU of generated texts against one reference each (Papineni et al., 2002, §2.1–2.3): clipped
    n-gram precisions for n = 1..``max_n`` pooled over the corpus, their geometric mean, times the brevity
    penalty exp(1 − r/c) when the c predicted words are fewer than the r reference words. Words as in
    ``token_f1``; no smoothing, so 0 when some n-gram order has no match. Unlike token F1 it rewards word order:
    a bag of frequent words scores near 0."""
    _check_generated(predictions, references)
    if not isinstance(max_n, int) or max_n < 1:
        raise ValueError(f"max_n must be a positive int, got {max_n!r}")
    matches, totals = [0] * max_n, [0] * max_n
    pred_len = ref_len = 0
    for prediction, reference in zip(predictions, references):
        pred, ref = _words(prediction), _words(reference)
        pred_len, ref_len = pred_len + len(pred), ref_len + len(ref)
        for n in range(1, max_n + 1):
            p_grams = Counter(tuple(pred[i:i + n]) for i in range(len(pred) - n + 1))
            r_grams = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
            matches[n - 1] += sum((p_grams & r_grams).values())
            totals[n - 1] += sum(p_grams.values())
    if min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    brevity = 1.0 if pred_len > ref_len else math.exp(1 - ref_len / pred_len)
    return brevity * math.exp(log_precision)


def mean_token_f1(predictions: list[str], references: list[str]) -> float:
    """``token_f1`` averaged over pairs."""
    _check_generated(predictions, references)
    return sum(token_f1(p, r) for p, r in zip(predictions, references)) / len(predictions)


def spread_verdict(gap: float, sd_a: float, sd_b: float) -> str:
    """The course's rule for stating an ordering between two means over seeds: "above" / "below" only when the
    gap ``a − b`` exceeds the larger of the two sample standard deviations, else "within noise"."""
    noise = max(sd_a, sd_b)
    return "within noise" if not abs(gap) > noise else ("above" if gap > 0 else "below")
