"""The recipe's plan (``course_lib.recipe``): step counts from a time budget, by timing a few steps of each stage
on this machine (``make_plan``), or fixed step counts (``steps_plan``); both end in the same step marks for the
first mining, Conan's checks and the learning-rate warm-up."""

import copy
import hashlib
import json
import math
import statistics
import time
from dataclasses import asdict

import torch

from course_lib.hardneg import NegativeSource, mining_pairs
from course_lib.in_batch import add_negatives
from course_lib.mining import mine_hard_negatives
from course_lib.models import encode, make_encoder, tokenize
from course_lib.recipe_stages import RecipeStep
from course_lib.retromae import make_retromae, pretrain_batches, pretrain_texts, retromae_step
from course_lib.samplers import NoDuplicateBatchSampler
from course_lib.utils import get_device


def _seconds_per_step(model, step_fn, batches, lr: float, n: int = 6) -> float:
    """Median seconds of one optimizer step of ``step_fn`` on a throwaway copy of ``model``, counting the
    batch's preparation (tokenising, drawing negatives) as the training loop pays it; ``n`` steps after one
    that warms up the allocator. (A best-of-3 without the batch's preparation under-estimated a real run's
    steps by 12–24 %.)"""
    probe = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr)
    batches, times = iter(batches), []
    for i in range(n + 1):
        t0 = time.perf_counter()
        loss = step_fn(probe, next(batches))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _search_seconds(hn, examples, pool: list[str], seed: int, dim: int, sizes=(256, 1024)) -> float:
    """Seconds the first mining spends searching and sampling for every training query, beyond encoding:
    ``mine_hard_negatives`` over the whole pool, timed for ``sizes`` queries and extrapolated along the line
    through the two (it has a fixed cost and a per-query one). The vectors are synthetic: unit vectors, each
    query close to its positive, as after the in-batch warm-up, so the filter keeps what a trained model's
    would."""
    gen = torch.Generator().manual_seed(seed)
    docs = torch.nn.functional.normalize(torch.randn(len(pool), dim, generator=gen), dim=-1)  # (N, D)
    position = {d: i for i, d in enumerate(pool)}
    points = []
    for size in sizes:
        rows = [examples[i % len(examples)] for i in range(size)]
        near = docs[[position[e.positive] for e in rows]] + 0.3 * torch.randn(size, dim, generator=gen) / dim ** 0.5
        t0 = time.perf_counter()
        mine_hard_negatives(torch.nn.functional.normalize(near, dim=-1), [e.positive for e in rows], pool, docs,
                            rank_range=hn.first_range, num_negatives=hn.n_mined, seed=seed,
                            relative_margin=hn.relative_margin)
        points.append((size, time.perf_counter() - t0))
    (n0, t0), (n1, t1) = points
    per_query = max(t1 - t0, 0.0) / (n1 - n0)
    return max(t0 - per_query * n0, 0.0) + per_query * len(examples)


def make_plan(settings, cfg, data, tokenizer, minutes: float, seed: int) -> dict:
    """Step counts from the time budget: each stage's share of ``minutes``, divided by its measured seconds per
    step; fine-tuning first sets aside the mining: every event embeds the corpus and the training queries once
    (timed here on 1,024 texts), and the first one also searches and samples for every query
    (``_search_seconds``). Pretraining is capped at ``settings.max_pretrain_steps``: the seconds the cap frees go
    to fine-tuning, and the plan records the timed count (``pretrain_steps_timed``). Fine-tuning is capped at
    ``settings.max_passes`` passes over the training pairs (``pass_cap``, recorded as ``finetune_steps_cap``);
    when that cap binds, the plan records the timed step count and the seconds left unspent."""
    budget = minutes * 60.0
    pretrain_s = budget * settings.pretrain_share if settings.pretrain else 0.0
    plan = {"minutes": minutes, "pretrain_seconds": round(pretrain_s, 1), "pretrain_steps": 0}
    if settings.pretrain:
        model = make_retromae(cfg, tokenizer, decoder=settings.pretrain == "retromae")
        batches = pretrain_batches(tokenizer, pretrain_texts(data), cfg.batch_size, cfg.max_doc_len,
                                   generator=torch.Generator().manual_seed(seed))
        per_step = _seconds_per_step(model, retromae_step(), batches, cfg.pretrain_lr)
        timed = max(1, int(pretrain_s / per_step))
        if timed > settings.max_pretrain_steps:  # longer pretraining gave a worse start: its minutes go to fine-tuning
            plan["pretrain_steps_timed"] = timed
            pretrain_s = settings.max_pretrain_steps * per_step
        plan |= {"pretrain_seconds_per_step": round(per_step, 4), "pretrain_seconds": round(pretrain_s, 1),
                 "pretrain_steps": min(timed, settings.max_pretrain_steps)}
    model = make_encoder(cfg, tokenizer)
    examples, pool = mining_pairs(data)
    sample = [data.corpus[i] for i in pool[:1024]]
    t0 = time.perf_counter()
    encode(model, tokenizer, sample, max_length=cfg.max_doc_len)
    encode_all = (time.perf_counter() - t0) / len(sample) * (len(pool) + len(examples))
    # the first mining encodes the queries and the pool, then searches; each Conan check re-encodes both
    # (DynamicHardNegativeMiner encodes the corpus once when it rescores half of it or more)
    strategy = settings.hard_negatives.strategy
    checks = settings.dynamic_checks if strategy == "dynamic" else 0
    search_s = _search_seconds(settings.hard_negatives, examples, pool, seed, model.dim) if strategy != "none" else 0.0
    mining_s = encode_all * (1 + checks) + search_s if strategy != "none" else 0.0
    hn = settings.hard_negatives
    source = NegativeSource(hn, examples, pool, data, tokenizer, cfg, seed)
    source.negatives = [[pool[(r + j + 1) % len(pool)] for j in range(hn.n_mined)] for r in range(len(examples))]
    step_fn = RecipeStep(settings.temperature, settings.memory_size, settings.momentum, model.dim, get_device())
    batches = _calibration_batches(source, model, examples, settings.batch_size, seed, cfg)
    per_step = _seconds_per_step(model, step_fn, batches, settings.lr)
    finetune_s = max(budget - pretrain_s - mining_s, per_step)
    steps = max(settings.segment_steps, int(finetune_s / per_step))
    cap = pass_cap(settings, len(examples))
    if steps > cap:  # past max_passes the encoder fits its training pairs: keep the minutes
        plan |= {"finetune_steps_timed": steps, "unspent_seconds": round((steps - cap) * per_step, 1)}
    plan["finetune_steps_cap"] = cap
    steps = min(steps, cap)
    return plan | {"finetune_seconds_per_step": round(per_step, 4), "mining_seconds_estimate": round(mining_s, 1),
                   "mining_search_seconds_estimate": round(search_s, 1),
                   "finetune_steps": steps} | _schedule(settings, steps)


