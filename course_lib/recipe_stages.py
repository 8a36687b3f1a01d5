"""The recipe's training stages (``course_lib.recipe``): the fine-tuning step (in-batch softmax over positives,
hard negatives and an optional memory bank), the batches, the pretraining and fine-tuning stages with their atomic
checkpoints, and the dev/test evaluation. ``course_lib.recipe`` plans a run and calls these in order."""

import copy
import time
from pathlib import Path

import torch

from course_lib.hardneg import NegativeSource, mining_pairs
from course_lib.in_batch import _to, add_negatives
from course_lib.losses import duplicate_mask, similarity_logits
from course_lib.memory import MemoryBank
from course_lib.models import encode, encoder_from_bert, tokenize
from course_lib.retromae import make_retromae, pretrain_batches, pretrain_texts, retromae_step
from course_lib.samplers import NoDuplicateBatchSampler
from course_lib.train import train
from course_lib.utils import atomic_path, get_device


class RecipeStep:
    """The fine-tuning ``step_fn``: in-batch softmax over [positives, each query's hard negatives, the memory].
    Every column holding a row's positive document (a duplicate, or a memory entry of it) is masked."""

    def __init__(self, temperature: float, memory_size: int, momentum: float, dim: int, device):
        self.temperature, self.momentum = temperature, momentum
        self.memory = MemoryBank(memory_size, dim, device=device) if memory_size else None
        self.key_encoder = None

    @torch.no_grad()
    def _key(self, model):
        if self.key_encoder is None:
            self.key_encoder = copy.deepcopy(model).requires_grad_(False)
        else:
            for key, live in zip(self.key_encoder.parameters(), model.parameters()):
                key.mul_(self.momentum).add_(live.detach(), alpha=1.0 - self.momentum)
        return self.key_encoder.train(model.training)

    def __call__(self, model, batch) -> torch.Tensor:
        device = next(model.parameters()).device
        q = model(**_to(batch["q"], device))  # (B, D)
        d = model(**_to(batch["d"], device))  # (B, D)
        ids, negatives = list(batch["doc_ids"]), None
        if "n" in batch:
            n = model(**_to(batch["n"], device))  # (B·K, D)
            negatives = n.view(-1, q.shape[0], n.shape[-1]).transpose(0, 1)  # (B, K, D)
            ids += batch["neg_ids"]
        logits = similarity_logits(q, d, negatives, temperature=self.temperature)  # (B, B + B·K)
        if self.memory is not None and len(self.memory):
            stored, stored_ids, _ = self.memory.tensors()  # (M, D), unit vectors
            logits = torch.cat([logits, torch.nn.functional.normalize(q, dim=-1) @ stored.T / self.temperature], 1)
            ids += list(stored_ids)
        logits = logits.masked_fill(duplicate_mask(ids, q.shape[0], logits.shape[1]).to(device), float("-inf"))
        if self.memory is not None:
            self.memory.enqueue(self._key(model)(**_to(batch["d"], device)).detach(), batch["doc_ids"])
        return torch.nn.functional.cross_entropy(logits, torch.arange(q.shape[0], device=device))


def atomic_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def finetune_batches(source: NegativeSource, model, examples, batch_size: int, start: int, seed: int, cfg):
    """The fine-tuning batches from step ``start`` on, identical to those of a run that started at 0: the
    sampler is replayed (indices only) up to ``start``, and each step's negative draw has its own generator."""
    data, tokenizer = source.data, source.tokenizer
    sampler = iter(NoDuplicateBatchSampler(examples, batch_size, torch.Generator().manual_seed(seed)))
    for _ in range(start):
        next(sampler)
    step = start
    for idx in sampler:
        source.before_step(step, model)
        chosen = [examples[i] for i in idx]
        batch = {"q": tokenize(tokenizer, [e.query for e in chosen], cfg.max_query_len),
                 "d": tokenize(tokenizer, [data.documents[e.positive] for e in chosen], cfg.max_doc_len),
                 "doc_ids": [e.positive for e in chosen]}
        if source.negatives is not None:
            draw = torch.Generator().manual_seed(seed * 1_000_003 + step)
            add_negatives(batch, source.draw(idx, source.settings.n_per_step, draw), data, tokenizer, cfg)
        yield batch
        step += 1


def split_metrics(model, tokenizer, data, cfg, split: str, index) -> dict:
    """Retrieval metrics of ``model`` on ``split``, searching ``index`` (which holds the corpus's embeddings)."""
    from course_lib.metrics import KS, retrieval_metrics

    _, texts, relevant = data.split_items(split)
    ranked, _ = index.search(encode(model, tokenizer, texts, max_length=cfg.max_query_len), max(KS))
    return {k: round(v, 4) for k, v in retrieval_metrics(ranked, relevant, KS).items()}


