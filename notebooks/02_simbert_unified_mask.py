# %% [markdown]
# # 02 · SimBERT: one encoder that retrieves and generates, through the UniLM mask
#
# **Papers and code.** SimBERT (Su, 2020; code `ZhuiyiTechnology/simbert`, write-up kexue.fm/archives/7427);
# the UniLM sequence-to-sequence mask (Dong et al., 2019, §2.3); nucleus sampling (Holtzman et al., 2020).
#
# **Idea.** Put two sentences that mean the same thing into one sequence, `[CLS] A [SEP] B [SEP]`, under an
# attention mask that lets B see A but never lets A see B. One forward pass then trains a *generator* (predict
# B from A, word by word) and a *retriever* (the [CLS] vector of A, which never saw B, should be close to the
# [CLS] vector of B).
#
# **What you will build:** the three attention masks side by side; the UniLM mask from segment ids, checked
# against `course_lib` and explored row by row; batches with both directions A→B and B→A; the check that
# [CLS] ignores B; the similarity loss (diagonal removed, partner labels i XOR 1) and the seq2seq loss;
# joint training with both loss curves; greedy generation before training, greedy and sampled after, scored
# by token F1 against two floors; similar-sentence search and retrieval recall next to the in-batch model at equal budget.
#
# **Run time:** FAST preset about 70 s on 2 CPU cores; full preset about 15 minutes on 2 cores (estimated
# from its per-step and per-evaluation times).

# %%
import course_lib  # noqa: F401  first: sets OMP_WAIT_POLICY=PASSIVE before torch loads (2-core stalls otherwise)

# isort: split
import math

import numpy as np
import torch
import torch.nn.functional as F

from course_lib.baselines import BM25
from course_lib.config import get_config
from course_lib.data import load_dataset
from course_lib.in_batch import train_in_batch
from course_lib.masks import attention_bias, causal_mask, padding_mask, unilm_mask
from course_lib.metrics import KS, evaluate, frequent_words, mean_token_f1, retrieval_metrics, token_f1
from course_lib.plots import plot_attention_masks, plot_loss_curve, plot_recall_at_k, plot_similarity_matrix
from course_lib.simbert import (
    generate,
    held_out_pairs,
    make_pairs,
    make_simbert,
    pair_rows,
    seq2seq_loss,
    simbert_similarity_loss,
    similar_sentences,
    train_simbert,
)
from course_lib.tokenizer import load_tokenizer
from course_lib.utils import seed_everything
from course_lib.widgets import explore_generation, explore_mask_rows

# %% tags=["parameters"]
PRESET = None  # None: FAST unless the environment sets COURSE_FAST=0; or "fast" / "full"
SCALE = 30.0  # SimBERT's similarity scale (= 1/τ); its successor RoFormer-Sim uses 20
SHOW_PAIRS = 4  # pairs in the small batch we draw (8 rows)
GEN_TEMPERATURE = 1.0  # sampling temperature for the "sampled" outputs
GEN_TOP_P = 0.9  # nucleus size for the "sampled" outputs

# %%
cfg = get_config(PRESET)
generator = seed_everything(cfg.seed, cfg.num_threads)
FAST = cfg.preset == "fast"
STEPS = 100 if FAST else cfg.train_steps  # SimBERT and the in-batch model each train this many steps
BATCH_PAIRS = 16 if FAST else cfg.simbert_pairs  # pairs per batch (SimBERT rows: twice as many)
N_GEN = 60 if FAST else 500  # held-out (example, gloss) pairs scored for generation
data = load_dataset("wordnet", cfg.preset)
tokenizer = load_tokenizer(data, cfg.vocab_size)
pairs = make_pairs(data, "gloss")  # (example sentence, its gloss) from the training split
print(cfg.preset, data, f"{len(pairs)} training pairs", sep="\n")


def test_metrics(model):
    """Recall@k, MRR@10, nDCG@10 of an encoder on the test split (exact search over the corpus)."""
    return evaluate(model, data, "test", tokenizer=tokenizer, max_query_len=cfg.max_query_len, max_doc_len=cfg.max_doc_len)


