"""GradCache (Gao et al., 2021, arXiv:2101.06983): the cached loss leaves the plain loss's gradients, dropout
included, agrees with sentence-transformers' CachedMultipleNegativesRankingLoss, holds one chunk's activations,
and trains through ``course_lib.train.train(..., step_runs_backward=True)``.

Tolerances: parameter gradients agree to max |Δg| ≤ 1e-5 · max |g| with our plain loss (measured ≤ 5e-7) and
≤ 1e-4 · max |g| with sentence-transformers (measured ≤ 7e-6: it trims each mini-batch's padding and sums its
loss chunk by chunk, so its float operations run in another order).
"""

import pytest
import torch
from transformers import BertConfig, BertModel

from course_lib.config import get_config
from course_lib.data import load_dataset
from course_lib.gradcache import (
    SavedTensorPeak,
    cached_in_batch_loss,
    gradcache_step,
    measure_batch_cost,
    train_gradcache,
)
from course_lib.in_batch import in_batch_step, pair_batches, train_in_batch
from course_lib.losses import in_batch_softmax_loss
from course_lib.models import Encoder, make_encoder, tokenize
from course_lib.samplers import NoDuplicateBatchSampler
from course_lib.tokenizer import load_tokenizer, train_tokenizer
from course_lib.train import loss_fell, train
from course_lib.utils import seed_everything

CFG = get_config("fast")
TAU = 0.05
B = 10


def tiny_encoder(dropout: float, vocab_size: int = 60, pad_token_id: int = 0) -> Encoder:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                        max_position_embeddings=64, pad_token_id=pad_token_id)
    return Encoder(BertModel(config, add_pooling_layer=False)).train()


def random_tokens(n: int, length: int, generator: torch.Generator) -> dict:
    """n rows of random ids with random lengths 2..length (the rest padding)."""
    ids = torch.randint(5, 60, (n, length), generator=generator)
    lengths = torch.randint(2, length + 1, (n,), generator=generator)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()  # (n, L)
    return {"input_ids": ids * mask, "attention_mask": mask}


@pytest.fixture(scope="module")
def towers():
    g = torch.Generator().manual_seed(1)
    return random_tokens(B, 8, g), random_tokens(B, 12, g), random_tokens(2 * B, 12, g)  # q, d, K = 2 negatives


