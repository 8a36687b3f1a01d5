"""RetroMAE: whole-word masking, the decoder mask (Xiao et al., 2022, arXiv:2205.12035, §3.2), batch labels, the
enhanced decoder against BERT's own layer, the leak probe, the bottleneck and short pretraining
runs."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import BertConfig, BertModel
from transformers.models.bert.modeling_bert import BertLayer

from course_lib.config import get_config
from course_lib.data import load_dataset
from course_lib.masks import retromae_decoder_mask, whole_word_mask
from course_lib.models import encoder_from_bert
from course_lib.retromae import (
    RetroMAE,
    bottleneck_usage,
    make_retromae,
    pair_pretrain_batches,
    pretrain,
    pretrain_batch,
    pretrain_texts,
    retromae_step,
    token_loss,
)
from course_lib.tokenizer import load_tokenizer
from course_lib.train import loss_fell
from course_lib.utils import seed_everything

CFG = get_config("fast")
CLS, SEP, MASK, FIRST, V = 2, 3, 4, 5, 40  # the toy vocabulary of the synthetic tests


@pytest.fixture(scope="module")
def setup():
    data = load_dataset("wordnet", "fast")
    return data, load_tokenizer(data, CFG.vocab_size)


def toy_batch(lengths: list[int], g: torch.Generator):
    """Random regular tokens framed by [CLS] … [SEP], right-padded: ids, attention mask, word ids (words of
    two and one tokens alternate; −1 on specials and pads), special-token mask."""
    L = max(lengths)
    ids = torch.zeros(len(lengths), L, dtype=torch.long)
    att = torch.zeros_like(ids)
    words = torch.full_like(ids, -1)
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.randint(FIRST, V, (n,), generator=g)
        ids[b, 0], ids[b, n - 1] = CLS, SEP
        att[b, :n] = 1
        w = torch.arange(n - 2)
        words[b, 1 : n - 1] = torch.div(2 * w, 3, rounding_mode="floor")  # words of 2, 1, 2, 1, ... tokens
    special = (words < 0) & att.bool()
    return ids, att, words, special


# ---------------------------------------------------------------------------------------------------------
# whole-word masking


def test_whole_word_mask_takes_whole_words_never_specials():
    g = torch.Generator().manual_seed(0)
    ids, att, words, special = toy_batch([12, 30, 7, 30] * 50, g)
    masked, labels = whole_word_mask(ids, words, mask_token_id=MASK, vocab_size=V, first_regular_id=FIRST,
                                     mask_ratio=0.3, generator=g)
    chosen = labels != -100
    assert not chosen[words < 0].any()  # [CLS], [SEP] and pads are never masked
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(masked[~chosen], ids[~chosen])
    for b in range(ids.shape[0]):
        n_word_tokens = int((words[b] >= 0).sum())
        assert 1 <= int(chosen[b].sum()) <= round(0.3 * n_word_tokens)
        for w in words[b][words[b] >= 0].unique():
            picked = chosen[b][words[b] == w]
            assert picked.all() or not picked.any()  # a word is masked whole or not at all
    # 80 % [MASK], 10 % a random regular token, 10 % unchanged (BERT, Devlin et al., 2019, §3.1)
    n = int(chosen.sum())
    is_mask = (masked == MASK) & chosen
    changed = (masked != ids) & chosen & ~is_mask
    assert abs(int(is_mask.sum()) / n - 0.8) < 0.05
    assert 0.05 < int(changed.sum()) / n < 0.15
    assert (masked[changed] >= FIRST).all()
    assert abs(int(chosen.sum()) / int((words >= 0).sum()) - 0.3) < 0.03  # about p_enc of the word tokens


def test_whole_word_mask_leaves_inputs_alone_and_is_seeded():
    g = torch.Generator().manual_seed(1)
    ids, att, words, _ = toy_batch([10, 9], g)
    before = ids.clone()
    a = whole_word_mask(ids, words, mask_token_id=MASK, vocab_size=V, generator=torch.Generator().manual_seed(5))
    b = whole_word_mask(ids, words, mask_token_id=MASK, vocab_size=V, generator=torch.Generator().manual_seed(5))
    assert torch.equal(ids, before)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    zero = whole_word_mask(ids, words, mask_token_id=MASK, vocab_size=V, mask_ratio=0.0)
    assert torch.equal(zero[0], ids) and (zero[1] == -100).all()


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, "0.3"])
def test_mask_ratios_outside_the_unit_interval_are_rejected(ratio):
    ids = torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"mask_ratio must be a number in \[0, 1\)"):
        whole_word_mask(ids, torch.zeros_like(ids), mask_token_id=MASK, vocab_size=V, mask_ratio=ratio)
    with pytest.raises(ValueError, match=r"mask_ratio must be a number in \[0, 1\)"):
        retromae_decoder_mask(torch.ones(1, 4), mask_ratio=ratio)


def test_shape_mismatches_are_rejected():
    with pytest.raises(ValueError, match="differ in shape"):
        whole_word_mask(torch.ones(2, 4, dtype=torch.long), torch.ones(2, 5, dtype=torch.long), mask_token_id=MASK, vocab_size=V)
    with pytest.raises(ValueError, match="special_tokens_mask"):
        retromae_decoder_mask(torch.ones(2, 4), torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="2-D tensor"):
        retromae_decoder_mask(torch.ones(4))


# ---------------------------------------------------------------------------------------------------------
# the decoder mask (RetroMAE §3.2: each row sees sampled context positions, never its own)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(3, 24), min_size=1, max_size=5), ratio=st.floats(0.0, 0.95), seed=st.integers(0, 2**16))
def test_decoder_mask_rules(lengths, ratio, seed):
    g = torch.Generator().manual_seed(seed)
    _, att, _, special = toy_batch(lengths, g)
    mask = retromae_decoder_mask(att, special, ratio, generator=g)
    B, L = att.shape
    assert mask.shape == (B, L, L) and mask.dtype == torch.bool
    assert not mask.diagonal(dim1=1, dim2=2).any()  # a token never sees itself
    real = att.bool()
    assert not mask[~real[:, None, :].expand(-1, L, -1)].any()  # padding is never visible
    for b, n in enumerate(lengths):
        assert mask[b, 1:n, 0].all()  # every other row sees h in column 0
        off_diag = ~torch.eye(n, dtype=torch.bool)
        cols = special[b, :n]
        assert mask[b, :n, :n][:, cols][off_diag[:, cols]].all()  # special columns: visible except on the diagonal
        ordinary = real[b, :n] & ~special[b, :n]
        for i in range(n):
            others = ordinary.clone()
            others[i] = False
            m = int(others.sum())
            assert int(mask[b, i, :n][others].sum()) == m - round(m * ratio)  # 1 − ratio of the rest is visible


def test_decoder_mask_default_specials_and_visible_fraction():
    g = torch.Generator().manual_seed(0)
    _, att, _, special = toy_batch([20, 33, 9] * 30, g)
    a = retromae_decoder_mask(att, special, 0.5, generator=torch.Generator().manual_seed(3))
    b = retromae_decoder_mask(att, None, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)  # the default specials are column 0 and each row's last real token
    ordinary = att.bool() & ~special
    rows = ordinary[:, :, None] & ordinary[:, None, :] & ~torch.eye(att.shape[1], dtype=torch.bool)
    assert abs(a[rows].float().mean().item() - 0.5) < 0.03
    assert not torch.equal(a[0, 1], a[0, 2]) or not torch.equal(a[0, 2], a[0, 3])  # rows draw different contexts


# ---------------------------------------------------------------------------------------------------------
# batches


def test_pretrain_batch_labels(setup):
    data, tok = setup
    texts = [data.documents[d] for d in sorted(data.corpus)[:64]]
    batch = pretrain_batch(tok, texts, 48, generator=torch.Generator().manual_seed(0))
    plain = tok(texts, padding=True, truncation=True, max_length=48, return_tensors="pt")
    assert torch.equal(batch["input_ids"], plain["input_ids"])  # the decoder reads the unmasked text
    real, ids = batch["attention_mask"].bool(), batch["input_ids"]
    special = torch.isin(ids, torch.tensor(tok.all_special_ids))
    assert (batch["decoder_labels"][real & ~special] != -100).all()  # every ordinary token is a decoder target
    assert (batch["decoder_labels"][~real | special] == -100).all()
    marked = batch["encoder_labels"] != -100
    assert torch.equal(batch["encoder_input_ids"][~marked], ids[~marked])
    assert 0.25 < marked.sum().item() / (real & ~special).sum().item() < 0.33  # about p_enc = 0.3
    mask = batch["decoder_mask"]
    assert mask[:, 1:, 0][real[:, 1:]].all() and not mask.diagonal(dim1=1, dim2=2).any()


# ---------------------------------------------------------------------------------------------------------
# the model


def tiny_model(decoder: bool = True, seed: int = 0) -> RetroMAE:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return RetroMAE(BertModel(cfg, add_pooling_layer=False), decoder=decoder)


def test_decoder_layer_equals_bert_layer_on_one_stream():
    """With one stream (query = content) and an all-visible mask, the enhanced decoder layer is BERT's own
    layer: copy a transformers ``BertLayer``'s weights into it and compare."""
    model = tiny_model()
    ref = BertLayer(model.bert.config).eval()  # the encoder's config: its attention implementation is set
    ours = model.decoder
    pairs = [(ours.query, ref.attention.self.query), (ours.key, ref.attention.self.key), (ours.value, ref.attention.self.value),
             (ours.attn_out, ref.attention.output.dense), (ours.attn_norm, ref.attention.output.LayerNorm),
             (ours.ffn_in, ref.intermediate.dense), (ours.ffn_out, ref.output.dense), (ours.ffn_norm, ref.output.LayerNorm)]
    for a, b in pairs:
        a.load_state_dict(b.state_dict())
    x = torch.randn(3, 7, 32)
    bias = torch.zeros(3, 1, 7, 7)
    assert torch.allclose(ours(x, x, bias), ref(x, attention_mask=bias), atol=1e-5)