def pass_cap(settings, n_pairs: int) -> int:
    """Fine-tuning steps of ``settings.max_passes`` passes over ``n_pairs`` training pairs at
    ``settings.batch_size``, rounded up to whole checkpoint segments (``segment_steps``)."""
    segments = math.ceil(settings.max_passes * n_pairs / settings.batch_size / settings.segment_steps)
    return max(1, segments) * settings.segment_steps


def steps_plan(settings, steps: dict) -> dict:
    """The plan for fixed step counts (``{"pretrain_steps": n, "finetune_steps": m}``): no timing."""
    return {"minutes": None, **steps} | _schedule(settings, steps["finetune_steps"])


def _schedule(settings, finetune_steps: int) -> dict:
    """The fine-tuning stage's step marks (``settings``: a ``RecipeSettings``): the first mining after
    ``hardneg_start`` of the steps, then ``dynamic_checks`` Conan checks evenly over the rest (none:
    ``check_every`` past the last step, so never), and the warm-up of the learning rate."""
    start = int(finetune_steps * settings.hardneg_start)
    checks = settings.dynamic_checks
    return {"hardneg_start_step": start,
            "check_every": max(1, (finetune_steps - start) // (checks + 1)) if checks else finetune_steps + 1,
            "warmup_steps": int(finetune_steps * settings.warmup_fraction)}


def digest(items) -> str:
    """The first 16 hex digits of the sha256 of ``items`` (JSON lines): which data a run folder was trained on."""
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps(item, ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()[:16]


def training_pairs(data, batch_size: int, seed: int) -> list:
    """The training pairs the recipe fine-tunes on, or a ValueError before any stage runs: none with its positive
    in the corpus, or too few distinct positives (or queries) to fill one batch without duplicates."""
    examples = [e for e in data.train if e.positive in data.corpus]
    if not examples:
        raise ValueError(f"{data.name!r} has {len(data.train)} training pairs, none with its positive in the corpus: "
                         "the recipe fine-tunes on (query, positive) pairs, so it needs train.jsonl with corpus ids "
                         "as positives (data/README.md's layout)")
    try:
        next(iter(NoDuplicateBatchSampler(examples, batch_size, torch.Generator().manual_seed(seed))))
    except (ValueError, RuntimeError) as why:
        n_pos, n_q = len({e.positive for e in examples}), len({e.query for e in examples})
        raise ValueError(f"batch size {batch_size} is more than one batch of {data.name!r} can hold: no two pairs in a "
                         f"batch may share a positive or a query (each would be a false negative of the other), and "
                         f"its {len(examples)} training pairs have {n_pos} distinct positives and {n_q} distinct "
                         f"queries; pass a smaller --batch-size N (RecipeSettings(batch_size=N) in Python), N at most "
                         f"{min(n_pos, n_q)}") from why
    return examples


def run_identity(data, cfg, settings, examples, budget: dict) -> dict:
    """What a run folder's ``plan.json`` records to refuse resuming with other data or arguments: the data set,
    its size, preset, seed, the settings, digests of the corpus and of the training pairs (in order: it sets the
    batches) and the budget (``{"minutes": m}`` or ``{"steps": {...}}``)."""
    return {"data": data.name, "n_docs": len(data.corpus), "preset": cfg.preset, "seed": cfg.seed,
            "settings": json.loads(json.dumps(asdict(settings))),
            "corpus_sha256": digest(sorted(data.corpus.items())),
            "train_sha256": digest([(e.query, e.positive) for e in examples]),
            "budget": budget}


def _calibration_batches(source, model, examples, batch_size, seed, cfg):
    """Batches with hard-negative columns (stand-in negatives set by ``make_plan``), for timing only."""
    sampler = iter(NoDuplicateBatchSampler(examples, batch_size, torch.Generator().manual_seed(seed)))
    data, tokenizer = source.data, source.tokenizer
    for idx in sampler:
        chosen = [examples[i] for i in idx]
        batch = {"q": tokenize(tokenizer, [e.query for e in chosen], cfg.max_query_len),
                 "d": tokenize(tokenizer, [data.documents[e.positive] for e in chosen], cfg.max_doc_len),
                 "doc_ids": [e.positive for e in chosen]}
        draw = torch.Generator().manual_seed(seed)
        yield add_negatives(batch, source.draw(idx, source.settings.n_per_step, draw), data, tokenizer, cfg)