def flat_grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def plain_grads(model, q, d, n, chunk_size: int, seed: int = 123):
    """The plain loss and its backward, the encoder run chunk by chunk *with* a graph from the random state
    ``seed``: the same dropout masks as GradCache's step 1 draws (with dropout 0, the plain batch itself)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    embs = [torch.cat([model(**{k: v[s : s + chunk_size] for k, v in t.items()}) for s in range(0, len(t["input_ids"]), chunk_size)])
            for t in [q, d] + ([n] if n is not None else [])]
    negatives = embs[2].view(-1, B, embs[2].shape[-1]).transpose(0, 1) if n is not None else None  # (B, K, D)
    loss = in_batch_softmax_loss(embs[0], embs[1], negatives, temperature=TAU)
    loss.backward()
    return loss.detach(), flat_grads(model), torch.get_rng_state()


def cached_grads(model, q, d, n, chunk_size: int, seed: int = 123, **kwargs):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = cached_in_batch_loss(model, q, d, chunk_size=chunk_size, temperature=TAU, negatives_batch=n, **kwargs)
    return loss, flat_grads(model), torch.get_rng_state()


@pytest.mark.parametrize("with_negatives", [False, True])
@pytest.mark.parametrize("chunk_size", [3, 4, 10, 16])  # 3 and 4 do not divide B = 10; 16 > B is one chunk
def test_cached_gradients_equal_plain_with_dropout(towers, chunk_size, with_negatives):
    q, d, n = towers
    model = tiny_encoder(dropout=0.1)
    n = n if with_negatives else None
    plain_loss, g_plain, rng_plain = plain_grads(model, q, d, n, chunk_size)
    loss, g_cached, rng_cached = cached_grads(model, q, d, n, chunk_size)
    assert not loss.requires_grad and torch.allclose(loss, plain_loss, rtol=1e-6)
    assert (g_cached - g_plain).abs().max() <= 1e-5 * g_plain.abs().max()
    assert torch.equal(rng_cached, rng_plain)  # the replay consumed no random numbers of its own

    # negative control: without replaying the random state, step 3 draws other dropout masks
    _, g_wrong, _ = cached_grads(model, q, d, n, chunk_size, replay_rng=False)
    assert (g_wrong - g_plain).abs().max() > 1e-2 * g_plain.abs().max()


def test_without_dropout_equals_one_plain_batch(towers):
    q, d, n = towers
    model = tiny_encoder(dropout=0.0)
    plain = in_batch_softmax_loss(model(**q), model(**d), model(**n).view(2, B, -1).transpose(0, 1), temperature=TAU)
    plain.backward()
    g_plain = flat_grads(model)
    loss, g_cached, _ = cached_grads(model, q, d, n, chunk_size=4)
    assert torch.allclose(loss, plain.detach(), rtol=1e-6)
    assert (g_cached - g_plain).abs().max() <= 1e-5 * g_plain.abs().max()


def test_step_matches_in_batch_step_with_duplicates_and_negatives(towers):
    q, d, n = towers
    ids = [f"doc{i}" for i in range(B)]
    ids[3] = ids[0]  # a duplicate positive: masked by both steps
    batch = {"q": q, "d": d, "n": n, "doc_ids": ids, "neg_ids": [f"neg{i}" for i in range(2 * B)]}
    model = tiny_encoder(dropout=0.0)
    plain = in_batch_step(TAU)(model, batch)
    plain.backward()
    g_plain = flat_grads(model)
    model.zero_grad(set_to_none=True)
    loss = gradcache_step(TAU, chunk_size=3)(model, batch)
    assert torch.allclose(loss, plain.detach(), rtol=1e-6)
    assert (flat_grads(model) - g_plain).abs().max() <= 1e-5 * g_plain.abs().max()
    unmasked = gradcache_step(TAU, chunk_size=3, mask_duplicates=False)(model, batch)
    assert unmasked > loss  # the duplicate counts as a negative again


class _BatchNormEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.norm = torch.nn.Embedding(60, 8), torch.nn.BatchNorm1d(8)

    def forward(self, input_ids, attention_mask):
        return self.norm(self.emb(input_ids).mean(1))


def _frozen():
    return tiny_encoder(0.0).requires_grad_(False)


@pytest.mark.parametrize("make_model, kwargs, error, match", [
    (lambda: tiny_encoder(0.1), {"chunk_size": 0}, ValueError, "chunk_size must be >= 1"),
    (lambda: tiny_encoder(0.1), {"chunk_size": 2.5}, TypeError, "chunk_size must be an int"),
    (lambda: tiny_encoder(0.1), {"chunk_size": True}, TypeError, "chunk_size must be an int"),
    (lambda: tiny_encoder(0.1), {"chunk_size": 4, "replay_rng": "yes"}, TypeError, "replay_rng"),
    (_frozen, {"chunk_size": 4}, ValueError, "nothing to train"),
    (_BatchNormEncoder, {"chunk_size": 4}, ValueError, "batch normalisation in train mode"),
    (lambda: tiny_encoder(0.1), {"chunk_size": 4, "temperature": 0.0}, ValueError, "temperature must be > 0"),
    (lambda: tiny_encoder(0.1), {"chunk_size": 4, "loss_fn": lambda q, d, n, **kw: in_batch_softmax_loss(q, d, **kw)},
     ValueError, "did not use the negatives"),
])
def test_bad_input_raises_and_changes_nothing(towers, make_model, kwargs, error, match):
    q, d, n = towers
    model = make_model()
    torch.manual_seed(7)
    rng = torch.get_rng_state()
    with pytest.raises(error, match=match):
        cached_in_batch_loss(model, q, d, negatives_batch=n, **kwargs)
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)  # a failing step 2 puts the random stream back


def test_bad_batches_and_grad_mode(towers):
    q, d, n = towers
    model = tiny_encoder(0.1)
    short = {k: v[:-1] for k, v in d.items()}
    with pytest.raises(ValueError, match="d_batch has 9 rows but q_batch has 10"):
        cached_in_batch_loss(model, q, short, chunk_size=4)
    with pytest.raises(ValueError, match="not a multiple of B = 10"):
        cached_in_batch_loss(model, q, d, chunk_size=4, negatives_batch={k: v[:15] for k, v in n.items()})
    with pytest.raises(TypeError, match="'input_ids' and 'attention_mask'"):
        cached_in_batch_loss(model, q["input_ids"], d, chunk_size=4)
    with pytest.raises(RuntimeError, match="outside torch.no_grad"), torch.no_grad():
        cached_in_batch_loss(model, q, d, chunk_size=4)
    assert all(p.grad is None for p in model.parameters())


def test_train_accepts_a_step_that_ran_its_own_backward():
    def data(seed):
        g = torch.Generator().manual_seed(seed)
        return [(x, x @ torch.tensor([[2.0], [-1.0]]) + 0.1 * torch.randn(16, 1, generator=g))
                for x in torch.randn(20, 16, 2, generator=g)]

    def loss_of(model, batch):
        return torch.nn.functional.mse_loss(model(batch[0]), batch[1])

    def own_backward(model, batch):
        loss = loss_of(model, batch)
        loss.backward()
        return loss.detach()

    models = []
    for step, flag in ((loss_of, False), (own_backward, True)):
        torch.manual_seed(0)
        model = torch.nn.Linear(2, 1)
        history = train(model, step, data(1), optimizer=torch.optim.SGD(model.parameters(), lr=0.1), max_steps=20,
                        progress=False, step_runs_backward=flag)
        models.append((model, history))
    (a, ha), (b, hb) = models
    assert ha.losses == hb.losses and torch.equal(a.weight, b.weight)  # the loop cleared .grad before the step
    assert loss_fell(hb.losses, window=5)
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match="requires grad at step 1, but step_runs_backward=True"):
        train(model, loss_of, data(1), optimizer=torch.optim.SGD(model.parameters(), lr=0.1), max_steps=2,
              progress=False, step_runs_backward=True)
    with pytest.raises(TypeError, match="step_runs_backward must be True or False"):
        train(model, loss_of, data(1), optimizer=torch.optim.SGD(model.parameters(), lr=0.1), max_steps=2,
              progress=False, step_runs_backward=1)


def test_agrees_with_sentence_transformers_cached_mnrl(tmp_path):
    """The same BERT as a SentenceTransformer (Transformer + mean Pooling, built offline from a folder),
    CachedMultipleNegativesRankingLoss with cos_sim, scale = 1/τ, mini_batch_size = our chunk_size."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from sentence_transformers.util import cos_sim

    texts = [f"word{i} means thing {i % 7} of colour {i % 5} in context {i % 3}" for i in range(40)]
    tok = train_tokenizer(texts, 120)
    ours = tiny_encoder(0.0, vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    ours.bert.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    st = SentenceTransformer(modules=[Transformer(str(tmp_path)), Pooling(32, "mean")], device="cpu").train()
    st_bert = dict(st[0].auto_model.named_parameters())
    q, d = tokenize(tok, texts[:12], 16), tokenize(tok, texts[12:24], 24)
    n = tokenize(tok, texts[16:40], 24)  # K = 2 negatives per query, block order
    for negatives in (None, n):
        ours.zero_grad(set_to_none=True)
        st.zero_grad(set_to_none=True)
        loss = cached_in_batch_loss(ours, q, d, chunk_size=5, temperature=TAU, negatives_batch=negatives)
        st_loss_fn = CachedMultipleNegativesRankingLoss(st, scale=1 / TAU, similarity_fct=cos_sim, mini_batch_size=5)
        features = [dict(q), dict(d)] + ([{k: v[:12] for k, v in n.items()}, {k: v[12:] for k, v in n.items()}]
                                         if negatives is not None else [])
        st_loss = st_loss_fn(features, None)
        st_loss.backward()
        assert torch.allclose(loss, st_loss.detach(), rtol=1e-5)
        named = list(ours.bert.named_parameters())
        diff = max(float((p.grad - st_bert[name].grad).abs().max()) for name, p in named)
        scale = max(float(p.grad.abs().max()) for _, p in named)
        assert diff <= 1e-4 * scale


@pytest.fixture(scope="module")
def fast_setup():
    data = load_dataset("wordnet", "fast")
    return data, load_tokenizer(data, CFG.vocab_size)


def test_cached_memory_stays_at_a_chunk(fast_setup):
    data, tok = fast_setup
    seed_everything(0)
    model = make_encoder(CFG, tok)
    before = [p.detach().clone() for p in model.parameters()]

    def make_batch(b):
        g = torch.Generator().manual_seed(b)
        return next(pair_batches(data, tok, NoDuplicateBatchSampler(data.train, b, g), CFG, generator=g))

    rng = torch.get_rng_state()
    rows = measure_batch_cost(model, make_batch, [64, 256], chunk_size=32, repeats=1)
    cost = {(r["batch_size"], r["method"]): r for r in rows}
    plain, cached = cost[256, "plain"]["saved_peak_bytes"], cost[256, "cached"]["saved_peak_bytes"]
    assert cached < plain / 4  # one chunk of 32 texts against 256 of each kind
    assert cost[256, "plain"]["saved_peak_bytes"] > 2.5 * cost[64, "plain"]["saved_peak_bytes"]  # grows with B
    assert cached < 1.5 * cost[64, "cached"]["saved_peak_bytes"]  # stays at the chunk's
    assert abs(cost[256, "plain"]["loss"] - cost[256, "cached"]["loss"]) < 1e-4
    assert all(r["ms"] > 0 for r in rows)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters()) and torch.equal(torch.get_rng_state(), rng)