# %% [markdown]
# ## 1. Three attention masks
#
# One transformer, three ways to let positions see each other. Take one training pair, written as
# `[CLS] A [SEP] B [SEP]`: A is an example sentence, B the gloss of its sense. Row i of a mask is query
# position i; a dark cell (i, j) means position i may attend position j.
#
# - **bidirectional** (BERT): everyone sees everyone; good for understanding, useless for generating B (the
#   position that predicts a B token could look at that very token: the answer leaks);
# - **causal** (GPT): each position sees itself and the past; it generates, but A is read left to right too;
# - **seq2seq** (UniLM): A is read bidirectionally, B is generated left to right *given all of A*, and A never
#   sees B.

# %%
pair = min(pairs[:2000], key=lambda p: abs(len(tokenizer(p.a, p.b)["input_ids"]) - 14))  # a short pair to draw
rows = pair_rows(tokenizer, [pair], max_length=cfg.max_query_len + cfg.max_doc_len)  # two rows: A→B and B→A
tokens = tokenizer.convert_ids_to_tokens(rows["input_ids"][0])
seg, att = rows["token_type_ids"][:1], rows["attention_mask"][:1]  # (1, L) each: the A→B row
masks = {
    "bidirectional": padding_mask(att)[0],
    "causal": causal_mask(att)[0],
    "seq2seq (UniLM)": unilm_mask(seg, att)[0],
}
print(f"A = {pair.a!r}\nB = {pair.b!r}\nsegment ids: {seg[0].tolist()}")
fig = plot_attention_masks(masks, tokens)

# %% [markdown]
# ## 2. The UniLM mask from segment ids
#
# Segment ids are 0 on `[CLS] A [SEP]` and 1 on `B [SEP]`. Their running sum c is 0 all over A and counts up
# 1, 2, 3, … along B. One comparison builds the whole mask: **row i sees column j iff c_j ≤ c_i**. A rows
# (c = 0) see only columns with c = 0, all of A; the k-th B token (c = k) sees A and B tokens 1…k. Padding is
# removed separately: the cumsum rule alone would let the final [SEP] see trailing pads (pads have segment
# 0, so their c equals the last token's).

# %%
def my_unilm_mask(segment_ids, attention_mask):
    c = segment_ids.cumsum(dim=1)  # (B, L): 0 on [CLS] A [SEP], then 1, 2, 3, ... along B
    visible = c[:, None, :] <= c[:, :, None]  # (B, L, L): [b, i, j] = c_j <= c_i
    return visible & attention_mask.bool()[:, None, :]  # (B, L, L): pads are never visible


# %% [markdown]
# **Checker.** On a padded batch of both directions for four pairs, ours equals
# `course_lib.masks.unilm_mask`; and the pad trap is real.

# %%
first_of_sense = {}
for p in pairs:
    first_of_sense.setdefault(p.group, p)
show_pairs = list(first_of_sense.values())[:SHOW_PAIRS]  # one pair per sense: no gloss twice in the batch
small = pair_rows(tokenizer, show_pairs, max_length=cfg.max_query_len + cfg.max_doc_len)  # (8, L)
my_mask = my_unilm_mask(small["token_type_ids"], small["attention_mask"])  # (8, L, L)
assert torch.equal(my_mask, unilm_mask(small["token_type_ids"], small["attention_mask"]))
c = small["token_type_ids"].cumsum(1)
raw = c[:, None, :] <= c[:, :, None]  # the cumsum rule without the padding term
r = int(small["attention_mask"].sum(1).argmin())  # the shortest row has pads
last = int(small["attention_mask"][r].sum()) - 1  # its final [SEP]
print(f"row {r}: final [SEP] at {last}; sees pads with the cumsum rule alone: {bool(raw[r, last, last + 1:].any())}, "
      f"with the padding term: {bool(my_mask[r, last, last + 1:].any())}")
