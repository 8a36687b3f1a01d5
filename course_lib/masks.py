"""Attention masks beyond "every token sees every non-pad token".

Convention: a mask is a BoolTensor (B, L, L) that is True where query position i (row) may attend key
position j (column). ``attention_bias`` turns it, in one place, into the additive float bias (B, 1, L, L)
that transformers' BERT layers add to their attention scores (0 where visible, a very large negative number
where not); a 0/1 *multiplicative* mask is a common bug of PyTorch ports (bert4keras applies it as an additive bias).
"""

from numbers import Integral

import torch


def _check_2d(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 2-D tensor (batch, length), got {shape}")


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """The plain bidirectional mask (B, L, L): every row sees every non-pad column."""
    _check_2d("attention_mask", attention_mask)
    L = attention_mask.shape[1]
    return attention_mask.bool()[:, None, :].expand(-1, L, -1)  # (B, L, L)


def causal_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """The left-to-right (GPT) mask (B, L, L): row i sees non-pad columns j ≤ i. ``attention_mask`` must be 2-D."""
    _check_2d("attention_mask", attention_mask)
    L = attention_mask.shape[1]
    lower = torch.ones(L, L, dtype=torch.bool, device=attention_mask.device).tril()  # (L, L)
    return padding_mask(attention_mask) & lower  # (B, L, L)


def _check_segments_monotone(segment_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    """Per row, the non-pad segment ids must not go back from 1 to 0 (pads, any id, are skipped)."""
    real = attention_mask.bool()  # (B, L)
    seg = segment_ids.long().masked_fill(~real, 0)  # (B, L), pads never raise the running max
    back = real & (seg < seg.cummax(dim=1).values)  # (B, L): a segment-A token after a segment-B token
    if back.any():
        b, j = (int(v) for v in back.nonzero()[0])
        raise ValueError(
            f"segment_ids row {b} goes from segment B (1) back to 0 at non-pad position {j}: the UniLM mask needs "
            f"[CLS] A [SEP] (0s) then B [SEP] (1s), padding aside; got {segment_ids[b].tolist()}. Build the pair "
            "with tokenizer(first, second, return_token_type_ids=True)"
        )


def unilm_mask(segment_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The UniLM sequence-to-sequence mask (Dong et al., 2019, §2.3; SimBERT), (B, L, L).

    With c = cumsum(segment_ids) along the sequence, row i may attend column j iff c_j ≤ c_i and j is not
    padding. Segment-0 tokens ([CLS] A [SEP]) see all of segment 0 and nothing of segment 1; segment-1 tokens
    (B [SEP]) see segment 0 plus themselves and earlier segment-1 tokens. The cumsum rule alone would let the
    final [SEP] see trailing pads (Dong et al., 2019, UniLM, §2.3), so padding is removed separately.

    Checks: both 2-D of one shape; ``segment_ids`` only 0/1 and, over the non-pad positions of each row,
    never back from 1 to 0 (pads may hold any id, as a tokenizer pads token_type_ids with 0).
    """
    _check_2d("segment_ids", segment_ids)
    _check_2d("attention_mask", attention_mask)
    if segment_ids.shape != attention_mask.shape:
        raise ValueError(f"segment_ids {tuple(segment_ids.shape)} and attention_mask {tuple(attention_mask.shape)} differ in shape")
    if ((segment_ids != 0) & (segment_ids != 1)).any():
        raise ValueError("segment_ids must hold only 0 (segment A) and 1 (segment B)")
    _check_segments_monotone(segment_ids, attention_mask)
    c = segment_ids.long().cumsum(dim=1)  # (B, L)
    seq2seq = c[:, None, :] <= c[:, :, None]  # (B, L, L): [b, i, j] = c_j <= c_i
    return seq2seq & padding_mask(attention_mask)  # (B, L, L)


def attention_bias(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Boolean mask (B, L, L) → additive bias (B, 1, L, L) for transformers' attention: 0 where visible, the
    dtype's most negative finite number where hidden (so softmax gives those columns weight 0 without the NaN
    that −inf would give a fully hidden row). Pass it as ``attention_mask=`` to a ``BertModel``."""
    if mask.dtype != torch.bool or mask.dim() != 3 or mask.shape[1] != mask.shape[2]:
        raise ValueError(f"mask must be a square BoolTensor (B, L, L), got {mask.dtype} {tuple(mask.shape)}")
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)  # (B, L, L)
    bias.masked_fill_(~mask, torch.finfo(dtype).min)
    return bias[:, None]  # (B, 1, L, L): one mask shared by every head


# ---------------------------------------------------------------------------------------------------------
# Masked-token masks (RetroMAE, Xiao et al., 2022)


def _check_ratio(name: str, ratio: float) -> None:
    if not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {ratio!r}")


def whole_word_mask(
    input_ids: torch.Tensor,
    word_ids: torch.Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    mask_ratio: float = 0.3,
    first_regular_id: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-word masking for masked-language-model input (BERT, Devlin et al., 2019, §3.1 and its
    whole-word release; RetroMAE §3.1 masks the encoder input this way with ratio 0.3).

    ``word_ids`` (B, L) numbers the words of each row (a fast tokenizer's ``word_ids()``) and is −1 on special
    tokens and padding, which are never masked. Per row, words are visited in random order and taken whole
    while the masked-token count stays within round(n · mask_ratio) of the row's n word tokens (a word that
    would overshoot is skipped; at least one word when mask_ratio > 0). This is the rule of transformers 4's
    ``DataCollatorForWholeWordMask`` (which RetroMAE's reference collator subclasses) with one difference: that
    collator's budget is round(len · mask_ratio) where len counts [CLS] and [SEP] as well, so it masks
    round((n + 2) · mask_ratio) word tokens where this function masks round(n · mask_ratio) (on FAST's pretraining
    texts at ratio 0.3, a mean share of about 0.34 of the word tokens against 0.30; notebook 03, section 2).
    transformers 5 replaced that collator with ``DataCollatorForLanguageModeling(whole_word_mask=True)``, which
    draws each word independently with probability mask_ratio (the same share on average, a count that varies)
    and turns every chosen token into [MASK]. Of the chosen tokens here, 80 % become
    ``[MASK]``, 10 % a random regular token (ids ``first_regular_id`` … ``vocab_size`` − 1) and 10 % stay.
    Returns ``(masked input_ids (B, L), labels (B, L))``: labels hold the original id where a token was chosen
    and −100 (ignored by cross-entropy) elsewhere. The inputs are not modified.

    Checks: both 2-D of one shape, ``mask_ratio`` in [0, 1), ``mask_token_id`` an int and ``first_regular_id``
    in [0, vocab_size).
    """
    _check_2d("input_ids", input_ids)
    _check_2d("word_ids", word_ids)
    if input_ids.shape != word_ids.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and word_ids {tuple(word_ids.shape)} differ in shape")
    _check_ratio("mask_ratio", mask_ratio)
    if not 0 <= first_regular_id < vocab_size:
        raise ValueError(f"first_regular_id {first_regular_id} must lie in [0, vocab_size={vocab_size})")
    if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, Integral) or not 0 <= mask_token_id < vocab_size:
        raise ValueError(
            f"mask_token_id {mask_token_id!r} must be an int in [0, vocab_size={vocab_size}): it is written into "
            "input_ids; pass tokenizer.mask_token_id"
        )
    chosen = torch.zeros(input_ids.shape, dtype=torch.bool)  # (B, L)
    words_cpu = word_ids.cpu()
    for b in range(input_ids.shape[0]):
        row = words_cpu[b]
        words = row[row >= 0].unique().tolist()
        budget = max(1, round(int((row >= 0).sum()) * mask_ratio)) if mask_ratio > 0 and words else 0
        count = 0
        for w in torch.randperm(len(words), generator=generator).tolist():
            where = row == words[w]  # (L,) the word's tokens
            size = int(where.sum())
            if count + size > budget:
                continue
            chosen[b] |= where
            count += size
            if count == budget:
                break
    chosen = chosen.to(input_ids.device)
    roll = torch.rand(input_ids.shape, generator=generator).to(input_ids.device)  # (B, L)
    random_ids = torch.randint(first_regular_id, vocab_size, input_ids.shape, generator=generator).to(input_ids.device)
    masked = input_ids.clone()
    masked[chosen & (roll < 0.8)] = mask_token_id
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    masked[swap] = random_ids[swap]
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))  # (B, L)
    return masked, labels


def retromae_decoder_mask(
    attention_mask: torch.Tensor,
    special_tokens_mask: torch.Tensor | None = None,
    mask_ratio: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """RetroMAE's position-specific decoder mask (Xiao et al., 2022, §3.2 "enhanced decoding", eq. 7), (B, L, L).

    Row i (the query that reconstructs token i) may attend column j iff j ≠ i, j is not padding, and j is
    either a special token — column 0 holds the sentence embedding h, so every other row sees it — or one of
    the row's randomly kept ordinary tokens: of the other ordinary columns, round(m · mask_ratio) are hidden,
    single tokens drawn afresh for each row. The reference differs (staoxiao/RetroMAE ``src/pretrain/data.py``):
    for each text it draws a pool of min(length, 256) whole-word masks and gives each row one of them at random,
    with the row's own token hidden too, so rows may share a mask and a word is hidden or kept whole. So each
    token is predicted from h plus a *different* random ~(1 − mask_ratio) of its context, never from itself.
    ``special_tokens_mask`` (B, L) defaults to column 0 and each row's last non-pad token ([CLS], final [SEP]).
    Checks: ``attention_mask`` 2-D with length ≥ 1, ``special_tokens_mask`` of its shape, ``mask_ratio`` in [0, 1).
    """
    _check_2d("attention_mask", attention_mask)
    if attention_mask.shape[1] == 0:
        raise ValueError("attention_mask has length 0: the decoder mask needs at least column 0 (the sentence "
                         "embedding h); tokenize with [CLS] ... [SEP]")
    _check_ratio("mask_ratio", mask_ratio)
    real = attention_mask.bool()  # (B, L)
    B, L = real.shape
    if special_tokens_mask is None:
        special_tokens_mask = torch.zeros_like(real)
        special_tokens_mask[:, 0] = True
        special_tokens_mask[torch.arange(B), real.sum(1).clamp(min=1) - 1] = True  # the final [SEP]
    _check_2d("special_tokens_mask", special_tokens_mask)
    if special_tokens_mask.shape != real.shape:
        raise ValueError(f"special_tokens_mask {tuple(special_tokens_mask.shape)} and attention_mask {tuple(real.shape)} differ")
    special = special_tokens_mask.bool() & real  # (B, L)
    ordinary = real & ~special  # (B, L) columns that may be hidden
    eye = torch.eye(L, dtype=torch.bool, device=real.device)  # (L, L)
    candidates = ordinary[:, None, :] & ~eye  # (B, L, L): ordinary columns other than the row's own
    m = candidates.sum(-1, keepdim=True)  # (B, L, 1)
    n_hide = (m.float() * mask_ratio).round().long()  # (B, L, 1)
    scores = torch.rand(B, L, L, generator=generator).to(real.device)  # (B, L, L)
    scores = scores.masked_fill(~candidates, 2.0)  # non-candidates sort last, never hidden
    rank = scores.argsort(-1).argsort(-1)  # (B, L, L): rank of column j in row i's random order
    hidden = candidates & (rank < n_hide)  # (B, L, L)
    return real[:, None, :] & ~eye & ~hidden  # (B, L, L)