def test_measure_and_train_refuse_bad_arguments(towers):
    q, d, _ = towers
    model = tiny_encoder(0.1)

    def make_batch(b):
        return {"q": q, "d": d, "doc_ids": list(range(B))}  # always B = 10 pairs

    for kwargs, error, match in [({"chunk_size": 0}, ValueError, "chunk_size must be >= 1"),
                                 ({"repeats": 1.5}, TypeError, "repeats must be an int"),
                                 ({"batch_sizes": []}, ValueError, "non-empty list"),
                                 ({"batch_sizes": [12]}, ValueError, r"make_batch\(12\) must return a pair batch")]:
        with pytest.raises(error, match=match):
            measure_batch_cost(model, make_batch, **({"batch_sizes": [B]} | kwargs))
    assert all(p.grad is None for p in model.parameters()) and model.training
    rows = measure_batch_cost(model, make_batch, [B], repeats=1)  # no chunk_size: the plain step only
    assert [r["method"] for r in rows] == ["plain"] and rows[0]["cuda_peak_bytes"] is None
    for kwargs, match in [({"batch_size": 0, "chunk_size": 4}, "batch_size must be >= 1"),
                          ({"batch_size": 8, "chunk_size": "4"}, "chunk_size must be an int")]:
        with pytest.raises((ValueError, TypeError), match=match):
            train_gradcache(CFG, None, None, **kwargs)