def test_decoder_row_ignores_hidden_columns():
    model = tiny_model().eval()
    g = torch.Generator().manual_seed(0)
    ids, att, _, special = toy_batch([12], g)
    mask = retromae_decoder_mask(att, special, 0.5, generator=g)
    h = torch.randn(1, 32)
    out = model.decode(h, ids, mask)
    i = 5
    hidden_cols = (~mask[0, i]).nonzero().flatten().tolist()
    edited = ids.clone()
    for j in hidden_cols:
        if j != 0:
            edited[0, j] = FIRST + (int(ids[0, j]) - FIRST + 1) % (V - FIRST)  # another regular token
    out2 = model.decode(h, edited, mask)
    assert torch.allclose(out[0, i], out2[0, i], atol=1e-6)  # row i cannot see what it must predict ...
    assert not torch.allclose(out[0, i], model.decode(h + 1.0, ids, mask)[0, i])  # ... but it sees h


def test_embeddings_and_lm_head_are_shared():
    model = tiny_model()
    assert model.lm_head.word_embeddings is model.bert.embeddings.word_embeddings
    ids = torch.tensor([[CLS, 7, 8, 9, SEP]])
    h = torch.randn(1, 32)
    query, content = model.decoder_streams(h, ids)
    emb = model.bert.embeddings
    assert torch.allclose(query, h[:, None] + emb.position_embeddings.weight[:5])  # H1 = h + p_i
    assert torch.allclose(content[:, 0], h) and torch.allclose(content[:, 1:], emb(input_ids=ids)[:, 1:])  # H2


