"""Generating from a SimBERT model, and searching with its encoder (notebook 02).

``generate`` decodes segment B token by token under the UniLM mask (greedy, or sampled with top-k / top-p);
``generate_reranked`` decodes as the SimBERT release does (Su, 2020, ``gen_synonyms`` in
ZhuiyiTechnology/simbert): several samples, ranked by the cosine of their [CLS] vectors to the input's;
``similar_sentences`` ranks candidate sentences by that cosine. Training lives in ``course_lib.simbert``.
"""

import torch

from course_lib.models import encode
from course_lib.simbert import SimBERT


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Keep the ``top_k`` largest logits per row (0 = all), then the smallest set whose probability reaches
    ``top_p`` (nucleus sampling, Holtzman et al., 2020, §3.1); the rest become −inf."""
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (n, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (n, V)
        cum = sorted_logits.softmax(-1).cumsum(-1)  # (n, V)
        drop_sorted = cum - sorted_logits.softmax(-1) >= top_p  # mass before this token already reaches top_p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _ban_repeats(logits: torch.Tensor, out: torch.Tensor, n: int) -> None:
    """In place: −inf on every token that would repeat an n-gram already in that row's output ``out``
    (n, t), the guard greedy decoding needs against loops ("the the the …"; Paulus et al., 2018, §2.5)."""
    t = out.shape[1]
    if t < n - 1:
        return
    for r, row in enumerate(out.tolist()):
        prefix = row[t - n + 1:] if n > 1 else []
        seen = [row[i + n - 1] for i in range(t - n + 1) if row[i:i + n - 1] == prefix]
        if seen:
            logits[r, seen] = float("-inf")


@torch.inference_mode()
def generate(
    model: SimBERT,
    tokenizer,
    texts: list[str],
    *,
    max_new_tokens: int = 32,
    max_length: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    no_repeat_ngram_size: int = 0,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Generate segment B for each text A, greedily or by sampling, until [SEP] or ``max_new_tokens``.

    All texts decode together: row r is ``[CLS] A_r [SEP] <pads> b_1 … b_t`` with segment 0 then 1, the pads
    hidden by the mask and the position ids of b continuing right after A_r's [SEP], so every row computes
    exactly what it would alone. Special tokens other than [SEP] are never produced. Sampling divides the
    logits by ``temperature`` and then applies ``top_k`` / ``top_p``; pass a seeded CPU ``generator`` for
    reproducible samples. ``no_repeat_ngram_size`` = n > 0 forbids any token that would repeat an n-gram of
    the row's output so far (the guard ``transformers``' ``generate`` offers under the same name).
    """
    if isinstance(texts, str):
        raise TypeError("generate expects a list of texts, not a single string; wrap it: [text]")
    if not texts:
        raise ValueError("generate got an empty list of texts")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = no top-k filter), got {top_k}")
    if no_repeat_ngram_size < 0:
        raise ValueError(f"no_repeat_ngram_size must be >= 0 (0 = no guard), got {no_repeat_ngram_size}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    src, src_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)  # (n, La)
    n, la = src.shape
    src_len = src_mask.sum(1)  # (n,)
    banned = torch.tensor([i for i in tokenizer.all_special_ids if i != tokenizer.sep_token_id], device=device)
    out = torch.empty(n, 0, dtype=torch.long, device=device)  # (n, t) generated so far
    done = torch.zeros(n, dtype=torch.bool, device=device)
    try:
        for t in range(max_new_tokens):
            ids = torch.cat([src, out], 1)  # (n, La + t)
            mask = torch.cat([src_mask, torch.ones_like(out)], 1)  # (n, La + t)
            seg = torch.cat([torch.zeros_like(src), torch.ones_like(out)], 1)  # (n, La + t)
            pos = torch.cat([torch.arange(la, device=device).expand(n, -1), src_len[:, None] + torch.arange(t, device=device)], 1)
            hidden = model.seq2seq_hidden(ids, mask, seg, position_ids=pos)  # (n, La + t, H)
            # the next token is predicted at the last real position: A's [SEP] at step 0, then b_t
            last = hidden[:, -1] if t else hidden[torch.arange(n, device=device), src_len - 1]  # (n, H)
            logits = model.lm_head(last).float()  # (n, V)
            logits[:, banned] = float("-inf")
            if no_repeat_ngram_size:
                _ban_repeats(logits, out, no_repeat_ngram_size)
            if do_sample:
                probs = _filter_logits(logits / temperature, top_k, top_p).softmax(-1)  # (n, V)
                nxt = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(device)  # (n,)
            else:
                nxt = logits.argmax(-1)  # (n,)
            nxt = torch.where(done, torch.full_like(nxt, tokenizer.sep_token_id), nxt)
            out = torch.cat([out, nxt[:, None]], 1)
            done |= nxt == tokenizer.sep_token_id
            if done.all():
                break
    finally:
        model.train(was_training)
    return [tokenizer.decode(row, skip_special_tokens=True) for row in out.cpu()]


def generate_reranked(model, tokenizer, texts: list[str], *, n_samples: int = 8, top_k: int = 5,
                      generator: torch.Generator | None = None, **kwargs) -> list[str]:
    """SimBERT's own decoding (Su, 2020, ``gen_synonyms`` in ZhuiyiTechnology/simbert): ``n_samples`` outputs
    per text sampled from the ``top_k`` most likely tokens, then the one whose sentence vector is closest
    (cosine) to the input's. Empty outputs and copies of the input are passed over unless nothing else is
    left. ``kwargs`` go to ``generate`` (e.g. ``no_repeat_ngram_size``, ``max_new_tokens``)."""
    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1:
        raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
    if isinstance(texts, str):
        raise TypeError("generate_reranked expects a list of texts, not a single string; wrap it: [text]")
    texts = list(texts)
    samples = generate(model, tokenizer, [t for t in texts for _ in range(n_samples)], do_sample=True, top_k=top_k,
                       generator=generator, **kwargs)
    max_length = kwargs.get("max_length", 32)
    q = encode(model, tokenizer, texts, max_length=max_length)  # (n, H), unit vectors
    c = encode(model, tokenizer, [s or "[empty]" for s in samples], max_length=max_length)  # (n·k, H)
    scores = (c.view(len(texts), n_samples, -1) @ q[:, :, None]).squeeze(-1)  # (n, k): cosine to the input
    out = []
    for i, text in enumerate(texts):
        cands = samples[i * n_samples:(i + 1) * n_samples]
        useless = torch.tensor([not c.strip() or c.strip().lower() == text.strip().lower() for c in cands])
        row = scores[i].masked_fill(useless, float("-inf")) if not useless.all() else scores[i]
        out.append(cands[int(row.argmax())])
    return out


def similar_sentences(model, tokenizer, query: str, candidates: list[str], k: int = 5, max_length: int = 48) -> list[tuple[str, float]]:
    """The ``k`` candidates closest to ``query`` by the model's sentence vectors (cosine), best first."""
    if not candidates:
        raise ValueError("similar_sentences needs at least one candidate")
    if not 1 <= k <= len(candidates):
        raise ValueError(f"k must be between 1 and the {len(candidates)} candidates, got {k}")
    q = encode(model, tokenizer, [query], max_length=max_length)  # (1, H)
    c = encode(model, tokenizer, list(candidates), max_length=max_length)  # (N, H)
    scores, idx = (c @ q[0]).topk(k)  # (k,)
    return [(candidates[i], s) for i, s in zip(idx.tolist(), scores.tolist())]
