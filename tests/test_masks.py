"""Attention masks: the UniLM seq2seq mask (Dong et al., 2019, §2.3), causal and padding masks, and the additive
bias that transformers' BERT layers take."""

import pytest
import torch
from transformers import BertConfig, BertModel

from course_lib.masks import attention_bias, causal_mask, padding_mask, unilm_mask


def rows(mask: torch.Tensor) -> list[str]:
    return ["".join("1" if v else "0" for v in row) for row in mask.tolist()]


def test_worked_example():
    # [CLS] a a [SEP] b b [SEP]
    seg = torch.tensor([[0, 0, 0, 0, 1, 1, 1]])
    mask = unilm_mask(seg, torch.ones_like(seg))[0]
    assert rows(mask) == ["1111000"] * 4 + ["1111100", "1111110", "1111111"]


def test_cumsum_rule_alone_lets_the_last_sep_see_pads_and_the_mask_does_not():
    seg = torch.tensor([[0, 0, 0, 1, 1, 0, 0]])  # [CLS] a [SEP] b [SEP] [PAD] [PAD]
    att = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    c = seg.cumsum(1)
    raw = c[:, None, :] <= c[:, :, None]
    assert raw[0, 4, 5] and raw[0, 4, 6]  # the trap: the cumsum rule alone lets the last [SEP] attend to padding
    mask = unilm_mask(seg, att)[0]
    assert not mask[:, 5:].any()
    assert rows(mask[:5]) == ["1110000"] * 3 + ["1111000", "1111100"]


@pytest.mark.parametrize("seed", range(20))
def test_random_segment_lengths(seed):
    g = torch.Generator().manual_seed(seed)
    B = 4
    la = torch.randint(2, 8, (B,), generator=g)  # [CLS] ... [SEP]
    lb = torch.randint(1, 8, (B,), generator=g)  # ... [SEP]
    L = int((la + lb).max()) + 2
    seg = torch.zeros(B, L, dtype=torch.long)
    att = torch.zeros(B, L, dtype=torch.long)
    for b in range(B):
        seg[b, la[b] : la[b] + lb[b]] = 1
        att[b, : la[b] + lb[b]] = 1
    mask = unilm_mask(seg, att)
    for b in range(B):
        a, n = int(la[b]), int(la[b] + lb[b])
        expected = torch.zeros(L, L, dtype=torch.bool)
        expected[:, :a] = True  # everyone sees segment A ...
        for i in range(a, n):
            expected[i, a : i + 1] = True  # ... segment B sees itself causally
        expected[n:, :n] = True  # pad rows (their outputs are ignored) see every real token
        expected[:, n:] = False  # pads are never visible
        assert torch.equal(mask[b], expected)
        assert not mask[b, :a, a:].any()  # no segment-0 row sees a segment-1 column


def test_causal_and_padding_masks():
    att = torch.tensor([[1, 1, 1, 0]])
    assert rows(padding_mask(att)[0]) == ["1110"] * 4
    assert rows(causal_mask(att)[0]) == ["1000", "1100", "1110", "1110"]


def test_bias_values_and_shape():
    mask = unilm_mask(torch.tensor([[0, 0, 1]]), torch.tensor([[1, 1, 1]]))
    bias = attention_bias(mask, torch.float32)
    assert bias.shape == (1, 1, 3, 3)
    assert (bias[0, 0][mask[0]] == 0).all()
    assert (bias[0, 0][~mask[0]] == torch.finfo(torch.float32).min).all()


def test_bias_reproduces_bert_padding_behaviour():
    """A padding-only mask through ``attention_bias`` gives the same BERT outputs as the usual 2-D mask: the
    bias has the sign and shape the transformers layers expect."""
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=32), add_pooling_layer=False).eval()
    ids = torch.randint(5, 50, (3, 6))
    att = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
    plain = bert(input_ids=ids, attention_mask=att).last_hidden_state
    biased = bert(input_ids=ids, attention_mask=attention_bias(padding_mask(att))).last_hidden_state
    keep = att.bool()
    assert torch.allclose(plain[keep], biased[keep], atol=1e-5)


@pytest.mark.parametrize(
    "seg, att, match",
    [
        (torch.tensor([[0, 2, 1]]), torch.tensor([[1, 1, 1]]), "only 0"),
        (torch.tensor([[0, 1]]), torch.tensor([[1, 1, 1]]), "differ in shape"),
        (torch.tensor([0, 1]), torch.tensor([1, 1]), "2-D"),
    ],
)
def test_bad_input(seg, att, match):
    with pytest.raises(ValueError, match=match):
        unilm_mask(seg, att)


def test_bias_rejects_non_bool():
    with pytest.raises(ValueError, match="BoolTensor"):
        attention_bias(torch.ones(1, 3, 3))
