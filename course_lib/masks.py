"""Attention masks beyond "every token sees every non-pad token".

Convention: a mask is a BoolTensor (B, L, L) that is True where query position i (row) may attend key
position j (column). ``attention_bias`` turns it, in one place, into the additive float bias (B, 1, L, L)
that transformers' BERT layers add to their attention scores (0 where visible, a very large negative number
where not); a 0/1 *multiplicative* mask is a common bug of PyTorch ports (METHODS.md §2(e)).
"""

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
    """The left-to-right (GPT) mask (B, L, L): row i sees non-pad columns j ≤ i."""
    L = attention_mask.shape[1]
    lower = torch.ones(L, L, dtype=torch.bool, device=attention_mask.device).tril()  # (L, L)
    return padding_mask(attention_mask) & lower  # (B, L, L)


def unilm_mask(segment_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The UniLM sequence-to-sequence mask (Dong et al., 2019, §2.3; SimBERT), (B, L, L).

    With c = cumsum(segment_ids) along the sequence, row i may attend column j iff c_j ≤ c_i and j is not
    padding. Segment-0 tokens ([CLS] A [SEP]) see all of segment 0 and nothing of segment 1; segment-1 tokens
    (B [SEP]) see segment 0 plus themselves and earlier segment-1 tokens. The cumsum rule alone would let the
    final [SEP] see trailing pads (METHODS.md §2(c) 1), so padding is removed separately.
    """
    _check_2d("segment_ids", segment_ids)
    _check_2d("attention_mask", attention_mask)
    if segment_ids.shape != attention_mask.shape:
        raise ValueError(f"segment_ids {tuple(segment_ids.shape)} and attention_mask {tuple(attention_mask.shape)} differ in shape")
    if ((segment_ids != 0) & (segment_ids != 1)).any():
        raise ValueError("segment_ids must hold only 0 (segment A) and 1 (segment B)")
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