assert last + 1 < small["input_ids"].shape[1], "the shortest row should have pads"
assert raw[r, last, last + 1:].all() and not my_mask[r, last, last + 1:].any()

# %% [markdown]
# Pick a row and see what it attends to in each mask (the tokens are the A→B row drawn above).

# %%
widget = explore_mask_rows(masks, tokens, row=int(seg[0].argmax()) + 1)

# %% [markdown]
# **From a boolean mask to what BERT wants.** transformers' BERT layers *add* the mask to the attention
# scores before the softmax, so a hidden cell must become a very large negative number and a visible one 0.
# Multiplying the scores by a 0/1 mask is a known bug of PyTorch ports (issue #26 of the RoFormer_pytorch
# port): a score of 0
# still gets weight e⁰ in the softmax. `course_lib.masks.attention_bias` does the conversion, in one place:

# %%
bias = attention_bias(unilm_mask(seg, att))  # (1, 1, L, L), passed as BertModel(attention_mask=bias)
print(f"bias shape {tuple(bias.shape)}; values: {sorted(set(bias.unique().tolist()))}")

# %% [markdown]
# ## 3. Both directions, and why the similarity loss is free
#
# SimBERT puts each pair in the batch twice, `[CLS] A [SEP] B [SEP]` and `[CLS] B [SEP] A [SEP]`, in adjacent
# rows 2k and 2k+1: the model learns to generate B from A *and* A from B. Here are the first two pairs:

# %%
for i in range(4):
    ids, s, m = small["input_ids"][i], small["token_type_ids"][i], small["attention_mask"][i].bool()
    a_part = tokenizer.decode(ids[m & (s == 0)])
    b_part = tokenizer.decode(ids[m & (s == 1)])
    print(f"row {i}: {a_part}  ‖  {b_part}")

# %% [markdown]
# Because no A position ever sees B, the [CLS] output of `[CLS] A [SEP] B [SEP]` equals (up to float rounding) the [CLS]
# output of `[CLS] A [SEP]` encoded alone: same tokens, same positions, same segments, and nothing else is
# visible, at every layer. So the similarity loss can use the [CLS] vectors of the seq2seq pass, and at
# inference a sentence is encoded alone. (A pair too long for `max_length` would get A truncated, and then
# the two differ; ours are short.) Check it on an untrained SimBERT:

# %%
seed_everything(cfg.seed, cfg.num_threads)
model0 = make_simbert(cfg, tokenizer).eval()  # untrained: kept for "before" comparisons
firsts = [t for p in show_pairs for t in (p.a, p.b)]  # the first sentence of each row
alone = tokenizer(firsts, padding=True, return_tensors="pt")
with torch.no_grad():
    cls_joint = model0.seq2seq_hidden(**small)[:, 0]  # (8, H) under the UniLM mask
    cls_alone = model0.bert(input_ids=alone["input_ids"], attention_mask=alone["attention_mask"]).last_hidden_state[:, 0]
    cls_bidir = model0.bert(**small).last_hidden_state[:, 0]  # (8, H) with a plain mask: [CLS] sees B
print(f"max |[CLS] joint − [CLS] alone| = {(cls_joint - cls_alone).abs().max():.1e}   "
      f"with a bidirectional mask instead: {(cls_bidir - cls_alone).abs().max():.1e}")
assert torch.allclose(cls_joint, cls_alone, atol=1e-5) and not torch.allclose(cls_bidir, cls_alone, atol=1e-3)

# %% [markdown]
# ## 4. The similarity loss
#
# The [CLS] state goes through a *linear* pooler (no tanh; a common port bug, RoFormer_pytorch issue #22), v = W·h + b, and is
# L2-normalised: u = v/‖v‖. Every row is scored against every other row of the batch, S = 30·(U Uᵀ − 10¹²·I):
# subtracting 10¹² on the diagonal (before scaling, as the reference does) removes each row from its own
# softmax. The target of row i is its partner, i XOR 1 (0↔1, 2↔3, …). Compared with notebook 01's loss,
# every row is both query and candidate, so each row has 2n − 2 negatives: the other pairs' A *and* B.