def test_the_decoder_starts_from_berts_initialisation():
    """As the reference applies the encoder's ``_init_weights`` to its decoder: linear weights N(0, 0.02²), zero
    biases, LayerNorms at identity (PyTorch's default linear init has sd 1/√(3·fan_in), 0.10 at width 32)."""
    model = tiny_model()
    std = model.bert.config.initializer_range
    for name, module in model.decoder.named_modules():
        if isinstance(module, torch.nn.Linear):
            assert abs(module.weight.std().item() - std) < 0.2 * std, name
            assert module.bias.abs().max() == 0, name
        elif isinstance(module, torch.nn.LayerNorm):
            assert (module.weight == 1).all() and (module.bias == 0).all(), name
    # the same check the encoder's own layers pass
    assert abs(model.bert.encoder.layer[0].attention.self.query.weight.std().item() - std) < 0.2 * std


def test_bottleneck_usage_swaps_only_h(setup):
    """The probe's "own" loss is the decoder loss of the training step; with every row the same sentence, h,
    its roll and its mean coincide, so the three losses do too; a model without decoder is refused."""
    data, tokenizer = setup
    cfg = CFG
    texts = pretrain_texts(data)[:6]
    batch = pretrain_batch(tokenizer, texts, cfg.max_doc_len, generator=torch.Generator().manual_seed(0))
    model = make_retromae(cfg, tokenizer).eval()
    usage = bottleneck_usage(model, batch)
    with torch.no_grad():
        hidden = model(batch["encoder_input_ids"], batch["attention_mask"])
        own = token_loss(model, model.decode(hidden[:, 0], batch["input_ids"], batch["decoder_mask"]),
                         batch["decoder_labels"])
    assert usage["own"] == pytest.approx(float(own), rel=1e-5)
    same = pretrain_batch(tokenizer, [texts[0]] * 4, cfg.max_doc_len, generator=torch.Generator().manual_seed(0))
    same = {k: v[:1].expand_as(v).clone() for k, v in same.items()}  # four identical rows, masks included
    tied = bottleneck_usage(model, same)
    assert tied["own"] == pytest.approx(tied["rolled"], rel=1e-5) and tied["own"] == pytest.approx(tied["mean"], rel=1e-4)
    with pytest.raises(ValueError, match="decoder=False"):
        bottleneck_usage(make_retromae(cfg, tokenizer, decoder=False), batch)


