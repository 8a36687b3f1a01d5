"""SimBERT: pairs and rows, the similarity loss, seq2seq targets, the [CLS]-invariance check (Su,
2020, SimBERT; UniLM: Dong et al., 2019, §2.3), generation (batched = one by one, sampling filters) and a short training run."""

import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.config import get_config
from course_lib.data import load_dataset
from course_lib.generation import _ban_repeats, _filter_logits, generate, generate_reranked, similar_sentences
from course_lib.metrics import corpus_bleu, evaluate, frequent_words, mean_token_f1, token_f1
from course_lib.models import encode
from course_lib.retromae import make_retromae
from course_lib.simbert import (
    SimPair,
    held_out_pairs,
    make_pairs,
    make_simbert,
    pair_rows,
    seq2seq_loss,
    seq2seq_targets,
    simbert_from_pretrained,
    simbert_similarity_loss,
    simbert_step,
    train_simbert,
)
from course_lib.tokenizer import load_tokenizer
from course_lib.utils import seed_everything

CFG = get_config("fast")
PAIRS = [
    SimPair("the nascent chicks", "nascent: being born or beginning", "s1"),
    SimPair("a parturient heifer", "parturient: giving birth", "s2"),
    SimPair("he deposited the cheque at the bank", "bank: a financial institution that accepts deposits", "s3"),
]


@pytest.fixture(scope="module")
def setup():
    data = load_dataset("wordnet", "fast")
    return data, load_tokenizer(data, CFG.vocab_size)


@pytest.fixture(scope="module")
def model(setup):
    seed_everything(0)
    return make_simbert(CFG.replace(dropout=0.1), setup[1]).eval()


def test_make_pairs(setup):
    data, _ = setup
    gloss = make_pairs(data, "gloss")
    assert len(gloss) == len(data.train)
    assert all(p.b == data.documents[p.group] for p in gloss[:100])
    examples = make_pairs(data, "example")
    queries_of = {}
    for e in data.train:
        queries_of.setdefault(e.positive, set()).add(e.query)
    assert examples and all(p.a in queries_of[p.group] and p.b in queries_of[p.group] for p in examples[:200])
    assert len(make_pairs(data, "both")) == len(gloss) + len(examples)
    with pytest.raises(ValueError, match="kind must be"):
        make_pairs(data, "synonyms")


def test_pair_rows_layout(setup):
    _, tok = setup
    rows = pair_rows(tok, PAIRS, 80)
    assert rows["input_ids"].shape[0] == 2 * len(PAIRS)
    for k, p in enumerate(PAIRS):
        for r, (first, second) in ((2 * k, (p.a, p.b)), (2 * k + 1, (p.b, p.a))):
            seg, att = rows["token_type_ids"][r], rows["attention_mask"][r].bool()
            ids = rows["input_ids"][r]
            assert tok.decode(ids[att & (seg == 0)], skip_special_tokens=True) == tok.decode(tok(first)["input_ids"], skip_special_tokens=True)
            assert tok.decode(ids[att & (seg == 1)], skip_special_tokens=True) == tok.decode(tok(second)["input_ids"], skip_special_tokens=True)
            assert ids[att][-1] == tok.sep_token_id and ids[0] == tok.cls_token_id


def test_lm_head_is_tied_to_the_word_embeddings(model):
    assert model.lm_head.word_embeddings.weight is model.bert.get_input_embeddings().weight


def test_cls_invariance(setup, model):
    """Under the UniLM mask (Dong et al., 2019, §2.3), the [CLS] output of [CLS] A [SEP] B [SEP] equals that of
    [CLS] A [SEP] alone (eval mode), at every A and B."""
    _, tok = setup
    rows = pair_rows(tok, PAIRS, 80)
    with torch.no_grad():
        joint = model.seq2seq_hidden(**rows)[:, 0]  # (2n, H)
        firsts = [t for p in PAIRS for t in (p.a, p.b)]
        alone = tok(firsts, padding=True, return_tensors="pt")
        single = model.bert(input_ids=alone["input_ids"], attention_mask=alone["attention_mask"]).last_hidden_state[:, 0]
    assert torch.allclose(joint, single, atol=1e-5)
    # and the retrieval encoder (forward) is the pooled, normalised version of that same vector
    assert torch.allclose(encode(model, tok, firsts), F.normalize(model.pooler(single), dim=-1), atol=1e-5)