def test_saved_tensor_peak_counts_live_activations():
    w = torch.randn(64, 64, requires_grad=True)
    with SavedTensorPeak(exclude=[w]) as one:
        torch.tanh(torch.randn(100, 64) @ w).sum().backward()
    with SavedTensorPeak(exclude=[w]) as sequential:
        for _ in range(4):  # each graph is freed by its backward before the next one is built
            torch.tanh(torch.randn(100, 64) @ w).sum().backward()
    with SavedTensorPeak(exclude=[w]) as together:
        torch.stack([torch.tanh(torch.randn(100, 64) @ w) for _ in range(4)]).sum().backward()
    assert one.peak > 0 and sequential.peak == one.peak and together.peak >= 4 * one.peak
    assert one.live == sequential.live == together.live == 0


def test_train_gradcache_follows_plain_training(fast_setup):
    data, tok = fast_setup
    seed_everything(0)
    _, cached = train_gradcache(CFG, data, tok, batch_size=32, chunk_size=8, steps=10, progress=False)
    seed_everything(0)
    _, plain = train_in_batch(CFG, data, tok, batch_size=32, steps=10, progress=False)
    assert cached.steps == 10 and loss_fell(cached.losses, window=3)
    # the same batches and the same gradients give the same trajectory (measured: equal to 1e-5 for 10 steps)
    assert max(abs(a - b) for a, b in zip(cached.losses, plain.losses)) < 1e-3
