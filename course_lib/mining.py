"""Hard negatives mined from a retriever's own ranking: before training (static), again once they stop being
hard (Conan-embedding's dynamic mining), or from a periodically rebuilt index (ANCE).

``mine_hard_negatives`` follows FlagEmbedding's ``hn_mine.py`` (skip the top ranks, where unlabelled relevant
documents crowd; sample uniformly from ranks [lo, hi); fill short rows at random) with the positive-aware
filters of NV-Retriever (Moreira et al., 2024, arXiv:2407.15831: TopK-MarginPos, TopK-PercPos, TopK-Abs),
named as in sentence-transformers' ``mine_hard_negatives``. Scores are inner products, i.e. cosine similarity
for the course's L2-normalised encoders. Conan-embedding: Li et al., 2024, arXiv:2408.15710, §2.2. ANCE:
Xiong et al., 2021, arXiv:2007.00808, §4–5.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral, Real

import torch

from course_lib.index import ExactIndex

FILTERS = ("absolute_margin", "relative_margin", "max_score")  # applied in this order


@dataclass
class MinedNegatives:
    """Per query (row): negative ids, their scores and search ranks (-1 for a random fill), in rank order
    with the fill last. ``n_short_rows``: rows with fewer than ``num_negatives`` window candidates left after
    the filters (filled or left short); ``n_filled``: documents the fill added; ``n_filtered``: window
    candidates each filter removed; ``positive_scores``: each query's s⁺."""
    ids: list
    scores: list
    ranks: list
    n_short_rows: int
    n_filled: int
    n_filtered: dict
    positive_scores: list


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _check_real(name: str, value, low: float, high: float | None = None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number or None, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < low or (high is not None and value >= high):
        bound = f"in [{low}, {high})" if high is not None else f"finite and >= {low}"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def _check_embeddings(name: str, t, dim: int | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise TypeError(f"{name} must be a floating torch.Tensor of embeddings, got {type(t).__name__}")
    if t.dim() != 2 or t.shape[0] == 0:
        raise ValueError(f"{name} must be 2-D (n, D), n >= 1, one embedding per row, got {tuple(t.shape)}")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(f"{name} have width {t.shape[1]} but the other embeddings have {dim}; encode "
                         "queries and documents with the same model")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contain NaN or inf; fix the encoder's output first")
    return t.detach().float().cpu()


def _doc_positions(doc_ids, n_docs: int | None = None) -> tuple[list, dict]:
    if isinstance(doc_ids, (str, bytes, torch.Tensor)) or not isinstance(doc_ids, Sequence):
        raise TypeError("doc_ids must be a list of ids, one per row of doc_emb (tensors: use .tolist())")
    doc_ids = list(doc_ids)
    doc_pos = {d: j for j, d in enumerate(doc_ids)}
    if len(doc_pos) != len(doc_ids) or len(doc_ids) != (n_docs or len(doc_ids)):
        raise ValueError(f"doc_ids must hold unique ids, one per row of doc_emb ({n_docs or 'all'} rows); "
                         f"got {len(doc_ids)} ids, {len(doc_pos)} unique")
    return doc_ids, doc_pos


def _positive_sets(positive_ids, n_queries: int, doc_pos: dict) -> list[set]:
    if isinstance(positive_ids, (str, bytes, torch.Tensor)) or not isinstance(positive_ids, Sequence):
        raise TypeError("positive_ids must be a list with one entry per query (a set of doc ids or one id)")
    if len(positive_ids) != n_queries:
        raise ValueError(f"got {len(positive_ids)} positive_ids for {n_queries} queries; give one entry each")
    sets = [set(p) if isinstance(p, (set, frozenset, list, tuple)) else {p} for p in positive_ids]
    for i, s in enumerate(sets):
        missing = [p for p in s if p not in doc_pos]
        if not s or missing:
            raise ValueError(f"query {i}: positives {sorted(s, key=str)[:3]}, {missing[:3]} not in doc_ids; "
                             "every query needs at least one positive, in the corpus, so that s⁺ can be "
                             "computed and the positive excluded")
    return sets


def _excluded(pos_sets: list[set], doc_ids: list, query_texts, doc_texts) -> list[set]:
    """Per query: its positives plus, given texts, every doc whose text equals the query's or a positive's
    (FlagEmbedding compares texts, so a copy of a positive under another id is never mined either)."""
    if (query_texts is None) != (doc_texts is None):
        raise ValueError("give both query_texts and doc_texts (to exclude the query's own text) or neither")
    if query_texts is None:
        return [set(s) for s in pos_sets]
    if len(query_texts) != len(pos_sets) or len(doc_texts) != len(doc_ids):
        raise ValueError(f"need {len(pos_sets)} query_texts and {len(doc_ids)} doc_texts (one per row), got "
                         f"{len(query_texts)} and {len(doc_texts)}")
    by_text, text_of = {}, dict(zip(doc_ids, doc_texts))
    for d, text in zip(doc_ids, doc_texts):
        by_text.setdefault(text, set()).add(d)
    return [set(s).union(*(by_text.get(t, ()) for t in {q} | {text_of[p] for p in s}))
            for s, q in zip(pos_sets, query_texts)]


def _window(ranked_ids, ranked_scores, excluded: set, lo: int, hi: int) -> list[tuple]:
    """(rank, id, score) of the results with rank in [lo, hi), ranks counted after removing ``excluded``."""
    kept = [(d, s) for d, s in zip(ranked_ids, ranked_scores) if d not in excluded][:hi]
    return [(rank, d, float(s)) for rank, (d, s) in enumerate(kept) if rank >= lo]


def _filter(scores: torch.Tensor, s_plus: float, absolute_margin, relative_margin, max_score):
    """Keep mask over (n,) scores and the count each filter removed (each counts only candidates the earlier
    ones kept). Done in float64, so callers can re-check it exactly on the returned Python floats."""
    scores = scores.double()  # (n,)
    rules = {"absolute_margin": lambda m: scores + m <= s_plus,
             "relative_margin": lambda m: scores <= s_plus - abs(s_plus) * m,  # sign-robust TopK-PercPos
             "max_score": lambda m: scores <= m}
    keep, removed = torch.ones_like(scores, dtype=torch.bool), {}
    for name, value in zip(FILTERS, (absolute_margin, relative_margin, max_score)):
        passed = rules[name](value) if value is not None else keep
        removed[name] = int((keep & ~passed).sum())
        keep = keep & passed
    return keep, removed


def _sample(n: int, k: int, gen: torch.Generator) -> list[int]:
    """min(k, n) of range(n) uniformly without replacement, sorted (so rank order is kept)."""
    return sorted(torch.randperm(n, generator=gen)[:k].tolist())


def mine_hard_negatives(query_emb, positive_ids, doc_ids, doc_emb, *, index=None, rank_range=(10, 210),
                        num_negatives=15, absolute_margin=None, relative_margin=None, max_score=None,
                        query_texts=None, doc_texts=None, seed=0, fill="random") -> MinedNegatives:
    """``num_negatives`` hard negatives per query from the rank window ``rank_range = (lo, hi)``.

    ``query_emb`` (Q, D); ``positive_ids``: per query a set of relevant doc ids (or one id); ``doc_ids`` (N),
    ``doc_emb`` (N, D): the corpus. ``index`` (``ExactIndex``, ``HNSWIndex``) must already hold that corpus
    under the same ids (None builds an ``ExactIndex``); candidate scores are the index's.

    Ranks are 0-based and counted after removing the query's excluded docs (its positives and, given texts,
    docs whose text equals the query's or a positive's): rank r means "r other documents score higher", so
    positives never eat into the window. The search asks for ``min(N, hi + |excluded|)`` results (largest
    over queries), enough to reach rank hi − 1. Filters compare a score s with s⁺, the *minimum* positive
    score, computed as query·doc (positives need not be retrieved): ``absolute_margin`` m keeps s + m ≤ s⁺;
    ``relative_margin`` m keeps s ≤ s⁺ − |s⁺|·m, below s⁺ for either sign (the s⁺·(1 − m) of older
    sentence-transformers releases rises above s⁺ when s⁺ < 0); ``max_score`` keeps s ≤ max_score. Filtered
    candidates leave holes; ranks do not shift. ``num_negatives`` of the kept candidates are sampled uniformly
    without replacement (FlagEmbedding's rule; a ``torch.Generator`` seeded by ``seed``), in rank order.

    Short rows: ``fill="random"`` adds docs drawn uniformly among those not excluded, not chosen and passing
    the filters (FlagEmbedding's fill could pick a positive; this one cannot), rank -1; a row stays short only
    if no such doc is left. ``fill=None`` leaves it short.
    """
    query_emb = _check_embeddings("query_emb", query_emb)  # (Q, D)
    doc_emb = _check_embeddings("doc_emb", doc_emb, query_emb.shape[1])  # (N, D)
    n_q, n_docs = query_emb.shape[0], doc_emb.shape[0]
    doc_ids, doc_pos = _doc_positions(doc_ids, n_docs)
    if not isinstance(rank_range, (tuple, list)) or len(rank_range) != 2:
        raise TypeError(f"rank_range must be a pair (lo, hi) of 0-based ranks, got {rank_range!r}")
    lo, hi = rank_range
    _check_int("rank_range[0]", lo, 0)
    _check_int("rank_range[1]", hi, lo + 1)
    if hi > n_docs:
        raise ValueError(f"rank_range {(lo, hi)} reaches past the corpus of {n_docs} documents; lower hi")
    _check_int("num_negatives", num_negatives, 1)
    _check_int("seed", seed, 0)
    _check_real("absolute_margin", absolute_margin, 0.0)
    _check_real("relative_margin", relative_margin, 0.0, 1.0)
    _check_real("max_score", max_score, -math.inf)
    if fill not in ("random", None):
        raise ValueError(f"fill must be 'random' (top short rows up with random docs) or None, got {fill!r}")
    pos_sets = _positive_sets(positive_ids, n_q, doc_pos)
    excluded = _excluded(pos_sets, doc_ids, query_texts, doc_texts)
    if index is None:
        index = ExactIndex(doc_emb.shape[1])
        index.add(doc_ids, doc_emb)
    elif not callable(getattr(index, "search", None)):
        raise TypeError(f"index must have a search(vectors, k) method, got {type(index).__name__}")
    elif hasattr(index, "__len__") and len(index) != n_docs:
        raise ValueError(f"index holds {len(index)} vectors, the corpus {n_docs}; index exactly doc_ids")

    s_plus = [float((doc_emb[[doc_pos[p] for p in s]] @ query_emb[i]).min()) for i, s in enumerate(pos_sets)]
    k = min(n_docs, hi + max(len(e) for e in excluded))
    ranked_ids, ranked_scores = index.search(query_emb, k)  # (Q, k) each
    gen = torch.Generator().manual_seed(seed)
    out = MinedNegatives([], [], [], 0, 0, dict.fromkeys(FILTERS, 0), s_plus)
    for i in range(n_q):
        unknown = [d for d in ranked_ids[i] if d not in doc_pos]
        if unknown:
            raise ValueError(f"the index returned ids {unknown[:3]} not in doc_ids; build it from doc_ids")
        cands = _window(ranked_ids[i], ranked_scores[i], excluded[i], lo, hi)
        keep, removed = _filter(torch.tensor([c[2] for c in cands]), s_plus[i], absolute_margin,
                                relative_margin, max_score)
        for name, count in removed.items():
            out.n_filtered[name] += count
        kept = [c for c, ok in zip(cands, keep.tolist()) if ok]
        chosen = [kept[j] for j in _sample(len(kept), num_negatives, gen)]
        need = num_negatives - len(chosen)
        out.n_short_rows += need > 0
        if need > 0 and fill == "random":
            all_scores = doc_emb @ query_emb[i]  # (N,)
            ok, _ = _filter(all_scores, s_plus[i], absolute_margin, relative_margin, max_score)
            taken = excluded[i] | {c[1] for c in chosen}
            pool = [j for j in torch.nonzero(ok).flatten().tolist() if doc_ids[j] not in taken]
            extra = [(-1, doc_ids[pool[j]], float(all_scores[pool[j]]))
                     for j in _sample(len(pool), need, gen)]
            chosen += extra
            out.n_filled += len(extra)
        out.ids.append([c[1] for c in chosen])
        out.scores.append([c[2] for c in chosen])
        out.ranks.append([c[0] for c in chosen])
    return out


def should_replace(initial_score, current_score, factor=1.15, abs_limit=0.8, *, sign_robust=False):
    """Conan-embedding's test (§2.2) that a negative is no longer hard: ``current·factor < initial`` and
    ``|current| < abs_limit``. Floats give a bool, tensors an elementwise bool tensor.

    Sign pitfall: ×factor raises a positive score but lowers a negative one, so with negative scores the
    paper's rule fires for a negative whose score did not drop at all (−0.5·1.15 = −0.575 < −0.5).
    ``sign_robust=True`` tests ``current + |current|·(factor − 1) < initial``: the current score raised by
    (factor − 1) of its magnitude must still be below the initial one; for positive scores both forms agree.
    The default follows the paper."""
    _check_real("factor", factor, 1.0)
    _check_real("abs_limit", abs_limit, 0.0)
    tensors = isinstance(initial_score, torch.Tensor) or isinstance(current_score, torch.Tensor)
    init = torch.as_tensor(initial_score, dtype=torch.float64)
    cur = torch.as_tensor(current_score, dtype=torch.float64)
    raised = cur + cur.abs() * (factor - 1) if sign_robust else cur * factor
    fire = (raised < init) & (cur.abs() < abs_limit)
    return fire if tensors else bool(fire)


def conan_window(i: int, n: int, offset: int = 10) -> tuple[int, int]:
    """Ranks ``[(i − 1)·n + offset, i·n + offset)`` of Conan-embedding's i-th mining round (§2.2): n wide (n
    negatives per example), rounds disjoint and contiguous, the top ``offset`` ranks never used."""
    _check_int("i", i, 1)
    _check_int("n", n, 1)
    _check_int("offset", offset, 0)
    return (i - 1) * n + offset, i * n + offset


class DynamicHardNegativeMiner:
    """Conan-embedding's dynamic hard-negative mining (Li et al., 2024, arXiv:2408.15710, §2.2).

    Per training example e (an index into the caller's list): ``negatives[e]``, ``initial_scores[e]`` (when
    mined), ``current_scores[e]`` (at the last check), ``ranks[e]``, the mining round ``window[e]`` (1 for
    ``initial``, which should be mined with ``rank_range=conan_window(1, n)``; n = longest initial row) and
    ``history[e]``: ``(step, old_id, new_id, old_score)`` per replacement, old_score at replacement time.

    At steps ``start + k·check_every`` (k ≥ 1; ``start``: the step of the initial mining), ``maybe_update``
    re-encodes queries and negatives with the current model and applies ``should_replace``: ``per="example"``
    (the paper records the average score of an example's negatives) compares the means and replaces the whole
    row, ``per="negative"`` only the negatives that fired. Replacements are sampled uniformly from the next window ``conan_window(window[e] +
    1, n, offset)`` of a fresh search with the current model, ranks counted as in ``mine_hard_negatives``,
    skipping the row's kept negatives; no margin filter. The paper's first replacement uses ``[offset, n +
    offset)``, the initial window here, so the k-th replacement uses window k + 1 (re-mining window 1 would
    return the same documents). A window that runs past the corpus yields fewer (or no) replacements.
    """

    def __init__(self, initial: MinedNegatives, positive_ids, doc_ids, *, check_every=100, factor=1.15,
                 abs_limit=0.8, offset=10, sign_robust=False, per="example", query_texts=None, doc_texts=None,
                 seed=0, start=0):
        if not isinstance(initial, MinedNegatives):
            raise TypeError(f"initial must be a MinedNegatives, got {type(initial).__name__}")
        _check_int("check_every", check_every, 1)
        _check_int("start", start, 0)
        _check_int("offset", offset, 0)
        _check_int("seed", seed, 0)
        should_replace(0.0, 0.0, factor, abs_limit)  # validates factor and abs_limit
        if per not in ("example", "negative"):
            raise ValueError(f"per must be 'example' (Conan's averaged score) or 'negative', got {per!r}")
        self.doc_ids, self._doc_pos = _doc_positions(doc_ids)
        pos_sets = _positive_sets(positive_ids, len(initial.ids), self._doc_pos)
        self._excluded = _excluded(pos_sets, self.doc_ids, query_texts, doc_texts)
        self.n = max((len(r) for r in initial.ids), default=0)
        if self.n == 0:
            raise ValueError("initial holds no negatives at all; mine some with mine_hard_negatives first")
        self.check_every, self.factor, self.abs_limit, self.offset = check_every, factor, abs_limit, offset
        self.start = start
        self.sign_robust, self.per, self._gen = sign_robust, per, torch.Generator().manual_seed(seed)
        self.negatives = [list(r) for r in initial.ids]
        self.initial_scores = [list(r) for r in initial.scores]
        self.current_scores = [list(r) for r in initial.scores]
        self.ranks = [list(r) for r in initial.ranks]
        self.window = [1] * len(initial.ids)
        self.history: list[list[tuple]] = [[] for _ in initial.ids]

    def due(self, step: int) -> bool:
        _check_int("step", step, 0)
        return step > self.start and (step - self.start) % self.check_every == 0

    def _encode_corpus(self, encode_docs: Callable, dim: int) -> torch.Tensor:
        corpus = _check_embeddings("encode_docs(doc_ids)", encode_docs(self.doc_ids), dim)  # (N, D)
        if corpus.shape[0] != len(self.doc_ids):
            raise ValueError(f"encode_docs returned {corpus.shape[0]} rows for {len(self.doc_ids)} doc_ids")
        return corpus

    def maybe_update(self, step: int, encode_queries: Callable, encode_docs: Callable, examples=None,
                     search: Callable | None = None) -> int:
        """At a due step, rescore the negatives and replace the stale ones; returns how many were replaced.

        ``encode_queries(example_indices) -> (k, D)`` and ``encode_docs(doc_ids) -> (m, D)`` embed with the
        CURRENT model, one row per argument, in order. ``examples`` restricts the check (default: all).
        ``search(query_vectors, k) -> (ranked ids, scores)`` must rank the whole corpus with the current model
        (e.g. ``ExactIndex.search`` over a re-encoded corpus); without it, once a rule fires, the miner
        encodes all ``doc_ids`` with ``encode_docs`` into an ``ExactIndex`` (when the negatives to rescore are
        at least half the corpus, it encodes the corpus once, up front, and reads their rows from it). Off
        cadence: no call."""
        if not self.due(step):
            return 0
        rows = list(range(len(self.negatives))) if examples is None else list(examples)
        if any(isinstance(e, bool) or not isinstance(e, Integral) or not 0 <= e < len(self.negatives)
               for e in rows):
            raise ValueError(f"examples must be indices in [0, {len(self.negatives)}), got {rows[:5]}")
        rows = [e for e in dict.fromkeys(rows) if self.negatives[e]]
        if not rows:
            return 0
        q = _check_embeddings("encode_queries(...)", encode_queries(rows))  # (k, D)
        docs = list(dict.fromkeys(d for e in rows for d in self.negatives[e]))
        corpus = None
        if search is None and 2 * len(docs) >= len(self.doc_ids):  # the negatives are most of the corpus:
            corpus = self._encode_corpus(encode_docs, q.shape[1])  # encode it once, for scores and search
            d = corpus[[self._doc_pos[x] for x in docs]]  # (m, D)
        else:
            d = _check_embeddings("encode_docs(...)", encode_docs(docs), q.shape[1])  # (m, D)
        if q.shape[0] != len(rows) or d.shape[0] != len(docs):
            raise ValueError(f"encode_queries / encode_docs returned {q.shape[0]} / {d.shape[0]} rows for "
                             f"{len(rows)} / {len(docs)} inputs; return one embedding per input, in order")
        doc_row, fired = {doc: j for j, doc in enumerate(docs)}, {}
        for r, e in enumerate(rows):
            cur = (d[[doc_row[x] for x in self.negatives[e]]] @ q[r]).tolist()  # (n_e,)
            self.current_scores[e] = cur
            init_t = torch.tensor(self.initial_scores[e], dtype=torch.float64)  # (n_e,)
            cur_t = torch.tensor(cur, dtype=torch.float64)  # (n_e,)
            if self.per == "example":  # Conan records the mean score of an example's negatives
                init_t, cur_t = init_t.mean(), cur_t.mean()
            hit = should_replace(init_t, cur_t, self.factor, self.abs_limit, sign_robust=self.sign_robust)
            positions = torch.nonzero(hit.expand(len(cur))).flatten().tolist()
            if positions:
                fired[r] = positions
        if not fired:
            return 0
        if search is None:
            corpus = corpus if corpus is not None else self._encode_corpus(encode_docs, q.shape[1])
            index = ExactIndex(q.shape[1])
            index.add(self.doc_ids, corpus)
            search = index.search
        hi = max(conan_window(self.window[rows[r]] + 1, self.n, self.offset)[1] for r in fired)
        k = min(len(self.doc_ids), hi + max(len(self._excluded[rows[r]]) for r in fired))
        ranked_ids, ranked_scores = search(q[list(fired)], k)  # (F, k) each
        replaced = 0
        for (r, positions), ids, scores in zip(fired.items(), ranked_ids, ranked_scores):
            e = rows[r]
            lo_hi = conan_window(self.window[e] + 1, self.n, self.offset)
            window = _window(ids, scores, self._excluded[e], *lo_hi)
            kept = {x for j, x in enumerate(self.negatives[e]) if j not in positions}
            pool = [c for c in window if c[1] not in kept]
            for j, p in zip(positions, _sample(len(pool), len(positions), self._gen)):
                rank, new_id, score = pool[p]
                self.history[e].append((step, self.negatives[e][j], new_id, self.current_scores[e][j]))
                self.negatives[e][j], self.ranks[e][j] = new_id, rank
                self.initial_scores[e][j] = self.current_scores[e][j] = score
                replaced += 1
            self.window[e] += 1
        return replaced


class AnceRefresher:
    """ANCE's index refresh (Xiong et al., 2021, arXiv:2007.00808, §4–5), run synchronously: at each refresh
    the current checkpoint's corpus embeddings are indexed exactly and every query gets ``num_negatives``
    drawn uniformly from ranks ``rank_range`` (ANCE: one from the top 200, every 10k batches), positives
    excluded, via ``mine_hard_negatives`` with seed ``seed + step`` (refreshes draw independently). ANCE's
    trainer keeps the old index while an inferencer builds the next; here a build serves from its own step,
    so negatives used at step t come from a checkpoint of step ≤ t. Refreshes are due every ``every`` steps
    after ``start`` (the step of the first build). ``built_at_step``: the build now serving; ``build_steps``:
    all builds."""

    def __init__(self, every: int, rank_range=(0, 200), num_negatives: int = 1, seed: int = 0, fill="random",
                 start: int = 0):
        _check_int("every", every, 1)
        _check_int("start", start, 0)
        _check_int("num_negatives", num_negatives, 1)
        _check_int("seed", seed, 0)
        if fill not in ("random", None):
            raise ValueError(f"fill must be 'random' or None, got {fill!r}")
        self.every, self.rank_range, self.num_negatives = every, tuple(rank_range), num_negatives
        self.seed, self.fill, self.start = seed, fill, start
        self.negatives: MinedNegatives | None = None
        self.built_at_step: int | None = None
        self.build_steps: list[int] = []

    def due(self, step: int) -> bool:
        _check_int("step", step, 0)
        return step > self.start and (step - self.start) % self.every == 0

    def refresh(self, step: int, query_emb, positive_ids, doc_ids, doc_emb, query_texts=None,
                doc_texts=None) -> MinedNegatives:
        """Index ``doc_emb`` (the checkpoint of ``step``) afresh and mine new negatives. Step 0 (the initial
        build) is allowed though ``due(0)`` is False; steps must increase."""
        _check_int("step", step, 0)
        if self.built_at_step is not None and step <= self.built_at_step:
            raise ValueError(f"refresh at step {step} after a build at step {self.built_at_step}; "
                             "steps must increase")
        mined = mine_hard_negatives(query_emb, positive_ids, doc_ids, doc_emb, index=None,  # new ExactIndex
                                    rank_range=self.rank_range, num_negatives=self.num_negatives,
                                    query_texts=query_texts, doc_texts=doc_texts, seed=self.seed + step,
                                    fill=self.fill)
        self.negatives, self.built_at_step = mined, step
        self.build_steps.append(step)
        return mined

    def negatives_at(self, step: int) -> MinedNegatives:
        """The negatives to train on at ``step``: the latest build's, which must not postdate ``step``."""
        _check_int("step", step, 0)
        if self.built_at_step is None:
            raise ValueError("no index built yet; call refresh(0, ...) with the initial checkpoint first")
        if step < self.built_at_step:
            raise ValueError(f"negatives for step {step} requested from an index built later, at step "
                             f"{self.built_at_step}")
        return self.negatives