def test_cls_would_change_without_the_mask(setup, model):
    """The check above is not vacuous: with a plain bidirectional mask, [CLS] does see B."""
    _, tok = setup
    rows = pair_rows(tok, PAIRS, 80)
    with torch.no_grad():
        joint = model.bert(**rows).last_hidden_state[:, 0]
        masked = model.seq2seq_hidden(**rows)[:, 0]
    assert not torch.allclose(joint, masked, atol=1e-3)


def test_similarity_loss_labels_diagonal_and_value():
    torch.manual_seed(0)
    cls = torch.randn(6, 8, dtype=torch.float64)
    u = F.normalize(cls, dim=-1)
    logits = 30 * (u @ u.T - 1e12 * torch.eye(6, dtype=torch.float64))
    probs = logits.softmax(-1)
    assert (probs.diagonal() == 0).all()  # a row never picks itself
    labels = torch.arange(6) ^ 1
    assert labels.tolist() == [1, 0, 3, 2, 5, 4]
    perm = torch.zeros(6, 6)
    perm[torch.arange(6), labels] = 1
    assert torch.equal(perm, perm.T) and torch.equal(perm @ perm, torch.eye(6))  # a symmetric permutation
    by_hand = -(probs[torch.arange(6), labels].log()).mean()
    assert torch.allclose(simbert_similarity_loss(cls), by_hand)


def test_similarity_loss_prefers_partners():
    base = torch.randn(4, 16)
    aligned = base.repeat_interleave(2, 0)  # partners identical
    shuffled = torch.randn(8, 16)
    assert simbert_similarity_loss(aligned + 0.01 * torch.randn(8, 16)) < simbert_similarity_loss(shuffled)


@pytest.mark.parametrize("n", [1, 3, 7])
def test_similarity_loss_odd_batch_raises(n):
    with pytest.raises(ValueError, match="even"):
        simbert_similarity_loss(torch.randn(n, 4))


def test_similarity_loss_gradient_float64():
    cls = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: simbert_similarity_loss(x, scale=3.0), (cls,))


def test_a_collapsed_batch_sits_at_ln_2n_minus_1_with_no_gradient():
    """Notebook 02, section 7: when every pooled vector points the same way (lengths may differ), the loss is
    ln(2n − 1) and its gradient is zero, since each cosine is at its maximum; a batch near collapse has a small,
    non-zero gradient."""
    v = torch.randn(1, 6, dtype=torch.float64)
    cls = (v * torch.tensor([[1.0], [2.0], [0.5], [3.0], [1.5], [0.7]], dtype=torch.float64)).requires_grad_(True)
    loss = simbert_similarity_loss(cls)
    loss.backward()
    assert loss.item() == pytest.approx(math.log(5), abs=1e-9)
    assert cls.grad.abs().max() < 1e-9
    near = (cls.detach() + 1e-2 * torch.randn(6, 6, dtype=torch.float64)).requires_grad_(True)
    simbert_similarity_loss(near).backward()
    assert near.grad.abs().max() > 1e-6


def test_seq2seq_targets(setup):
    """Seq2seq targets: one loss term per non-pad segment-1 token; the first B token is predicted from the
    position of A's [SEP]."""
    _, tok = setup
    rows = pair_rows(tok, PAIRS, 80)
    where = seq2seq_targets(rows["input_ids"], rows["token_type_ids"], rows["attention_mask"])
    n_seg1 = ((rows["token_type_ids"] == 1) & rows["attention_mask"].bool()).sum()
    assert where.sum() == n_seg1
    for r in range(rows["input_ids"].shape[0]):
        first_b = int((rows["token_type_ids"][r] == 1).nonzero()[0])
        assert rows["input_ids"][r, first_b - 1] == tok.sep_token_id  # A's [SEP] ...
        assert where[r, first_b - 1] and not where[r, : first_b - 1].any()  # ... predicts B's first token