def test_mlm_baseline_has_no_decoder():
    model = tiny_model(decoder=False)
    assert model.decoder is None
    with pytest.raises(ValueError, match="decoder=False"):
        model.decode(torch.zeros(1, 32), torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, 3, dtype=torch.bool))


def _decoder_loss_after_training(leak: bool, steps: int = 250) -> float:
    """Train a tiny RetroMAE on random token sequences with the decoder loss alone; return its final value."""
    model = tiny_model(seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)  # the decoder starts at BERT's small init (sd 0.02)
    g = torch.Generator().manual_seed(2)
    losses = []
    for _ in range(steps):
        ids, att, _, special = toy_batch([16] * 32, g)
        mask = retromae_decoder_mask(att, special, 0.5, generator=g)
        if leak:
            mask = mask | torch.eye(ids.shape[1], dtype=torch.bool)  # the bug: row i sees its own token
        labels = ids.masked_fill(special, -100)
        h = model(ids, att)[:, 0]  # (B, H)
        loss = token_loss(model, model.decode(h, ids, mask), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return sum(losses[-20:]) / 20


def test_leak_probe():
    """Leak probe: with the diagonal visible, the decoder copies x_i and its loss heads to zero; with
    the right mask, random tokens cannot be reconstructed from 50 % of *other* random tokens."""
    chance = math.log(V - FIRST)  # 3.56 nats: uniform over the regular tokens
    leaky = _decoder_loss_after_training(leak=True)
    honest = _decoder_loss_after_training(leak=False)
    assert leaky < 0.3, leaky
    assert honest > 0.8 * chance, (honest, chance)


def test_bottleneck_gradient():
    """Bottleneck: with h detached, the decoder loss gives the encoder's transformer layers exactly zero
    gradient (the shared embedding table still gets some); with h attached they do get gradient."""
    g = torch.Generator().manual_seed(0)
    ids, att, _, special = toy_batch([10, 14], g)
    mask = retromae_decoder_mask(att, special, 0.5, generator=g)
    labels = ids.masked_fill(special | ~att.bool(), -100)
    for detach in (True, False):
        model = tiny_model()
        h = model(ids, att)[:, 0]  # (B, H)
        token_loss(model, model.decode(h.detach() if detach else h, ids, mask), labels).backward()
        layer_grads = [p.grad for p in model.bert.encoder.parameters()]
        if detach:
            assert all(gr is None or not gr.any() for gr in layer_grads)
        else:
            assert any(gr is not None and gr.any() for gr in layer_grads)
        assert model.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_step_parts_and_pretraining_runs(setup):
    data, tok = setup
    texts = [data.documents[d] for d in sorted(data.corpus)]
    for decoder in (True, False):
        seed_everything(0)
        model, history, parts = pretrain(CFG, texts, tok, decoder=decoder, steps=40, batch_size=16, progress=False)
        assert history.steps == 40 and loss_fell(history.losses)
        assert len(parts["encoder"]) == 40 and len(parts["decoder"]) == (40 if decoder else 0)
        assert (model.decoder is not None) == decoder
    # the total is the unweighted sum of the two parts
    step = retromae_step()
    batch = pretrain_batch(tok, texts[:8], 48, generator=torch.Generator().manual_seed(0))
    total = step(make_retromae(CFG, tok), batch)
    assert math.isclose(total.item(), step.parts["encoder"][0] + step.parts["decoder"][0], rel_tol=1e-5)


def test_pair_batches_are_two_segments_masked_within_each(setup):
    """Pair rows: [CLS] a [SEP] b [SEP], segment id 1 exactly on b and its [SEP], longer than one text may be;
    masked labels only on word tokens; a whole word lies in one segment (never merged across the [SEP])."""
    data, tok = setup
    texts = [data.documents[d] for d in sorted(data.corpus)[:400]]
    batch = next(pair_pretrain_batches(tok, texts, 32, 80, generator=torch.Generator().manual_seed(0)))
    ids, att, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    assert ids.shape[0] == 32 and ids.shape[1] > CFG.max_doc_len  # pairs outgrow a single text's 48 tokens
    for row in range(32):
        n = int(att[row].sum())
        seps = (ids[row, :n] == tok.sep_token_id).nonzero().flatten().tolist()
        assert ids[row, 0] == tok.cls_token_id and len(seps) == 2 and seps[1] == n - 1
        assert (types[row, :seps[0] + 1] == 0).all() and (types[row, seps[0] + 1:n] == 1).all()
    special = torch.isin(ids, torch.tensor(tok.all_special_ids)) | ~att.bool()
    marked = batch["encoder_labels"] != -100
    assert not (marked & special).any() and 0.2 < marked.sum() / (~special).sum() < 0.4
    assert torch.equal(batch["encoder_input_ids"][~marked], ids[~marked])
    with pytest.raises(ValueError, match="distinct texts"):
        next(pair_pretrain_batches(tok, texts[:10], 8, 80, generator=torch.Generator()))


def test_pair_pretraining_reaches_segment_one_and_late_positions(setup):
    """The reason for pairs: on single texts the segment-1 embedding and the positions past the text get no
    gradient at all; on pairs both do."""
    data, tok = setup
    texts = [data.documents[d] for d in sorted(data.corpus)[:400]]
    single = pretrain_batch(tok, texts[:32], CFG.max_doc_len, generator=torch.Generator().manual_seed(0))
    pair = next(pair_pretrain_batches(tok, texts, 32, 80, generator=torch.Generator().manual_seed(0)))
    late = slice(CFG.max_doc_len, pair["input_ids"].shape[1])
    for batch, reached in ((single, False), (pair, True)):
        seed_everything(0)
        model = make_retromae(CFG, tok, decoder=False)
        retromae_step()(model, batch).backward()
        emb = model.bert.embeddings
        assert (emb.token_type_embeddings.weight.grad[1].abs().sum() > 0) == reached
        assert (emb.position_embeddings.weight.grad[late].abs().sum() > 0) == reached
    with pytest.raises(ValueError, match="pass decoder=False"):
        pretrain(CFG, texts, tok, decoder=True, pairs=True, steps=1, progress=False)
    model, history, _ = pretrain(CFG, texts, tok, decoder=False, pairs=True, steps=3, batch_size=8, progress=False)
    assert history.steps == 3


def test_pretraining_is_deterministic(setup):
    data, tok = setup
    texts = [data.documents[d] for d in sorted(data.corpus)]
    runs = []
    for _ in range(2):
        seed_everything(0)
        _, history, _ = pretrain(CFG, texts, tok, steps=5, batch_size=8, progress=False)
        runs.append(history.losses)
    assert runs[0] == runs[1]


def test_pretrain_texts_hold_no_held_out_query(setup):
    data, _ = setup
    texts = pretrain_texts(data)
    held_out = {t for split in ("dev", "test") for t in data.queries[split].values()} - {e.query for e in data.train}
    assert len(texts) == len(data.corpus) + len(data.train)
    assert not held_out & set(texts)


def test_encoder_from_bert_copies_weights(setup):
    _, tok = setup
    pretrained = make_retromae(CFG, tok).bert
    enc = encoder_from_bert(CFG, tok, pretrained, pooling="cls")
    assert enc.pooling == "cls" and enc.bert is not pretrained
    for (name, a), b in zip(enc.bert.state_dict().items(), pretrained.state_dict().values()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        next(enc.bert.parameters()).add_(1.0)  # fine-tuning the copy leaves the pretrained model alone
    assert not torch.equal(next(enc.bert.parameters()), next(pretrained.parameters()))
    with pytest.raises(RuntimeError, match="size mismatch"):
        encoder_from_bert(CFG.replace(hidden_size=64), tok, pretrained)


def test_benchmark_pretrain_then_in_batch(setup):
    """The benchmark's notebook-03 methods run end to end on a tiny budget and report the pretraining."""
    from course_lib import benchmark as bench

    data, tok = setup
    cfg = CFG.replace(pretrain_steps=4, train_steps=4)
    result = bench.METHODS["retromae_then_in_batch"](cfg, data, tok)
    assert result.steps == 4 and result.extra["pretrain_steps"] == 4
    assert set(result.extra["pretrain_final_losses"]) == {"encoder", "decoder"}
    assert result.train_seconds >= result.extra["pretrain_seconds"] > 0
    assert 0 <= result.metrics["recall@10"] <= 1
    assert {"random_then_in_batch", "mlm_then_in_batch", "retromae_then_in_batch"} <= set(bench.METHODS)
