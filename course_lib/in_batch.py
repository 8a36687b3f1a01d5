"""Training pieces of the in-batch family: pair batches, the in-batch training step, and SimCSE.

In-batch negatives (DPR, Karpukhin et al., 2020, §3.2): in a batch of B (query, positive) pairs, the other
B − 1 positives serve as each query's negatives, for free. Natural hard negatives (here: the other senses of
the same word) can be added as extra columns. SimCSE (Gao et al., 2021, §3) trains the same loss without
labels: a text and *itself*, passed twice through the encoder in train mode, differ only by dropout noise and
form the positive pair (unsupervised); the supervised variant uses labelled pairs plus a hard negative (§4).
The loss itself is ``course_lib.losses.in_batch_softmax_loss``.
"""

import torch

from course_lib.losses import in_batch_softmax_loss
from course_lib.models import make_encoder, tokenize
from course_lib.samplers import NoDuplicateBatchSampler, RandomBatchSampler
from course_lib.train import History, train
from course_lib.utils import get_device


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def pair_batches(data, tokenizer, sampler, cfg, n_hard: int = 0, generator: torch.Generator | None = None):
    """Yield tokenized batches of (query, positive[, hard negatives]) from ``data.train``.

    Each batch is ``{"q": tokens (B, Lq), "d": tokens (B, Ld), "doc_ids": [B ids], "n": tokens (B·K, Ld)}``
    with ``n`` only when ``n_hard`` = K > 0. Hard negatives are drawn from each example's natural negatives
    (other senses of its words) with ``generator``; an example with fewer than K gets random documents.
    """
    if n_hard < 0:
        raise ValueError(f"n_hard must be >= 0, got {n_hard}")
    doc_pool = sorted(data.documents)
    for idx in sampler:
        examples = [data.train[i] for i in idx]
        batch = {
            "q": tokenize(tokenizer, [e.query for e in examples], cfg.max_query_len),
            "d": tokenize(tokenizer, [data.documents[e.positive] for e in examples], cfg.max_doc_len),
            "doc_ids": [e.positive for e in examples],
        }
        if n_hard:
            neg_ids = []
            for e in examples:
                pool = list(e.negatives)
                order = torch.randperm(len(pool), generator=generator).tolist()
                picked = [pool[j] for j in order[:n_hard]]
                while len(picked) < n_hard:
                    cand = doc_pool[torch.randint(len(doc_pool), (1,), generator=generator).item()]
                    if cand != e.positive and cand not in picked:
                        picked.append(cand)
                neg_ids.append(picked)
            add_negatives(batch, neg_ids, data, tokenizer, cfg)
        yield batch


def add_negatives(batch: dict, neg_ids: list[list[str]], data, tokenizer, cfg) -> dict:
    """Add K hard negatives per query to a pair batch: ``neg_ids[i]`` holds query i's K document ids (the same K
    for every query). Sets ``batch["n"]`` (tokens (B·K, Ld)) and ``batch["neg_ids"]`` in column-block order:
    block j holds the j-th negative of every query, as ``in_batch_step`` and the loss expect."""
    k = len(neg_ids[0]) if neg_ids else 0
    if len(neg_ids) != len(batch["doc_ids"]) or k == 0 or any(len(row) != k for row in neg_ids):
        raise ValueError(f"need one row of K >= 1 negative ids per query ({len(batch['doc_ids'])} rows, the same "
                         f"K in each), got row lengths {[len(r) for r in neg_ids][:8]}")
    flat = [neg_ids[i][j] for j in range(k) for i in range(len(neg_ids))]
    batch["n"] = tokenize(tokenizer, [data.documents[n] for n in flat], cfg.max_doc_len)
    batch["neg_ids"] = flat
    return batch


def in_batch_step(temperature: float, *, symmetric: bool = False, margin: float = 0.0, mask_duplicates: bool = True):
    """A ``step_fn`` for ``course_lib.train.train``: encode queries, positives and hard negatives, then the
    in-batch softmax loss. ``mask_duplicates`` passes the doc ids so repeated positives are not negatives."""

    def step(model, batch):
        device = next(model.parameters()).device
        q = model(**_to(batch["q"], device))  # (B, D)
        d = model(**_to(batch["d"], device))  # (B, D)
        negatives = None
        ids = batch["doc_ids"]
        if "n" in batch:
            n = model(**_to(batch["n"], device))  # (B·K, D)
            negatives = n.view(-1, q.shape[0], n.shape[-1]).transpose(0, 1)  # (B, K, D)
            ids = ids + batch["neg_ids"]
        return in_batch_softmax_loss(q, d, negatives, temperature=temperature, margin=margin,
                                     doc_ids=ids if mask_duplicates else None, symmetric=symmetric)

    return step