def test_seq2seq_loss_matches_full_lm_head(setup, model):
    _, tok = setup
    rows = pair_rows(tok, PAIRS, 80)
    with torch.no_grad():
        hidden = model.seq2seq_hidden(**rows)
        fast = seq2seq_loss(model, hidden, rows["input_ids"], rows["token_type_ids"], rows["attention_mask"])
        logits = model.lm_head(hidden)[:, :-1]  # (B, L-1, V) every position
        target = rows["input_ids"][:, 1:].masked_fill(
            ~seq2seq_targets(rows["input_ids"], rows["token_type_ids"], rows["attention_mask"]), -100)
        full = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
    assert torch.allclose(fast, full, atol=1e-5)


def test_generate_batched_equals_one_by_one(setup, model):
    _, tok = setup
    texts = [p.a for p in PAIRS] + ["a dog"]
    together = generate(model, tok, texts, max_new_tokens=6)
    alone = [generate(model, tok, [t], max_new_tokens=6)[0] for t in texts]
    assert together == alone
    assert all(0 < len(t.split()) for t in together)


def test_sampling_is_seeded_and_top_k_1_is_greedy(setup, model):
    _, tok = setup
    texts = [p.a for p in PAIRS]

    def sample(seed, **kw):
        return generate(model, tok, texts, max_new_tokens=5, do_sample=True, generator=torch.Generator().manual_seed(seed), **kw)

    assert sample(0, top_p=0.9) == sample(0, top_p=0.9)
    assert sample(0) != sample(1)
    assert sample(3, top_k=1) == generate(model, tok, texts, max_new_tokens=5)


def test_reranked_generation_keeps_the_sample_closest_to_the_input(setup, model):
    """Sample-k-then-rerank: with one sample it is plain top-k sampling (same generator, same output); with
    several, the kept output is the candidate ``similar_sentences`` ranks first among the non-empty samples
    that do not copy the input."""
    data, tokenizer = setup
    texts = [p.a for p in PAIRS]
    one = generate_reranked(model, tokenizer, texts, n_samples=1, generator=torch.Generator().manual_seed(3))
    assert one == generate(model, tokenizer, texts, do_sample=True, top_k=5, generator=torch.Generator().manual_seed(3))
    kept = generate_reranked(model, tokenizer, texts, n_samples=6, generator=torch.Generator().manual_seed(4),
                             max_new_tokens=8)
    samples = generate(model, tokenizer, [t for t in texts for _ in range(6)], do_sample=True, top_k=5,
                       generator=torch.Generator().manual_seed(4), max_new_tokens=8)
    for i, text in enumerate(texts):
        cands = [c for c in samples[6 * i:6 * i + 6] if c.strip() and c.strip().lower() != text.lower()]
        if cands:
            assert kept[i] == similar_sentences(model, tokenizer, text, cands, k=1, max_length=32)[0][0]
    with pytest.raises(ValueError, match="n_samples"):
        generate_reranked(model, tokenizer, texts, n_samples=0)
    with pytest.raises(TypeError, match="list of texts"):
        generate_reranked(model, tokenizer, texts[0])