# %%
def my_similarity_loss(cls, scale):
    u = F.normalize(cls, dim=-1)  # (2n, H)
    logits = scale * (u @ u.T - 1e12 * torch.eye(len(u)))  # (2n, 2n), own row removed
    labels = torch.arange(len(u)) ^ 1  # the partner: 0↔1, 2↔3, ...
    return F.cross_entropy(logits, labels)


with torch.no_grad():
    v = model0.pooler(cls_joint)  # (8, H), the linear pooler
my_sim = my_similarity_loss(v, SCALE)
torch.testing.assert_close(my_sim, simbert_similarity_loss(v, SCALE))
try:
    simbert_similarity_loss(v[:7], SCALE)
except ValueError as err:
    print("odd batch →", err)
print(f"similarity loss {my_sim:.3f} (checked against course_lib; ln(2n − 1) = {math.log(2 * SHOW_PAIRS - 1):.3f} "
      "is uniform guessing)")


def draw_similarity(model, title):
    """The 2n × 2n similarity logits of the small batch, own row blank, partner boxed."""
    with torch.no_grad():
        rows_on_device = {k: v.to(next(model.parameters()).device) for k, v in small.items()}
        u = F.normalize(model.pooler(model.seq2seq_hidden(**rows_on_device)[:, 0]), dim=-1).cpu()  # (2n, H)
    logits = (SCALE * u @ u.T).fill_diagonal_(float("-inf"))
    labels = [f"{i}: {t[:24]}" for i, t in enumerate(firsts)]
    return plot_similarity_matrix(logits, targets=[i ^ 1 for i in range(len(u))], row_labels=labels,
                                  axis_labels=("rows (candidates)", "rows"), title=title)


fig = draw_similarity(model0, "untrained SimBERT: scale · cos, own row removed, partner boxed")

# %% [markdown]
# Left: the logits, scale · cos (the scale is 1/τ, hence the panel's title); the own-row cells are blank,
# each row's partner is boxed. Right: each row's softmax, the probability the loss puts on each candidate.
# Untrained, every logit is about +30, i.e. cos ≈ 1: all [CLS] vectors are nearly the same (section 7 comes
# back to why), so every row's softmax is close to uniform.

# %% [markdown]
# ## 5. The seq2seq loss
#
# Every B token, including the final [SEP], is predicted from the position before it, so the first B token
# is predicted from A's [SEP]. The loss is the mean cross-entropy over exactly those positions; the LM head
# (its output matrix is the word-embedding table, tied) runs only there.

# %%
with torch.no_grad():
    hidden = model0.seq2seq_hidden(**small)  # (8, L, H)
    ids, seg8, att8 = small["input_ids"], small["token_type_ids"], small["attention_mask"]
    where = (seg8[:, 1:] == 1) & att8[:, 1:].bool()  # (8, L-1): positions whose next token is in B
    my_s2s = F.cross_entropy(model0.lm_head(hidden[:, :-1][where]), ids[:, 1:][where])  # (T, V) logits
    lib_s2s = seq2seq_loss(model0, hidden, ids, seg8, att8)
torch.testing.assert_close(my_s2s, lib_s2s)
assert where.sum() == ((seg8 == 1) & att8.bool()).sum()  # one term per non-pad B token
print(f"seq2seq loss {my_s2s:.2f} over {int(where.sum())} B tokens (checked; ln V = {math.log(len(tokenizer)):.2f}, "
      "the loss of a uniform guess over the V-token vocabulary)")

