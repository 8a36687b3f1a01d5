"""False negatives: a mined "negative" that is a right answer under another name, judged by something other
than the model being trained, and what each mining filter removes.

Two judges, each ``judge(positive_id, negative_id) -> bool``:

- ``WordNetJudge``: WordNet's own sense-grouping pointers (verb group ``$``, similar to ``&``, also see ``^``;
  wninput(5WN)) link the two synsets, in either direction. It only covers verbs and adjectives (nouns carry
  none of these pointers) and "also see" is loose, so it flags a subset of the true false negatives.
- ``EmbeddingJudge``: a second encoder (the course uses all-MiniLM-L6-v2, as NV-Retriever uses a teacher,
  Moreira et al., 2024, arXiv:2407.15831, §3) scores the negative's text against the positive's text at or
  above ``threshold``.

``filter_report`` mines the same rank window under several filter settings and reports, per setting, how many
candidates it kept, the share of kept negatives each judge flags, and the candidates it removed.
"""

from collections.abc import Callable

import torch

from course_lib.mining import mine_hard_negatives
from course_lib.wordnet import SENSE_GROUP_POINTERS, parse_pointers, wordnet_dir


class WordNetJudge:
    """Flags a negative linked to the positive by a sense-grouping pointer; ``why(p, n)`` names the pointers."""

    def __init__(self, symbols=tuple(SENSE_GROUP_POINTERS), folder=None):
        pointers = parse_pointers(folder or wordnet_dir(), symbols)
        self.links: dict[tuple[str, str], set[str]] = {}
        for source, by_symbol in pointers.items():
            for symbol, targets in by_symbol.items():
                for t in targets:
                    if t != source:
                        self.links.setdefault((source, t), set()).add(symbol)
                        self.links.setdefault((t, source), set()).add(symbol)

    def why(self, positive_id: str, negative_id: str) -> set[str]:
        return self.links.get((positive_id, negative_id), set())

    def __call__(self, positive_id: str, negative_id: str) -> bool:
        return (positive_id, negative_id) in self.links


class EmbeddingJudge:
    """Flags a negative whose embedding (by another model) has cosine ≥ ``threshold`` with the positive's.
    ``doc_ids`` / ``doc_emb`` (N, D): that model's embeddings, one row per id (L2-normalised here)."""

    def __init__(self, doc_ids, doc_emb: torch.Tensor, threshold: float):
        if not isinstance(doc_emb, torch.Tensor) or doc_emb.dim() != 2 or doc_emb.shape[0] != len(doc_ids):
            raise ValueError(f"doc_emb must be a (N, D) tensor with one row per doc id ({len(doc_ids)}), got "
                             f"{getattr(doc_emb, 'shape', type(doc_emb).__name__)}")
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity, in [-1, 1]; got {threshold!r}")
        self.row = {d: i for i, d in enumerate(doc_ids)}
        self.emb = torch.nn.functional.normalize(doc_emb.float(), dim=-1)  # (N, D)
        self.threshold = threshold

    def score(self, positive_id: str, negative_id: str) -> float:
        missing = [d for d in (positive_id, negative_id) if d not in self.row]
        if missing:
            raise KeyError(f"no judge embedding for {missing}; embed every document the report will judge")
        return float(self.emb[self.row[positive_id]] @ self.emb[self.row[negative_id]])

    def __call__(self, positive_id: str, negative_id: str) -> bool:
        return self.score(positive_id, negative_id) >= self.threshold


def flagged_share(positives: list[str], negatives: list[list[str]], judge: Callable) -> float:
    """Share of all (query, negative) pairs that ``judge`` flags (0.0 when there are no negatives)."""
    pairs = [(p, n) for p, row in zip(positives, negatives) for n in row]
    return sum(judge(p, n) for p, n in pairs) / len(pairs) if pairs else 0.0


def filter_report(query_emb, positives: list[str], doc_ids, doc_emb, *, settings: dict[str, dict],
                  judges: dict[str, Callable], rank_range=(0, 50), query_texts=None, doc_texts=None) -> dict:
    """For each named filter setting (keyword arguments of ``mine_hard_negatives``: ``absolute_margin``,
    ``relative_margin``, ``max_score``, or none), keep *every* window candidate that passes (no sampling, no
    fill) and report ``{"kept", "removed", "flagged": {judge: share of kept}, "removed_flagged": {judge:
    share of removed}, "removed_pairs": [(query row, doc id, score)]}``. One positive per query."""
    width = rank_range[1] - rank_range[0]
    base = mine_hard_negatives(query_emb, positives, doc_ids, doc_emb, rank_range=rank_range, num_negatives=width,
                               query_texts=query_texts, doc_texts=doc_texts, fill=None)
    out = {}
    for name, kwargs in settings.items():
        mined = mine_hard_negatives(query_emb, positives, doc_ids, doc_emb, rank_range=rank_range,
                                    num_negatives=width, query_texts=query_texts, doc_texts=doc_texts, fill=None,
                                    **kwargs)
        removed = [[n for n in b if n not in set(k)] for b, k in zip(base.ids, mined.ids)]
        score_of = [dict(zip(ids, scores)) for ids, scores in zip(base.ids, base.scores)]
        out[name] = {
            "kept": sum(map(len, mined.ids)),
            "removed": sum(map(len, removed)),
            "flagged": {j: flagged_share(positives, mined.ids, judge) for j, judge in judges.items()},
            "removed_flagged": {j: flagged_share(positives, removed, judge) for j, judge in judges.items()},
            "removed_pairs": [(r, n, score_of[r][n]) for r, row in enumerate(removed) for n in row],
        }
    return out