def test_one_direction_scores_only_the_a_to_b_rows(setup, model):
    """``directions="a_to_b"`` is the seq2seq loss of rows 0, 2, 4, … ([CLS] A [SEP] B [SEP]) alone, computed
    here on those rows by hand; the similarity part is the same in both settings."""
    _, tokenizer = setup
    batch = pair_rows(tokenizer, PAIRS[:2], 40)
    both, one = simbert_step(directions="both"), simbert_step(directions="a_to_b")
    with torch.no_grad():
        both(model, batch), one(model, batch)
        hidden = model.seq2seq_hidden(**batch)
        by_hand = seq2seq_loss(model, hidden[::2], batch["input_ids"][::2], batch["token_type_ids"][::2],
                               batch["attention_mask"][::2])
        all_rows = seq2seq_loss(model, hidden, batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    assert one.parts["seq2seq"][0] == pytest.approx(float(by_hand), rel=1e-5)
    assert both.parts["seq2seq"][0] == pytest.approx(float(all_rows), rel=1e-5)
    assert abs(float(by_hand) - float(all_rows)) > 1e-4
    assert one.parts["similarity"] == pytest.approx(both.parts["similarity"])
    with pytest.raises(ValueError, match="directions"):
        simbert_step(directions="b_to_a")


def test_filter_logits():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(_filter_logits(logits, top_k=2, top_p=1.0)).tolist() == [[False, False, True, True]]
    assert torch.isinf(_filter_logits(logits, top_k=0, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(_filter_logits(logits, top_k=0, top_p=0.85)).tolist() == [[False, False, False, True]]
    assert torch.isinf(_filter_logits(logits, top_k=0, top_p=0.1)).tolist() == [[False, True, True, True]]


def test_ban_repeats():
    out = torch.tensor([[5, 6, 5, 7, 5], [1, 2, 3, 4, 5]])  # (2, t=5) generated so far
    for n, banned in [(1, [{5, 6, 7}, {1, 2, 3, 4, 5}]), (2, [{6, 7}, set()]), (3, [set(), set()])]:
        logits = torch.zeros(2, 10)
        _ban_repeats(logits, out, n)
        assert [set(torch.isinf(row).nonzero().flatten().tolist()) for row in logits] == banned
    logits = torch.zeros(2, 10)
    _ban_repeats(logits, out[:, :1], 3)  # shorter than n - 1: nothing to repeat yet
    assert not torch.isinf(logits).any()


def test_no_repeat_ngram_generation(setup, model):
    """The untrained model loops; with the guard no bigram of any output occurs twice."""
    _, tok = setup
    for text in generate(model, tok, [p.a for p in PAIRS], max_new_tokens=24, no_repeat_ngram_size=2):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        bigrams = list(zip(ids, ids[1:]))
        assert len(bigrams) == len(set(bigrams))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"do_sample": True, "temperature": 0.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
    ],
)
def test_generate_bad_arguments(setup, model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(model, setup[1], ["a dog"], **kwargs)


def test_generate_rejects_a_bare_string(setup, model):
    with pytest.raises(TypeError, match="list"):
        generate(model, setup[1], "a dog")


def test_token_f1():
    assert token_f1("being born", "nascent: being born or beginning") == pytest.approx(2 * 1 * 0.4 / 1.4)
    assert token_f1("The cat", "the CAT!") == 1.0
    assert token_f1("", "a b") == 0.0 and token_f1("x y", "a b") == 0.0
    assert token_f1("a a b", "a b b") == pytest.approx(2 / 3)  # multiplicity counts
    assert mean_token_f1(["a", "b"], ["a", "c"]) == 0.5
    with pytest.raises(ValueError, match="as many"):
        mean_token_f1(["a"], [])


def test_frequent_words():
    assert frequent_words(["of a", "a b", "the a"], 2) == "a b"  # a ×3, then b/of/the ×1: ties alphabetical
    assert frequent_words(["The THE the", "a"], 5) == "the a"  # fewer distinct words than k
    with pytest.raises(ValueError, match="k must be"):
        frequent_words(["a"], 0)
    with pytest.raises(ValueError, match="no words"):
        frequent_words(["", "..."], 3)


def test_held_out_pairs(setup):
    data, _ = setup
    src, ref = held_out_pairs(data, "test", 50, seed=0)
    assert len(src) == len(ref) == 50 and (src, ref) == held_out_pairs(data, "test", 50, seed=0)
    assert src != held_out_pairs(data, "test", 50, seed=1)[0]
    trained = {e.positive for e in data.train}
    relevant = {text: rel for _, text, rel in zip(*data.split_items("test"))}
    for a, r in zip(src, ref):
        assert r in {data.documents[d] for d in relevant[a]}  # the gold document of that sentence
        assert not relevant[a] & trained  # a sense the model never trained on
    with pytest.raises(ValueError, match="n must be"):
        held_out_pairs(data, "test", 0)
    # example pairs: two different example sentences of one held-out sense
    src, ref = held_out_pairs(data, "test", 40, seed=0, kind="example")
    assert len(src) == 40 and (src, ref) == held_out_pairs(data, "test", 40, seed=0, kind="example")
    for a, r in zip(src, ref):
        assert a != r and relevant[a] == relevant[r] and not relevant[a] & trained
    with pytest.raises(ValueError, match="kind must be"):
        held_out_pairs(data, "test", 5, kind="lemma")


def test_corpus_bleu():
    # "the cat sat on the mat" vs "the cat is on the mat": unigrams 5/6, bigrams 3/5, equal lengths (no penalty)
    assert corpus_bleu(["the cat sat on the mat"], ["the cat is on the mat"], max_n=2) == pytest.approx(0.5**0.5)
    assert corpus_bleu(["The cat sat down."], ["the cat sat down"]) == 1.0
    assert corpus_bleu(["the cat"], ["the cat sat down"], max_n=1) == pytest.approx(math.exp(1 - 4 / 2))  # brevity
    assert corpus_bleu(["cat the"], ["the cat"], max_n=2) == 0.0  # the right words in the wrong order
    assert corpus_bleu(["a b", "c d"], ["a b", "x y"], max_n=1) == 0.5  # counts pooled over the corpus
    assert corpus_bleu(["a b c d e"], ["a b"], max_n=1) == pytest.approx(2 / 5)  # long: precision, no penalty
    with pytest.raises(ValueError, match="as many"):
        corpus_bleu(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="max_n"):
        corpus_bleu(["a"], ["a"], max_n=0)


def test_simbert_from_pretrained(setup):
    """A pretrained start is a copy: same encoder and LM head outputs, the head still tied, the original
    untouched by training the copy."""
    _, tok = setup
    seed_everything(0)
    mlm = make_retromae(CFG, tok, decoder=False).eval()
    sim = simbert_from_pretrained(mlm).eval()
    assert sim.lm_head.word_embeddings is sim.bert.get_input_embeddings() is not mlm.bert.get_input_embeddings()
    ids = torch.tensor([[tok.cls_token_id, 5, 6, 7, tok.sep_token_id]])
    att = torch.ones_like(ids)
    h = mlm(ids, att)  # (1, 5, H)
    assert torch.allclose(sim.bert(input_ids=ids, attention_mask=att).last_hidden_state, h)
    assert torch.allclose(sim.lm_head(h), mlm.lm_head(h))
    with torch.no_grad():
        sim.bert.get_input_embeddings().weight.add_(1.0)
    assert torch.allclose(mlm(ids, att), h)


def _markdown_of(name, result):
    from course_lib import benchmark as bench

    return bench.to_markdown(
        {"preset": "fast", "dataset": "wordnet", "n_docs": 1, "n_test_queries": 1, "machine": "m", "date": "d",
         "methods": {name: result.metrics | {"train_seconds": 1.0, "steps": 3} | result.extra},
         "hnsw": {"recall_at_10_vs_exact": 1.0, "speedup_vs_exact": 1.0, "n_vectors": 1, "hnsw_ms_per_1k_queries": 1.0,
                  "exact_ms_per_1k_queries": 1.0, "embeddings": "x", "params": {"M": 16, "ef_construction": 200, "ef": 64}}})


@pytest.mark.parametrize("method", ["simbert", "mlm_then_simbert", "mlm_pairs_then_simbert", "simbert_example_to_gloss",
                                    "simbert_example_pairs"])
def test_benchmark_simbert_scores_generation(setup, method):
    """The benchmark's SimBERT methods run on a tiny budget and report generation before and after, by token F1
    and BLEU, with both floors; the MLM start counts its pretraining."""
    from course_lib import benchmark as bench

    data, tok = setup
    result = bench.METHODS[method](CFG.replace(train_steps=3, pretrain_steps=2), data, tok, n_gen=8)
    g = result.extra["generation"]
    assert result.steps == 3 and g["pairs"] == 8 and len(g["examples"]) == 3
    for metric in ("token_f1", "bleu"):
        for key in ("before", "after", "after_reranked", "copy_input", "frequent_words"):
            assert 0.0 <= g[f"{metric}_{key}"] <= 1.0, (metric, key)
    assert g["seq2seq_directions"] == ("a_to_b" if method == "simbert_example_to_gloss" else "both")
    assert g["pair_kind"] == ("example" if method == "simbert_example_pairs" else "gloss")
    if method == "simbert_example_pairs":  # the references are example sentences, not glosses
        assert not {e["reference"] for e in g["examples"]} & set(data.documents.values())
    assert len(g["frequent_words"].split()) == bench.GEN_FLOOR_WORDS
    if method in ("mlm_then_simbert", "mlm_pairs_then_simbert"):
        pairs = method == "mlm_pairs_then_simbert"
        assert g["start"] == f"an MLM start{' on text pairs' if pairs else ''}, 2 pretraining steps"
        assert result.extra["pretrain_steps"] == 2 and result.extra["pretrain_pairs"] == pairs
        assert result.train_seconds > result.extra["pretrain_seconds"] > 0
    else:
        assert g["start"] == "random weights" and "pretrain_steps" not in result.extra
    line = _markdown_of(method, result)
    assert f"Generation ({method}, from {g['start']})" in line and "BLEU-4" in line
    assert ("example → example" if method == "simbert_example_pairs" else "example → gloss") in line


def test_training_learns_to_generate_and_retrieve(setup):
    """Overfitting a handful of pairs: both losses fall, greedy generation reproduces the target glosses far
    better than before training, and retrieval ranks each example's own gloss first."""
    data, tok = setup
    pairs = make_pairs(data, "gloss")[:16]
    cfg = CFG.replace(simbert_lr=3e-3)  # a handful of pairs: memorising them is safe at a high lr
    seed_everything(0)
    before_model = make_simbert(cfg, tok)
    before = generate(before_model, tok, [p.a for p in pairs])
    model, history, parts = train_simbert(cfg, data, tok, pairs=pairs, model=before_model, batch_size=8, steps=150, progress=False)
    assert history.steps == 150 and len(parts["seq2seq"]) == len(parts["similarity"]) == 150
    assert sum(parts["seq2seq"][-10:]) < 0.2 * sum(parts["seq2seq"][:10])
    assert sum(parts["similarity"][-10:]) < 0.5 * sum(parts["similarity"][:10])
    refs = [p.b for p in pairs]
    after = generate(model, tok, [p.a for p in pairs])
    assert mean_token_f1(after, refs) > 0.8 > 0.2 > mean_token_f1(before, refs)
    hits = [similar_sentences(model, tok, p.a, refs, k=1)[0][0] == p.b for p in pairs]
    assert sum(hits) >= 14


def test_simbert_is_an_encoder_for_evaluate(setup, model):
    data, tok = setup
    metrics = evaluate(model, data, "dev", tokenizer=tok, ks=(1, 10))
    assert 0 <= metrics["recall@1"] <= metrics["recall@10"] <= 1


def test_similar_sentences_validation(setup, model):
    _, tok = setup
    out = similar_sentences(model, tok, "a dog", ["a dog", "the bank", "a cat"], k=3)
    assert [t for t, _ in out][0] == "a dog" and out[0][1] >= out[1][1] >= out[2][1]
    with pytest.raises(ValueError, match="k must be"):
        similar_sentences(model, tok, "a dog", ["a cat"], k=2)
    with pytest.raises(ValueError, match="at least one"):
        similar_sentences(model, tok, "a dog", [], k=1)


def test_explore_generation(setup, model, capsys):
    from course_lib.widgets import explore_generation

    _, tok = setup
    box = explore_generation(model, tok, [PAIRS[0].a], [PAIRS[0].b], temperature=1.0, top_p=0.9)
    first = capsys.readouterr().out
    assert "reference : nascent: being born or beginning" in first and "greedy" in first and "sampled" in first
    temp, top_p, seed = box.children[0].children
    seed.value = 3  # the callback runs and prints again
    assert "sampled" in capsys.readouterr().out
    with pytest.raises(ValueError, match="as many references"):
        explore_generation(model, tok, ["a"], [])