# %% [markdown]
# ## 6. Generation before training
#
# Decoding feeds `[CLS] A [SEP]`, predicts the next token at the last position, appends it as a segment-1
# token, and repeats until [SEP] (`course_lib.simbert.generate`; all sentences decode together, each
# exactly as it would alone). **Greedy** takes the most likely token; **sampling** draws from the softmax
# of the logits divided by a temperature, restricted to the smallest set of tokens whose probability
# reaches top-p. Decoding stops at [SEP] or after 32 new tokens (`max_new_tokens`).
#
# We score generation on held-out pairs: test-split example sentences, a seeded sample, whose senses the model
# never trained on (no test synset is a training positive; `tests/test_data.py` checks it), against their
# gold gloss, with word-overlap F1 (SQuAD's token F1, without its removal of articles, so "the" counts).
# Two floors keep that number honest. **Copy the input**: a gloss lists its synset's words, and the example
# usually contains one of them. **Frequent words**: the six most frequent words of the training glosses,
# the same for every sentence: the best a model could hope for by knowing word frequencies and nothing else.
#
# A weak model decoding greedily tends to loop ("the the the …"). Every score below, before and after
# training, uses the usual guard: no bigram may occur twice in an output (`no_repeat_ngram_size=2`, the
# name transformers' `generate` uses).

# %%
gen_src, gen_ref = held_out_pairs(data, "test", N_GEN, cfg.seed)  # example sentences, their gold glosses
common = frequent_words([p.b for p in pairs], 6)
floors = {"copy the input": mean_token_f1(gen_src, gen_ref), f"frequent words {common!r}": mean_token_f1([common] * N_GEN, gen_ref)}
greedy_before = generate(model0, tokenizer, gen_src, no_repeat_ngram_size=2)
f1_before = mean_token_f1(greedy_before, gen_ref)
print(f"token F1 on {N_GEN} held-out pairs: untrained greedy {f1_before:.3f}")
for name, f1 in floors.items():
    print(f"  floor, {name}: {f1:.3f}")
for src, out in zip(gen_src[:2], greedy_before[:2]):
    print(f"  {src!r} → {out!r}")

# %% [markdown]
# ## 7. Joint training
#
# Loss = seq2seq + similarity, unweighted, as in the reference. Batches hold `BATCH_PAIRS` pairs (twice as
# many rows) with no sense twice (a repeated gloss would be a false negative). AdamW with weight decay 0.01.
#
# **The learning rate is lower than notebook 01's** (`cfg.simbert_lr` = 3e-4 against 2e-3), and that is a
# lesson about [CLS] pooling from scratch. At initialisation every [CLS] vector is almost the same (the
# untrained similarity matrix in section 4 is nearly flat: [CLS] starts as one fixed embedding and only mixes
# in the other tokens through near-uniform attention). At 2e-3 the similarity loss then barely leaves
# ln(2n − 1): the scores stay equal, a collapse; notebook 01's mean pooling does not have the problem, since
# a mean of token embeddings differs from sentence to sentence from the first step. The reference never
# meets this: it fine-tunes a pretrained BERT (at 2e-6). Exercise 2 lets you see the collapse.

# %%
seed_everything(cfg.seed, cfg.num_threads)
simbert, history, parts = train_simbert(cfg, data, tokenizer, pairs=pairs, steps=STEPS, batch_size=BATCH_PAIRS)
fig = plot_loss_curve(parts, reference=math.log(2 * BATCH_PAIRS - 1), reference_label="ln(2n − 1): similarity at chance")
print(f"{history.steps} steps in {history.train_seconds:.0f} s ({1000 * history.train_seconds / history.steps:.0f} ms per step)")
for name, curve in parts.items():
    print(f"{name:>10}: {np.mean(curve[:10]):.2f} → {np.mean(curve[-10:]):.2f}")

# %%
assert all(np.mean(curve[-10:]) < np.mean(curve[:10]) for curve in parts.values()), "both losses should fall"

# %% [markdown]
# The seq2seq loss sits far above the similarity loss: it is a cross-entropy over the whole vocabulary at
# every B token, the similarity one over the 2n − 1 rows of the batch. That is normal (bert_seq2seq #61).
# The same small batch after training: most rows now put more of their probability on the partner than
# on any other row, though the similarity loss is still far from 0.

# %%
fig = draw_similarity(simbert, "trained SimBERT: scale · cos, own row removed, partner boxed")