def simcse_batches(texts: list[str], tokenizer, batch_size: int, max_length: int, generator: torch.Generator):
    """Yield tokenized batches of distinct texts for unsupervised SimCSE (each text is its own positive)."""
    texts = list(dict.fromkeys(texts))  # a repeated text would be a false negative of itself
    if batch_size > len(texts):
        raise ValueError(f"batch_size {batch_size} exceeds the {len(texts)} distinct texts")
    while True:
        order = torch.randperm(len(texts), generator=generator).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield tokenize(tokenizer, [texts[i] for i in order[start : start + batch_size]], max_length)


def simcse_step(temperature: float = 0.05):
    """Unsupervised SimCSE (Gao et al., 2021, §3): the same batch through the encoder twice, in train mode;
    dropout makes the two views differ, and view 2 of text i is the positive of view 1 of text i."""

    def step(model, batch):
        device = next(model.parameters()).device
        batch = _to(batch, device)
        z1 = model(**batch)  # (B, D), one dropout mask
        z2 = model(**batch)  # (B, D), another dropout mask
        return in_batch_softmax_loss(z1, z2, temperature=temperature)

    return step


def train_in_batch(
    cfg,
    data,
    tokenizer,
    *,
    model=None,
    n_hard: int = 0,
    batch_size: int | None = None,
    steps: int | None = None,
    no_duplicates: bool = True,
    symmetric: bool = False,
    generator: torch.Generator | None = None,
    eval_fn=None,
    eval_every: int | None = None,
    progress: bool = True,
    warmup_steps: int = 0,
    decay: str = "constant",
) -> tuple[torch.nn.Module, History]:
    """Supervised in-batch training on ``data.train`` (a new encoder unless ``model`` is given), with the
    preset's temperature, learning rate, step budget and wall-clock cap; ``warmup_steps`` and ``decay`` shape
    the learning rate as ``course_lib.train.train`` does (default: constant)."""
    device = get_device()
    model = (model or make_encoder(cfg, tokenizer)).to(device)
    generator = generator or torch.Generator().manual_seed(cfg.seed)
    batch_size = batch_size or cfg.batch_size
    sampler_cls = NoDuplicateBatchSampler if no_duplicates else RandomBatchSampler
    sampler = sampler_cls(data.train, batch_size, generator)
    history = train(
        model,
        in_batch_step(cfg.temperature, symmetric=symmetric),
        pair_batches(data, tokenizer, sampler, cfg, n_hard=n_hard, generator=generator),
        optimizer=torch.optim.AdamW(model.parameters(), lr=cfg.lr),
        max_steps=steps or cfg.train_steps,
        time_budget_s=cfg.train_seconds,
        eval_fn=eval_fn,
        eval_every=eval_every,
        progress=progress,
        warmup_steps=warmup_steps,
        decay=decay,
        desc=f"in-batch B={batch_size}" + (f" +{n_hard} hard" if n_hard else ""),
    )
    return model, history


def pretrain_simcse(
    cfg,
    texts: list[str],
    tokenizer,
    *,
    model=None,
    dropout: float = 0.1,
    steps: int | None = None,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> tuple[torch.nn.Module, History]:
    """Unsupervised SimCSE on raw texts. Dropout is the only noise, so the encoder is built with
    ``dropout`` > 0 (SimCSE uses BERT's default 0.1); with dropout 0 the two views coincide."""
    if not dropout > 0:
        raise ValueError("unsupervised SimCSE needs dropout > 0: dropout is its only source of noise")
    device = get_device()
    model = (model or make_encoder(cfg.replace(dropout=dropout), tokenizer)).to(device)
    generator = generator or torch.Generator().manual_seed(cfg.seed)
    batch_size = batch_size or cfg.batch_size
    history = train(
        model,
        simcse_step(cfg.temperature),
        simcse_batches(texts, tokenizer, batch_size, cfg.max_doc_len, generator),
        optimizer=torch.optim.AdamW(model.parameters(), lr=cfg.lr),
        max_steps=steps or cfg.train_steps,
        time_budget_s=cfg.train_seconds,
        progress=progress,
        desc="SimCSE (unsupervised)",
    )
    return model, history