def train_segments(model, step_fn, batches, optimizer, *, done: int, total: int, warmup: int, segment: int, save, bar,
              grad_clip: float = 1.0) -> float:
    """Train from step ``done`` to ``total`` in segments of ``segment`` steps, one warm-up + linear-decay
    schedule over the whole stage, calling ``save(step, seconds)`` after each; returns the training seconds."""
    seconds = 0.0
    while done < total:
        history = train(model, step_fn, batches, optimizer=optimizer, max_steps=min(segment, total - done),
                        grad_clip=grad_clip, warmup_steps=min(warmup, total), decay="linear", schedule_offset=done,
                        schedule_steps=total, progress=False)
        done += history.steps
        seconds += history.train_seconds
        bar.update(history.steps)
        bar.set_postfix(loss=f"{history.losses[-1]:.3f}")
        save(done, seconds)
        if history.stopped == "data":
            break
    return seconds


def pretrain_stage(settings, cfg, data, tokenizer, plan, state: Path, seed: int, tqdm) -> tuple:
    import itertools

    model = make_retromae(cfg, tokenizer, decoder=settings.pretrain == "retromae").to(get_device())
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr, weight_decay=0.01)
    path, done, seconds = state / "pretrain.pt", 0, 0.0
    if path.exists():
        saved = torch.load(path, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        done, seconds = saved["step"], saved["seconds"]
    total = plan["pretrain_steps"]
    batches = itertools.islice(pretrain_batches(tokenizer, pretrain_texts(data), cfg.batch_size, cfg.max_doc_len,
                                                generator=torch.Generator().manual_seed(seed)), done, None)

    def save(step, new_seconds):
        atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                      "seconds": seconds + new_seconds}, path)

    with tqdm(total=total, initial=done, desc=f"1/3 pretrain ({settings.pretrain})") as bar:
        seconds += train_segments(model, retromae_step(), batches, optimizer, done=done, total=total,
                             warmup=int(total * settings.warmup_fraction), segment=settings.segment_steps,
                             save=save, bar=bar)
    return model.bert, seconds


def dev_point(model, tokenizer, data, cfg, step: int) -> dict:
    """Dev metrics (exact search over the whole corpus) at fine-tuning step ``step``, and the seconds they took
    (kept out of the training seconds)."""
    from course_lib.index import ExactIndex
    from course_lib.metrics import embed_corpus

    t0 = time.perf_counter()
    ids, docs = embed_corpus(model, tokenizer, data, max_length=cfg.max_doc_len)  # (N, D)
    exact = ExactIndex(docs.shape[1])
    exact.add(ids, docs)
    return {"step": step, **split_metrics(model, tokenizer, data, cfg, "dev", exact),
            "eval_seconds": round(time.perf_counter() - t0, 1)}


def finetune_stage(settings, cfg, data, tokenizer, plan, state: Path, seed: int, bert, tqdm,
                    curve_every: int = 0) -> tuple:
    from dataclasses import replace

    model = encoder_from_bert(cfg, tokenizer, bert, pooling="mean").to(get_device())
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr)
    hn = replace(settings.hard_negatives, warmup_steps=plan["hardneg_start_step"], check_every=plan["check_every"])
    examples, pool = mining_pairs(data)
    source = NegativeSource(hn, examples, pool, data, tokenizer, cfg, seed)
    step_fn = RecipeStep(settings.temperature, settings.memory_size, settings.momentum, model.dim, get_device())
    path, done, seconds, curve = state / "finetune.pt", 0, 0.0, []
    kept = ("negatives", "miner", "refresher", "log", "seconds")
    if path.exists():
        saved = torch.load(path, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        done, seconds, curve = saved["step"], saved["seconds"], saved.get("curve", [])
        for name in kept:
            setattr(source, name, saved["source"][name])
        if source.miner is not None:
            source.negatives = source.miner.negatives  # the miner edits these lists in place
        step_fn.memory, step_fn.key_encoder = saved["memory"], saved["key_encoder"]
    total = plan["finetune_steps"]
    batches = finetune_batches(source, model, examples, settings.batch_size, done, seed, cfg)

    def save(step, new_seconds):
        if curve_every and step % curve_every == 0 and step < total:  # the last point is the run's own dev eval
            curve.append(dev_point(model, tokenizer, data, cfg, step))
        atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                      "seconds": seconds + new_seconds, "source": {n: getattr(source, n) for n in kept},
                      "memory": step_fn.memory, "key_encoder": step_fn.key_encoder, "curve": curve}, path)

    if curve_every and done == 0 and not curve and data.queries.get("dev"):
        curve.append(dev_point(model, tokenizer, data, cfg, 0))  # the start (pretrained or not), untuned
    if not data.queries.get("dev"):
        curve_every = 0

    with tqdm(total=total, initial=done, desc="2/3 fine-tune (in-batch + hard negatives)") as bar:
        seconds += train_segments(model, step_fn, batches, optimizer, done=done, total=total, warmup=plan["warmup_steps"],
                             segment=settings.segment_steps, save=save, bar=bar)
    return model, seconds, source, curve