# %% [markdown]
# ## 8. Generation after training
#
# The same held-out pairs, greedy and sampled (temperature `GEN_TEMPERATURE`, top-p `GEN_TOP_P`):

# %%
greedy_after = generate(simbert, tokenizer, gen_src, no_repeat_ngram_size=2)
sampled_after = generate(simbert, tokenizer, gen_src, do_sample=True, temperature=GEN_TEMPERATURE, top_p=GEN_TOP_P,
                         no_repeat_ngram_size=2, generator=torch.Generator().manual_seed(cfg.seed))
f1_after, f1_sampled = mean_token_f1(greedy_after, gen_ref), mean_token_f1(sampled_after, gen_ref)
print(f"token F1: untrained {f1_before:.3f} → trained greedy {f1_after:.3f}, sampled {f1_sampled:.3f}; floors: "
      + ", ".join(f"{name} {f1:.3f}" for name, f1 in floors.items()))
for i in range(3):
    print(f"\nA        : {gen_src[i]}\nreference: {gen_ref[i]}\nuntrained: {greedy_before[i]}"
          f"\ngreedy   : {greedy_after[i]}  (F1 {token_f1(greedy_after[i], gen_ref[i]):.2f})"
          f"\nsampled  : {sampled_after[i]}  (F1 {token_f1(sampled_after[i], gen_ref[i]):.2f})")

# %%
assert f1_after > f1_before, "generation should move towards the reference"

# %% [markdown]
# Be honest about what this shows. The trained model's F1 is above the untrained one's, but far below both
# floors: greedy decoding mostly says "the" or "a" and stops. These steps from scratch teach the model that a
# few words are frequent in glosses, not how to write one, nor even the best fixed six-word bag. The benchmark's
# longer runs from random weights say the same (`python -m course_lib.benchmark --methods simbert`, 500
# held-out pairs, README): greedy F1 0.001 → 0.031
# after 300 steps of 32 pairs (FAST data) and 0.001 → 0.074 after 800 (full data, "the the a the"), against
# floors of 0.17–0.20. Meanwhile the similarity loss, in the same steps, already ranks partners (section 9):
# generation is by far the slower of the two skills.
#
# The reference never starts from scratch: it fine-tunes a pretrained BERT whose language model already knows how
# sentences go. The benchmark's `mlm_then_simbert` does the same at our scale: notebook 03's plain MLM
# pretraining, then SimBERT from that BERT and its LM head (`simbert_from_pretrained`). After the full preset's
# pretraining (2,500 steps) the greedy output takes the shape of a gloss, a word list, a colon, a definition, and
# sometimes names the sentence's own word: "a northern snowstorm" → "northern : of or relating to or
# characteristic of the southern southern the north of a north" (reference: "northerly, northern: coming from the
# north; used especially of wind"). Token F1 goes from 0.037 (the MLM start) to 0.120, and corpus BLEU-4
# (`corpus_bleu`, Papineni et al., 2002), which rewards word order, from 0.000 to 0.014, where both floors score
# 0.000: they have the right words in no order. Token F1 stays below the frequent-words floor: the definitions
# are fluent but mostly about the wrong thing. And retrieval pays: Recall@10 0.319 against 0.379 from scratch
# (full), 0.187 against 0.389 after FAST's 300 pretraining steps. Exercise 5 runs the FAST version.
#
# Move the sliders: low temperature or small top-p approach greedy decoding; high values give more varied,
# less faithful glosses.

# %%
widget = explore_generation(simbert, tokenizer, gen_src[:3], gen_ref[:3], temperature=GEN_TEMPERATURE, top_p=GEN_TOP_P)

# %% [markdown]
# ## 9. Retrieval with the same model
#
# SimBERT's retrieval encoder is the pooled [CLS] of a sentence alone. **Similar-sentence search**, what
# SimBERT is used for: a held-out example sentence against every test example sentence; same-sense ones
# are marked ✓. We pick a query whose sense has other example sentences among the candidates.

# %%
test_items = sorted(data.queries["test"].items())
test_sense = {text: next(iter(data.qrels["test"][qid])) for qid, text in test_items}
candidates = [text for _, text in test_items]
query = next(t for t in gen_src if sum(test_sense[c] == test_sense[t] for c in candidates) >= 3)
print(f"query: {query!r} (sense: {data.documents[test_sense[query]]!r})")
for text, score in similar_sentences(simbert, tokenizer, query, candidates, k=6)[1:]:  # [0] is the query itself
    print(f"{score:.3f} {'✓' if test_sense[text] == test_sense[query] else ' '} {text}")

# %% [markdown]
# The cosines are all high and close together: after so short a training the sentence vectors still sit in
# a narrow cone (the near-identical vectors of section 4, spread a little but not much). For search only their
# order matters, and here the hits tend to share a *word* with the query rather than its sense (✓ marks the
# ones that do share it): a hard test, since two example sentences of one sense rarely share words, and a
# short training mostly teaches surface overlap.
#
# **Sense retrieval at equal budget.** The in-batch model of notebook 01 trains on the same pairs with the
# same number of steps and pairs per batch (mean pooling, τ = 0.05, one direction, its own lr `cfg.lr`, 2e-3 in FAST).
# SimBERT spends part of every step on generation and encodes each pair twice as one long row, so each of
# its steps costs more (times printed below).

# %%
seed_everything(cfg.seed, cfg.num_threads)
in_batch, h_in_batch = train_in_batch(cfg, data, tokenizer, steps=STEPS, batch_size=BATCH_PAIRS)
_, test_texts, test_relevant = data.split_items("test")
bm25_ranked, _ = BM25(data.corpus).search(test_texts, max(KS))
results = {
    "untrained SimBERT": test_metrics(model0),
    f"SimBERT ({STEPS} steps)": test_metrics(simbert),
    f"in-batch ({STEPS} steps)": test_metrics(in_batch),
    "bm25": retrieval_metrics(bm25_ranked, test_relevant, KS),
}
for name, m in results.items():
    print(f"{name:>22}: R@1 {m['recall@1']:.3f}  R@10 {m['recall@10']:.3f}  MRR@10 {m['mrr@10']:.3f}")
print(f"training time: SimBERT {history.train_seconds:.0f} s, in-batch {h_in_batch.train_seconds:.0f} s")
fig = plot_recall_at_k(results, title=f"Test split ({cfg.preset}, {len(test_texts)} queries)")

# %%
assert results[f"SimBERT ({STEPS} steps)"]["recall@10"] > results["untrained SimBERT"]["recall@10"]

# %% [markdown]
# SimBERT's author calls retrieval a by-product of a synonym generator, trained with no special care for
# negatives and usually weaker than a retriever trained for the job (simbert issue #10). In this short FAST
# run the two dense models are close (printed above); in the benchmark's longer runs (README) the in-batch
# model is ahead: Recall@10 0.526 vs 0.389 (FAST, 300 steps) and 0.455 vs 0.379 (full, 800 steps), with its
# batches of 64 pairs against SimBERT's 32. BM25 stays
# far ahead of both in FAST mode: an example sentence almost always contains one of its gloss's words, and
# the FAST corpus holds few synsets per word (notebook 00). What SimBERT adds is the generator: the same
# weights that embed a sentence learn to write a gloss for it.

# %% [markdown]
# ## Summary
#
# - The UniLM mask is one comparison on the running sum of segment ids, plus the padding term; transformers
#   wants it as an additive bias.
# - With that mask, A never sees B, so [CLS] of `[CLS] A [SEP] B [SEP]` is the embedding of A alone: one
#   forward pass serves both the seq2seq and the similarity loss.
# - Similarity: linear pooler, L2 norm, scale 30, own row removed before scaling, partner i XOR 1 as target;
#   every row is a query and a candidate.
# - Seq2seq: cross-entropy over the B tokens only, final [SEP] included, each from the position before it.
# - One small model generates (greedy or sampled) and retrieves; generation needs far more training than
#   retrieval: from scratch, at this size and budget, it learns gloss word frequencies, not glosses (below the
#   frequent-words floor), and trained longer, the plain in-batch model retrieves better (README results).
# - Generation wants a pretrained language model, as in the reference: from the full preset's MLM start the
#   output is gloss-shaped and beats both floors on BLEU-4, though not on token F1; after FAST's 300
#   pretraining steps token F1 reaches 0.103 (0.031 from scratch, benchmark) while BLEU-4 stays at 0.000.
# - Score generated text against floors (copy the input, frequent words), not only against the untrained
#   model: "better than random" is easy. A bag-of-words score (token F1) and an order-aware one (BLEU) can
#   disagree; report both.
#
# ## Exercises
#
# 1. **Pads that leak.** Build the bias from the cumsum rule alone (`raw` in section 2) for `small`, replace
#    the pad ids of the shortest row by random token ids, and run `model0.bert(input_ids=…, attention_mask=
#    attention_bias(raw), token_type_ids=…)`. Check that the final [SEP]'s output now depends on the pads
#    while the library mask's does not: `assert not torch.allclose(raw_a, raw_b) and torch.allclose(lib_a, lib_b)`.
# 2. **Collapse.** Train again at notebook 01's learning rate:
#    `m_hot, _, parts_hot = train_simbert(cfg.replace(simbert_lr=2e-3), data, tokenizer, pairs=pairs, steps=STEPS, batch_size=BATCH_PAIRS)`.
#    Check that the similarity loss stays near chance:
#    `assert np.mean(parts_hot["similarity"][-10:]) > 0.9 * math.log(2 * BATCH_PAIRS - 1)`, and look at
#    `draw_similarity(m_hot, "lr 2e-3")`. Then train notebook 01's model with `cfg.replace(pooling="cls")`:
#    the same collapse, without any seq2seq loss.
# 3. **Example ↔ example pairs.** Train on two example sentences of the same sense instead of example ↔ gloss:
#    `m_ex, _, _ = train_simbert(cfg, data, tokenizer, pairs=make_pairs(data, "example"), steps=STEPS, batch_size=BATCH_PAIRS)`.
#    Check it still learns to retrieve glosses it never saw paired with a sentence:
#    `assert test_metrics(m_ex)["recall@10"] > results["untrained SimBERT"]["recall@10"]`. Is it better or
#    worse than the gloss-paired model, and why might that be?
# 4. **Diversity.** Sample ten outputs for `gen_src[0]` (seeds 0–9, `top_p=1.0`) at temperature 0.3 and at
#    1.5. Check: `assert len(set(hot)) >= len(set(cold))`. Then compare their mean token F1 against
#    `gen_ref[0]`: does diversity cost faithfulness here?
# 5. **A pretrained start.** Pretrain notebook 03's plain MLM for the preset's steps (300 in FAST, about a
#    minute; 2,500 in full, about 12 minutes) and train SimBERT from it at `cfg.finetune_lr` (1e-3, notebook
#    03's fine-tuning lr for a pretrained start, as the benchmark's `mlm_then_simbert` does). With `from course_lib.retromae import pretrain, pretrain_texts`
#    and `from course_lib.simbert import simbert_from_pretrained`: `seed_everything(cfg.seed, cfg.num_threads)`,
#    `mlm, _, _ = pretrain(cfg, pretrain_texts(data), tokenizer, decoder=False)`, then
#    `m_pre, _, _ = train_simbert(cfg.replace(simbert_lr=cfg.finetune_lr), data, tokenizer, pairs=pairs, model=simbert_from_pretrained(mlm), steps=STEPS, batch_size=BATCH_PAIRS)`.
#    Check that its greedy glosses beat the from-scratch model's:
#    `assert mean_token_f1(generate(m_pre, tokenizer, gen_src, no_repeat_ngram_size=2), gen_ref) > f1_after`.
#    Read a few outputs, and its `test_metrics(m_pre)`: what did FAST's 300 pretraining steps do to retrieval
#    (notebook 03, section 7, meets the same thing)?
