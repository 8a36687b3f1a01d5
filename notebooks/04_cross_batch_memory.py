# %% [markdown]
# # 04 · Cross-batch memory: negatives from batches you already paid for
#
# **Papers.** CBNS: Jinpeng Wang, Jieming Zhu & Xiuqiang He, "Cross-Batch Negative Sampling for Training
# Two-Tower Recommenders" (SIGIR 2021, arXiv:2110.15154, §3); Yi et al., "Sampling-Bias-Corrected Neural Modeling
# for Large Corpus Item Recommendations" (RecSys 2019, §3 the logQ correction, §4 the streaming frequency
# estimator); MoCo: He et al. (2020, arXiv:1911.05722, §3.2, the momentum encoder); XBM: Wang et al. (2020,
# arXiv:1912.06798, slow feature drift).
#
# **Idea.** A batch of B pairs gives each query B − 1 negatives. Keep the document embeddings of the last few
# batches in a FIFO memory, detached, and score every query against them too: B − 1 + M negatives for the
# compute of B. The catch is that stored vectors were made by older weights.
#
# **What you will build:** what a bigger batch costs (time and activation memory per step); a FIFO memory
# bank, checked against `course_lib.memory.MemoryBank`; the B×(B+M) logits with logQ correction and
# accidental-hit masking, checked against `course_lib.losses.cbns_loss`; Yi et al.'s streaming frequency
# estimator and their simulation; training with a memory, and the drift of stored vectors against their age;
# why the memory needs slowly changing document embeddings (MoCo's momentum encoder); logQ under a
# popularity-skewed sampler; recall curves against a small and a large batch; the results at full scale.
#
# **Run time:** FAST preset about 70 s on 2 CPU cores; full preset estimated at 20–25 minutes from the
# benchmark's stage times (800 steps per run, and each of the eleven evaluations encodes 117,659 documents).
#
# **Settings.** The runs here use B = 8 and M = 24 so that the notebook stays within its time budget; the
# benchmark (section 8) uses B = 16 and M = 112. Every run here and there uses lr 5e-4, not notebook 01's 2e-3:
# small batches learned best near 5e-4 in our short FAST probes (`course_lib.cbns.CBNSSettings` says so).

# %%
import course_lib  # noqa: F401  first: sets OMP_WAIT_POLICY=PASSIVE before torch loads (2-core stalls otherwise)

# isort: split
import collections
import math

import numpy as np
import torch
import torch.nn.functional as F

from course_lib.benchmark import mean_sd, ordering, stored_results
from course_lib.cbns import CBNSSettings, CBNSStep, cbns_sampler, train_cbns
from course_lib.config import get_config
from course_lib.data import load_dataset
from course_lib.in_batch import pair_batches
from course_lib.losses import cbns_loss, in_batch_softmax_loss, similarity_logits
from course_lib.memory import MemoryBank, StreamingFrequencyEstimator
from course_lib.metrics import evaluate
from course_lib.models import make_encoder, tokenize
from course_lib.plots import (
    plot_curve,
    plot_drift,
    plot_frequency_tracking,
    plot_loss_curve,
    plot_recall_at_k,
    plot_similarity_matrix,
)
from course_lib.tokenizer import load_tokenizer
from course_lib.train import measure_step
from course_lib.utils import seed_everything
from course_lib.widgets import explore_memory_size

# %% tags=["parameters"]
PRESET = None  # None: FAST unless the environment sets COURSE_FAST=0; or "fast" / "full"
BATCH_SIZE = 8  # the small batch B
MEMORY_SIZE = 24  # M stored document embeddings (three batches of 8); the large batch is B + M
WARMUP_STEPS = 20  # plain in-batch steps before the memory is scored (it fills all along)
MOMENTUM = 0.99  # the slow document encoder's m (MoCo); see section 6
LR = 5e-4  # AdamW's learning rate for every run of this notebook
TEMPERATURE = 0.05  # τ of the softmax
POPULARITY_ALPHA = 1.0  # section 7: batches drawn ∝ (sense count + 1)^α
COST_BATCH_SIZES = (16, 64, 256)  # section 1: the cost of one step at these batch sizes

# %%
cfg = get_config(PRESET).replace(temperature=TEMPERATURE)
generator = seed_everything(cfg.seed, cfg.num_threads)
FAST = cfg.preset == "fast"
STEPS = 40 if FAST else 800  # the training runs of sections 6 and 7, and the small batch of section 5
LONG_STEPS = max(STEPS, 100)  # section 5's memory runs go on to here
data = load_dataset("wordnet", cfg.preset)
tokenizer = load_tokenizer(data, cfg.vocab_size)
print(cfg.preset, data)


def settings(**changes) -> CBNSSettings:
    """This notebook's configuration of a run, from the parameters cell, with some knobs changed."""
    base = dict(batch_size=BATCH_SIZE, memory_size=MEMORY_SIZE, warmup_steps=WARMUP_STEPS, momentum=MOMENTUM,
                lr=LR, popularity_alpha=None)
    return CBNSSettings(**(base | changes))


def test_metrics(model):
    """Recall@k, MRR@10, nDCG@10 on the test split (exact search over the corpus)."""
    return evaluate(model, data, "test", tokenizer=tokenizer, max_query_len=cfg.max_query_len, max_doc_len=cfg.max_doc_len)


# %% [markdown]
# ## 1. What a bigger batch costs
#
# Notebook 01 showed that more in-batch negatives help. They are not free: the encoder runs on every query and
# document in the batch, and backpropagation keeps every layer's activations until the backward pass. Below,
# one training step of the in-batch loss at three batch sizes: the best of a few timings, and the bytes the
# forward pass saves for backward (`course_lib.train.measure_step`, which counts each saved tensor's storage
# once). On a GPU this is what runs out first. (`CBNSStep` is the training step this notebook builds up to; with
# `memory_size=0` it is the plain in-batch step of notebook 01.)

# %%
seed_everything(cfg.seed, cfg.num_threads)
probe_model = make_encoder(cfg, tokenizer)
cost = {}
for b in COST_BATCH_SIZES:
    plain = settings(batch_size=b, memory_size=0, momentum=None)
    batch = next(pair_batches(data, tokenizer, cbns_sampler(data, plain, torch.Generator().manual_seed(0)), cfg))
    cost[b] = measure_step(probe_model, CBNSStep(plain, TEMPERATURE, dim=probe_model.dim), batch, repeats=1)
    print(f"B = {b:>3}: {cost[b]['ms']:6.0f} ms per step, {cost[b]['saved_bytes'] / 2**20:6.1f} MB saved for backward")
fig = plot_curve(COST_BATCH_SIZES, {"MB saved for backward": [cost[b]["saved_bytes"] / 2**20 for b in COST_BATCH_SIZES]},
                 xlabel="batch size B", ylabel="MB", logx=True, title="Activation memory of one step")

# %%
ratio = cost[COST_BATCH_SIZES[-1]]["saved_bytes"] / cost[COST_BATCH_SIZES[0]]["saved_bytes"]
print(f"{COST_BATCH_SIZES[-1] // COST_BATCH_SIZES[0]}× the batch → {ratio:.1f}× the activation memory")
assert ratio > 0.5 * COST_BATCH_SIZES[-1] / COST_BATCH_SIZES[0], "activations grow about linearly with B"
memory_bytes = MEMORY_SIZE * probe_model.dim * 4
print(f"a memory of M = {MEMORY_SIZE} vectors of D = {probe_model.dim} floats: {memory_bytes / 1024:.0f} KB")

# %% [markdown]
# The activations grow a little faster than the batch, because a batch is padded to its longest text and a larger
# batch is more likely to hold a long one. A memory of M stored vectors costs M × D floats (printed above) and one
# extra (B × M) matrix product per step; the encoder still runs on B documents. That is the whole appeal.
#
# ## 2. The memory bank, written inline
#
# A FIFO of the most recent M document embeddings, with their ids (to spot accidental hits) and, optionally,
# their log sampling probability. The order of operations matters: score the current batch against the memory
# *as it was*, then enqueue the batch. Enqueue first, and every document of the batch would appear twice in
# its own row: once as the positive, once from memory (CBNS §3; MoCo dequeues and enqueues after the logits).
# pytorch-metric-learning's `CrossBatchMemory` enqueues first and removes the self-pairs instead; both are
# consistent, and `tests/test_cbns.py` checks that our loss equals theirs where the two coincide.

# %%
class TinyMemory:
    """A FIFO of (vector, id) rows in a deque: the newest on the right, the oldest dropped first."""

    def __init__(self, size):
        self.rows = collections.deque(maxlen=size)  # a deque of maxlen 0 stays empty: "no memory"

    def enqueue(self, vectors, ids):
        for v, i in zip(vectors.detach(), ids):  # detached: no gradient ever flows into the memory
            self.rows.append((v.clone(), i))

    def tensors(self):
        if not self.rows:
            return torch.empty(0, 0), []
        return torch.stack([v for v, _ in self.rows]), [i for _, i in self.rows]  # oldest → newest


# %% [markdown]
# **Checker.** Feed the same batches (of uneven sizes, so the ring wraps at odd places) to the inline memory and
# to `course_lib.memory.MemoryBank`, a preallocated ring buffer with a write pointer: same vectors, same ids,
# same order. Both keep the newest M rows, so the oldest batch in the memory may be only partly there (the ages
# printed below: the age of a row is how many enqueues ago it was written).

# %%
mine, bank = TinyMemory(MEMORY_SIZE), MemoryBank(MEMORY_SIZE, 4)
g = torch.Generator().manual_seed(1)
for step in range(1, 12):
    n = 1 + step % BATCH_SIZE
    vectors, ids = torch.randn(n, 4, generator=g), [f"doc{step}-{j}" for j in range(n)]
    mine.enqueue(vectors, ids)
    bank.enqueue(vectors, ids)
    stored, stored_ids, _ = bank.tensors()
    assert stored_ids == mine.tensors()[1] and torch.equal(stored, mine.tensors()[0])
print(f"after {bank.step} enqueues: {len(bank)} of {bank.size} slots filled, ages {bank.ages().tolist()}")
print("inline FIFO == course_lib.memory.MemoryBank at every step")

# %% [markdown]
# ## 3. The loss: the batch's columns, then the memory's
#
# Row i scores query i against the B positives and the M stored documents: logits
# ℓ_ij = s(q_i, c_j)/τ − log q(c_j), with q(c_j) the probability that candidate j's document is sampled (do not
# confuse it with the query embedding q_i). The subtracted log q is Yi et al.'s correction (§3), here applied
# after the temperature as TensorFlow Recommenders does: a document that
# the sampler serves often would otherwise be pushed away from every query just for being frequent. It applies
# to every column, the positive's too, and a constant shift of a row changes nothing (uniform q is a no-op).
# A memory entry that *is* row i's positive (the same document, seen again) is an accidental hit and is
# masked with −∞, exactly as deleting it would be.

# %%
def my_cbns_loss(q, d, memory, tau, logq, memory_logq, doc_ids, memory_ids):
    q, columns = F.normalize(q, dim=-1), F.normalize(torch.cat([d, memory]), dim=-1)  # (B, D), (B+M, D)
    logits = q @ columns.T / tau - torch.cat([logq, memory_logq])[None, :]  # (B, B+M), corrected columns
    column_ids = list(doc_ids) + list(memory_ids)
    for i, own in enumerate(doc_ids):
        for j, other in enumerate(column_ids):
            if j != i and other == own:
                logits[i, j] = float("-inf")  # an accidental hit: the positive again, under another column
    return F.cross_entropy(logits, torch.arange(q.shape[0]))


# %% [markdown]
# **Checker.** A real batch, a memory of M rows filled by the batches before it (an untrained encoder), made-up
# log probabilities, and one planted accidental hit: the inline loss equals `course_lib.losses.cbns_loss`; masking
# equals deleting; with no memory it is the in-batch loss of notebook 01; uniform q changes nothing.

# %%
seed_everything(cfg.seed, cfg.num_threads)
untrained = make_encoder(cfg, tokenizer).eval()
batches = pair_batches(data, tokenizer, cbns_sampler(data, settings(), torch.Generator().manual_seed(cfg.seed)), cfg)
show_bank = MemoryBank(MEMORY_SIZE, untrained.dim)
with torch.no_grad():
    for _ in range(math.ceil(MEMORY_SIZE / BATCH_SIZE)):
        old = next(batches)
        show_bank.enqueue(untrained(**old["d"]), old["doc_ids"])
    batch = next(batches)
    q, d = untrained(**batch["q"]), untrained(**batch["d"])  # (B, D) each
memory, memory_ids, _ = show_bank.tensors()  # (M, D)
memory_ids[3] = batch["doc_ids"][0]  # plant an accidental hit: memory entry 3 is row 0's positive
logq = -torch.rand(BATCH_SIZE, generator=g) * 5 - 3  # (B,) made-up log probabilities
memory_logq = -torch.rand(len(memory_ids), generator=g) * 5 - 3  # (M,)
args = dict(temperature=TEMPERATURE, logq=logq, memory_logq=memory_logq, doc_ids=batch["doc_ids"], memory_ids=memory_ids)
ours = my_cbns_loss(q, d, memory, TEMPERATURE, logq, memory_logq, batch["doc_ids"], memory_ids)
torch.testing.assert_close(ours, cbns_loss(q, d, memory, **args))
corrected = similarity_logits(q, d, memory, temperature=TEMPERATURE) - torch.cat([logq, memory_logq])[None, :]
rows = []
for i, own in enumerate(batch["doc_ids"]):  # delete, from each row, every other column holding its positive
    cols = [j for j, other in enumerate(batch["doc_ids"] + memory_ids) if j == i or other != own]
    rows.append(F.cross_entropy(corrected[i, cols][None], torch.tensor([cols.index(i)])))
torch.testing.assert_close(cbns_loss(q, d, memory, **args), torch.stack(rows).mean())
torch.testing.assert_close(cbns_loss(q, d, None, temperature=TEMPERATURE), in_batch_softmax_loss(q, d, temperature=TEMPERATURE))
flat = dict(args, logq=torch.full_like(logq, -4.0), memory_logq=torch.full_like(memory_logq, -4.0))
torch.testing.assert_close(cbns_loss(q, d, memory, **flat), cbns_loss(q, d, memory, temperature=TEMPERATURE,
                                                                       doc_ids=batch["doc_ids"], memory_ids=memory_ids))
print(f"inline == course_lib: {ours:.4f}; masked == deleted; no memory == in-batch; uniform q == no correction")

# %% [markdown]
# The B × (B + M) logits (untrained encoder, no correction): the B positives left of the line, the memory right
# of it, the planted hit blank in row 0. Untrained, the rows are nearly flat: the softmax (right) spreads its
# mass over many columns, and the loss is not far below ln(B + M), the loss of a uniform guess (printed).

# %%
logits = similarity_logits(q, d, memory, temperature=TEMPERATURE)  # (B, B+M)
logits[0, BATCH_SIZE + 3] = float("-inf")
fig = plot_similarity_matrix(logits, n_positive_cols=BATCH_SIZE, extra_columns="memory",
                             title=f"untrained encoder: B × (B + M) = {BATCH_SIZE} × {BATCH_SIZE + len(memory_ids)}")
print(f"loss {cbns_loss(q, d, memory, temperature=TEMPERATURE):.3f}   ln(B + M) = {math.log(BATCH_SIZE + len(memory_ids)):.3f}")

# %% [markdown]
# ## 4. How often is each document sampled? The streaming estimator
#
# The correction needs q(d), and in a real stream nobody hands it to you. Yi et al. (§4, Algorithm 2) estimate
# it on the fly: hash each id into one of H buckets; array A keeps the last step a bucket was seen, and a second
# array (B in the paper; G here, for gap, since B is our batch size) a moving average of the steps between
# sightings, G ← (1 − α)·G + α·(t − A); the estimate is 1/G, a per-step probability (α is the estimator's
# learning rate, not the sampler's skew of section 7). Algorithm 3 uses several hash tables and takes the
# largest gap, because a collision can only make a gap look shorter. Inline, one table, a plain Python loop:

# %%
def my_estimator(stream, buckets, alpha, initial_gap):
    """stream: [(step, ids)]; buckets: id → bucket. Returns the final gap B per bucket (a dict)."""
    last_seen, gap = collections.defaultdict(float), collections.defaultdict(lambda: initial_gap)
    for t, ids in stream:
        for b in {buckets[i] for i in ids}:  # a bucket hit twice in one step is updated once
            gap[b] = (1 - alpha) * gap[b] + alpha * (t - last_seen[b])
            last_seen[b] = t
    return gap


# %% [markdown]
# **Checker.** The same stream of batches (item ids drawn from a skewed distribution, with few buckets so that
# items collide) through the inline loop and `course_lib.memory.StreamingFrequencyEstimator` (vectorised over
# a batch) gives the same gap for every item; the library's 3-table estimate is never above the 1-table one.

# %%
sim = torch.Generator().manual_seed(2)
item_q = torch.arange(1, 201, dtype=torch.float64) ** -1.0  # a Zipf-like popularity over 200 items
item_q /= item_q.sum()
stream = [(t, torch.multinomial(item_q, 16, replacement=True, generator=sim).tolist()) for t in range(1, 301)]
one, three = (StreamingFrequencyEstimator(64, alpha=0.05, num_hashes=h, seed=0) for h in (1, 3))
for t, ids in stream:
    one.update(ids, t)
    three.update(ids, t)
items = list(range(200))
gaps = my_estimator(stream, dict(zip(items, one.buckets(items)[0].tolist())), alpha=0.05, initial_gap=one.initial_gap)
torch.testing.assert_close(one.gap(items), torch.tensor([gaps[b] for b in one.buckets(items)[0].tolist()], dtype=torch.float64))
assert (three.prob(items) <= one.prob(items) + 1e-12).all()
print("inline Algorithm 2 == course_lib; 3 hash tables never estimate higher than 1")

# %% [markdown]
# Yi et al.'s simulation (§6): N = 1,000 items, batches of 128, H = 5,000 buckets, α = 0.01, items drawn with
# q ∝ (i + 1)², and halfway the distribution flips to q ∝ (N − i)². The truth to track is the probability that an
# item appears in a batch, 1 − (1 − q)^128. (Steps: 8,000, where the paper ran 20,000.)

# %%
N_ITEMS, SIM_STEPS, SWITCH = 1000, 8_000, 4_000
ranks = torch.arange(N_ITEMS, dtype=torch.float64)
q_before, q_after = (ranks + 1) ** 2, (N_ITEMS - ranks) ** 2
q_before, q_after = q_before / q_before.sum(), q_after / q_after.sum()
estimator = StreamingFrequencyEstimator(5000, alpha=0.01, num_hashes=1, seed=0)
snap_steps, true_p, est_p = [], [], []
for t in range(1, SIM_STEPS + 1):
    q_now = q_before if t <= SWITCH else q_after
    estimator.update(torch.multinomial(q_now, 128, replacement=True, generator=sim), t)
    if t % 100 == 0:
        snap_steps.append(t)
        true_p.append((1 - (1 - q_now) ** 128).numpy())
        est_p.append(estimator.prob(ranks.long()).numpy())
true_p, est_p = np.array(true_p), np.array(est_p)
fig = plot_frequency_tracking(snap_steps, true_p, est_p, {"item 999": 999, "item 700": 700, "item 300": 300, "item 0": 0},
                              switch_step=SWITCH)
err = np.abs(est_p - true_p).mean(axis=1)
at = {s: err[snap_steps.index(s)] for s in (SWITCH, SWITCH + 100, SIM_STEPS)}
print(f"mean |error| just before the switch {at[SWITCH]:.3f}, 100 steps after it {at[SWITCH + 100]:.3f}, "
      f"at the end {at[SIM_STEPS]:.3f}")
assert at[SWITCH + 100] > at[SWITCH] and at[SIM_STEPS] < at[SWITCH + 100], "the error rises at the switch and falls again"

# %% [markdown]
# The estimate lags: a gap is only measured when an item shows up, so an item that became rare keeps a too-high
# estimate until it is seen again, and an item that became popular needs hundreds of sightings for the moving
# average to come down (the bias shrinks as (1 − α)ⁿ after n sightings, 0.99ⁿ here: the curves take a few
# thousand steps). A larger α adapts faster and is noisier. One hash table of 5,000 buckets for 1,000 items
# also means collisions: an item that shares a bucket with a popular one inherits its short gap, which is why
# item 999's estimate stays well above its truth after the switch (and a little above it before).
#
# ## 5. Training with a memory, as CBNS describes it
#
# First CBNS as published: the documents of each batch are encoded by the weights being trained, stored, and
# scored as negatives by the next batches; `WARMUP_STEPS` of plain in-batch training first. We compare it with
# the same small batch without a memory (`memory_size=0`, `STEPS` steps), and let the memory run go on to
# `LONG_STEPS`. Several times during that run it measures drift: each memory entry re-encoded by today's weights,
# its cosine with the stored vector, against its age. A third run is a control: the same memory, but re-encoded
# by today's weights before it is scored (`refresh_memory=True`: the same documents as negatives, none of them
# stale, at the price of encoding M more documents per step), for as many steps.

# %%
runs, drift = {}, {}
seed_everything(cfg.seed, cfg.num_threads)
before = test_metrics(make_encoder(cfg, tokenizer))
seed_everything(cfg.seed, cfg.num_threads)
model, history, probe = train_cbns(cfg, data, tokenizer, settings(memory_size=0, momentum=None), steps=STEPS, progress=False)
runs["small batch"] = {"metrics": test_metrics(model), "history": history, "model": model}
seed_everything(cfg.seed, cfg.num_threads)
model, history, probe = train_cbns(cfg, data, tokenizer, settings(momentum=None), steps=LONG_STEPS,
                                   drift_every=max(1, LONG_STEPS // 4), progress=False)
late = test_metrics(model)
drift["small + memory (live documents)"] = probe.drift
seed_everything(cfg.seed, cfg.num_threads)
model, history, probe = train_cbns(cfg, data, tokenizer, settings(momentum=None, refresh_memory=True), steps=LONG_STEPS,
                                   drift_every=max(1, LONG_STEPS // 4), progress=False)
refreshed = test_metrics(model)
drift["control: memory re-encoded each step"] = probe.drift
small = runs["small batch"]["metrics"]
print(f"small batch, {STEPS} steps:          R@10 {small['recall@10']:.3f}  MRR@10 {small['mrr@10']:.3f}")
print(f"small + memory (live), {LONG_STEPS} steps: R@10 {late['recall@10']:.3f}  MRR@10 {late['mrr@10']:.3f}")
print(f"control (memory re-encoded), {LONG_STEPS} steps: R@10 {refreshed['recall@10']:.3f}  MRR@10 {refreshed['mrr@10']:.3f}")
print(f"untrained:                           R@10 {before['recall@10']:.3f}  MRR@10 {before['mrr@10']:.3f}")
stale_collapsed = late["recall@10"] < 0.5 * refreshed["recall@10"]
print("scoring stored vectors", "collapsed" if stale_collapsed else "did not collapse",
      "the run, relative to the control that re-encodes them")

# %%
for name in drift:
    print(name)
    for r in drift[name]:
        print(f"  step {r.step:>3}: cosine of stored and re-encoded, by age: " + "  ".join(f"{c:+.2f}" for c in r.cosine))
fig = plot_drift(drift)

# %% [markdown]
# Read each line from left to right: a fresh entry (age 0) matches its re-encoding, older ones less. CBNS's
# argument (§3) is that after warm-up this drift is small, so stale vectors are good enough negatives. The
# benchmark measured the live-documents run at its own scale, three seeds each (FAST, B = 16, M = 112, 300
# steps):

# %%
fast_results = stored_results("fast")
for name in ("in_batch_small", "cbns_live"):
    m = fast_results[name]
    print(f"{name:>15}: R@10 {mean_sd(m, 'recall@10')}  MRR@10 {mean_sd(m, 'mrr@10')}   (commit {m['commit']}, {m['date']})")
collapsed = fast_results["cbns_live"]["recall@10"] < 0.5 * fast_results["in_batch_small"]["recall@10"]
print("with live documents the memory", "collapsed retrieval" if collapsed else "did not collapse retrieval")

# %% [markdown]
# What the numbers above say, when the verdict line reads "collapsed": the control, which scores the same
# documents but re-encoded by today's weights, keeps learning, while the run that scores stored vectors ends
# near the untrained encoder. Then it is the staleness that breaks training, not having more negatives. The
# drift lines of the stale run dip below 1 in mid-run and can come back near 1 once it has collapsed (a
# collapsed encoder barely changes). Our reading, which these runs support but do not prove: the memory rewards each query
# for moving away from *where documents used to be*, and with one encoder shared by queries and documents,
# moving every embedding along the last updates does that for all stored vectors at once while each query stays
# next to its fresh positive. CBNS's two towers, with item embeddings that change slowly, give less room for
# this. (NVIDIA-Merlin/models PR #558 removed Merlin's queue-based sampler as "not performant" and advised
# larger batches instead; it does not say why.)
#
# ## 6. Slow documents: a momentum encoder
#
# MoCo's fix (He et al., 2020, §3.2) gives the memory what CBNS assumes: encode the documents with a *copy* of
# the encoder whose weights follow the trained ones slowly, θ_k ← m·θ_k + (1 − m)·θ after every step. The
# positives of the batch and the vectors in the memory then come from nearly the same weights, and moving the
# query encoder cannot outrun the memory. The documents get no gradient; the query encoder learns, and is what
# we evaluate. Below: the memory with slow documents, next to the small batch of section 5 and the large batch,
# B + M, with live documents, the reference the memory is meant to approach. (The slow copy changes the small
# batch too; the benchmark's `in_batch_small_momentum`, in section 8, is the same small batch with slow
# documents and no memory.) A slow-documents step is also cheaper: nothing is backpropagated through the
# documents (the milliseconds printed below).

# %%
for name, s in [("small + memory, slow documents", settings()),
                (f"large batch B = {BATCH_SIZE + MEMORY_SIZE}", settings(batch_size=BATCH_SIZE + MEMORY_SIZE, memory_size=0,
                                                                        momentum=None))]:
    seed_everything(cfg.seed, cfg.num_threads)
    model, history, probe = train_cbns(cfg, data, tokenizer, s, steps=STEPS, drift_every=max(1, STEPS // 6), progress=False)
    runs[name] = {"metrics": test_metrics(model), "history": history, "probe": probe, "model": model}
    if probe.drift:
        drift[name] = probe.drift
for name, r in runs.items():
    m, h = r["metrics"], r["history"]
    print(f"{name:>32}: R@10 {m['recall@10']:.3f}  MRR@10 {m['mrr@10']:.3f}  (step {STEPS}; "
          f"{1000 * h.train_seconds / h.steps:.0f} ms per step)")
fig = plot_drift({k: drift[k] for k in ("small + memory (live documents)", "small + memory, slow documents")})

# %%
slow = drift["small + memory, slow documents"]
oldest_live = [r.cosine[-1] for r in drift["small + memory (live documents)"]]
print(f"slow documents: the oldest entry's cosine stays ≥ {min(r.cosine[-1] for r in slow):.3f}; live documents: "
      f"it fell to {min(oldest_live):+.3f}")
warm = runs["small + memory, slow documents"]["history"].losses
print(f"slow documents + memory, mean loss: steps {WARMUP_STEPS - 4}–{WARMUP_STEPS} {np.mean(warm[WARMUP_STEPS - 5:WARMUP_STEPS]):.2f}, "
      f"steps {WARMUP_STEPS + 1}–{WARMUP_STEPS + 5} {np.mean(warm[WARMUP_STEPS:WARMUP_STEPS + 5]):.2f}, "
      f"last 5 steps {np.mean(warm[-5:]):.2f}")
assert min(r.cosine[-1] for r in slow) > 0.9, "a momentum encoder keeps the stored vectors close to today's"
assert runs["small batch"]["metrics"]["mrr@10"] > before["mrr@10"], "the plain small batch learns"
loss_fig = plot_loss_curve(warm, label=f"small + memory, slow documents (memory from step {WARMUP_STEPS + 1})",
                           reference=math.log(BATCH_SIZE + MEMORY_SIZE), reference_label="ln(B + M): uniform guessing")

# %% [markdown]
# The slow copy changes little from step to step by design, so its stored vectors match its re-encodings almost
# exactly (the drift plot's right panel); that is what MoCo's momentum buys. The loss rises when the memory
# switches on after the warm-up (more candidates per row; the printed means before and after) and goes on
# falling from there; the dashed line is ln(B + M). Recall curves of the runs so far, next to the untrained
# encoder:

# %%
fig = plot_recall_at_k({"untrained": before} | {k: r["metrics"] for k, r in runs.items()}
                       | {f"memory, live documents ({LONG_STEPS} steps)": late,
                          f"control: re-encoded memory ({LONG_STEPS} steps)": refreshed},
                       title=f"Test split ({cfg.preset}), {STEPS} steps unless stated")

# %% [markdown]
# How to read these numbers: each run is one seed and, in FAST mode, only a few dozen steps, so differences of a
# few points are noise (section 8 gives the benchmark's spread over three seeds). The drift plots are the robust
# part: slow documents keep the stored vectors where today's weights would put them (asserted above). At equal
# steps the large batch also *sees* (B + M)/B times as many training pairs, which a memory cannot give;
# notebook 01's exercise 4 separates those two effects for the batch size.
#
# The trained model with the memory, on B held-out test queries and their documents: below, the B × (B + M)
# logits, the positives left of the line and the memory the run ended with right of it (written by the slow
# copy; the queries and their positives are encoded by the trained query encoder, as at evaluation).

# %%
trained = runs["small + memory, slow documents"]
model, step_probe = trained["model"].eval(), trained["probe"]
stored, stored_ids, _ = step_probe.memory.tensors()
_, test_texts, test_relevant = data.split_items("test")
with torch.no_grad():
    q_t = model(**tokenize(tokenizer, test_texts[:BATCH_SIZE], cfg.max_query_len))  # (B, D)
    d_t = model(**tokenize(tokenizer, [data.corpus[min(r)] for r in test_relevant[:BATCH_SIZE]], cfg.max_doc_len))

# %% [markdown]
# **Memory size.** How much probability does the memory take from the positives as M grows? The widget starts
# at the whole memory; move the slider: the same trained queries and positives, scored against the first M
# stored vectors (nothing retrains).

# %%
with torch.no_grad():
    share = {m_size: torch.softmax(similarity_logits(q_t, d_t, stored[:m_size] if m_size else None,
                                                     temperature=TEMPERATURE), 1).diagonal().mean().item()
             for m_size in (0, len(stored_ids))}
print(f"mean p(positive): {share[0]:.3f} against the batch alone, {share[len(stored_ids)]:.3f} with all "
      f"{len(stored_ids)} stored vectors")
assert share[len(stored_ids)] <= share[0] + 1e-6, "extra candidates can only take probability from the positive"
memory_explorer = explore_memory_size(q_t, d_t, stored, temperature=TEMPERATURE)

# %% [markdown]
# ## 7. logQ under a popularity-skewed sampler
#
# In a recommender, training pairs arrive with the items' popularity: a hit song is in many batches, so it is
# a negative for many queries and gets pushed away from all of them. Our WordNet pairs are drawn uniformly, so
# we make the skew on purpose: `PopularitySampler` draws pairs with replacement, with probability
# ∝ (sense count + 1)^α, α = `POPULARITY_ALPHA`, where the sense count is how often WordNet's sense-tagged corpus
# uses the sense (`data.popularity`, notebook 00). A batch can then hold one document twice; the second copy is
# masked as an accidental hit. How skewed is that?

# %%
skewed = settings(popularity_alpha=POPULARITY_ALPHA)
sampler = cbns_sampler(data, skewed, torch.Generator().manual_seed(cfg.seed))
counts = collections.Counter(data.train[i].positive for _, idx in zip(range(200), sampler) for i in idx)
top = counts.most_common(5)
print(f"200 batches of {BATCH_SIZE}: {len(counts)} distinct positives; the 5 most frequent fill "
      f"{sum(c for _, c in top) / (200 * BATCH_SIZE):.0%} of the slots")
for doc, c in top[:3]:
    print(f"  {c:>4}×  {data.documents[doc][:80]}")

# %% [markdown]
# The correction needs each document's q, and the streaming estimator of section 4 learns it from the ids alone,
# no model needed. Feed it the ids of this sampler's batches (the settings that training with `logq="estimator"`
# uses) and compare with the truth, the chance that a batch of B holds the document, 1 − (1 − q)^B:

# %%
est = StreamingFrequencyEstimator(skewed.estimator_buckets, alpha=skewed.estimator_alpha,
                                  num_hashes=skewed.estimator_hashes, initial_gap=skewed.estimator_initial_gap)
top_ids = [doc for doc, _ in top]
truth = np.array([1 - (1 - sampler.doc_probability(doc)) ** BATCH_SIZE for doc in top_ids])
stream = cbns_sampler(data, skewed, torch.Generator().manual_seed(cfg.seed + 1))
ratios = {}
for step, idx in zip(range(1, 301), stream):
    est.update([data.train[i].positive for i in idx], step)
    if step in (STEPS, 300):
        ratios[step] = est.prob(top_ids).numpy() / truth
for doc, p_true, p_est in zip(top_ids, truth, est.prob(top_ids).tolist()):
    print(f"  true {p_true:.3f}   estimated after 300 steps {p_est:.3f}   {data.documents[doc][:50]}")
print("median estimate / truth on these five: " + ", ".join(f"after {s} steps {np.median(r):.2f}" for s, r in ratios.items()))

# %% [markdown]
# With α = 0.1 and an initial gap of 100 steps, a document must be seen a few dozen times before its estimate
# nears the truth (the medians printed above): in a short run the correction is mostly the estimator's start-up.
#
# Training under this sampler, with the memory and slow documents, with and without the correction from the
# estimator: the benchmark's runs (B = 16, M = 112, 300 steps, three seeds; the curves are the means over
# seeds). In a simulation like ours the sampler's true q is also known (`logq="sampler"`).

# %%
fast_results = stored_results("fast")
for name in ("cbns", "cbns_skewed", "cbns_logq"):
    m = fast_results[name]
    print(f"{name:>12}: R@10 {mean_sd(m, 'recall@10')}  MRR@10 {mean_sd(m, 'mrr@10')}  (sampler α = {m['popularity_alpha']}, "
          f"logQ {m['logq']})")
fig = plot_recall_at_k({name: fast_results[name] for name in ("cbns", "cbns_skewed", "cbns_logq")},
                       title="Benchmark (FAST, 3 seeds): uniform vs skewed batches, logQ off and on")

# %% [markdown]
# Yi et al. evaluate on held-out *engagements*, which follow the same popularity, and the correction helped
# there (Wikipedia Recall@10 0.0643 with a plain softmax at τ = 0.07, 0.0987 corrected at τ = 0.05, §6). Our
# test queries are one per example sentence of held-out senses, not drawn by popularity: what the skew costs,
# and whether the correction wins any of it back, is read off the numbers above and, with the spread over seeds,
# in section 8.
#
# ## 8. At full scale
#
# The benchmark runs the same configurations at B = 16, M = 112 (large batch 128), 300 steps (FAST) and 800
# steps (full), as named in `course_lib/cbns.py` (`BENCHMARK_SETTINGS`), several seeds each where it says so
# (mean ± standard deviation over seeds). The numbers below are read from the repository's
# `results/*/results.json`, with the command, the number of seeds, the commit and the date that produced them.
# The milliseconds and megabytes are one step's cost (best of three; other jobs shared the 2 cores during the
# FAST run, so its times are upper bounds).

# %%
names = ["in_batch_small", "cbns_live", "in_batch_small_momentum", "cbns", "in_batch_large", "cbns_skewed", "cbns_logq"]
for preset in ("fast", "full"):
    stored = stored_results(preset)
    missing = [n for n in names if n not in stored]
    assert not missing, f"results/{preset}/results.json lacks {missing}: run the benchmark command printed below"
    print(f"\n{preset}: python -m course_lib.benchmark --preset {preset} --out results/{preset} --methods NAME … "
          "--seeds N --merge")
    for n in names:
        m = stored[n]
        print(f"  {n:>24}: R@10 {mean_sd(m, 'recall@10'):>15}  MRR@10 {mean_sd(m, 'mrr@10'):>15}  "
              f"({m['ms_per_step']:.0f} ms, {m['saved_activation_mb']:.1f} MB per step; {len(m.get('seeds', [0]))} "
              f"seed(s), commit {m['commit']}, {m['date']})")
    r10 = {k: stored[k]["recall@10"] for k in names}
    for base in ("in_batch_small", "in_batch_small_momentum"):
        share = (r10["cbns"] - r10[base]) / (r10["in_batch_large"] - r10[base])
        print(f"  share of the {base} → in_batch_large gap (R@10) closed by cbns: {share:+.0%}")
    for a, b in (("cbns", "in_batch_small_momentum"), ("cbns", "in_batch_small"), ("cbns_logq", "cbns_skewed")):
        gap, verdict = ordering(stored[a], stored[b])
        print(f"  {a} vs {b}: R@10 {gap:+.3f}, {verdict}")

# %% [markdown]
# How to read the table: "within noise" means the gap is not larger than the standard deviation over seeds, and
# then no ordering is claimed. The memory is judged twice: against the small batch it was built from
# (`in_batch_small_momentum`, the same slow documents without a memory) and against the plain small batch
# (`in_batch_small`, live documents, no memory). The milliseconds and megabytes differ between the slow- and
# live-document rows mostly because nothing is backpropagated through slow documents, and between rows of one
# kind partly because each measured step's batch is padded to its own longest text.
#
# ## Summary
#
# - A bigger batch buys more negatives at a cost that grows with B: time and the activations kept for backward.
#   A memory of detached document vectors adds M negatives for a matrix product, not an encoder pass.
# - Score the memory *before* enqueuing the batch (CBNS, MoCo), or enqueue first and drop the self-pairs
#   (pytorch-metric-learning); never both in and out of the memory at once. Mask accidental hits.
# - logQ subtracts each candidate's log sampling probability from its logit, every column included; uniform q
#   is a no-op. Yi et al.'s estimator learns q from the stream with two arrays and a hash.
# - Stale vectors are only as good as the encoder is slow: with a shared encoder trained from scratch, scoring
#   stored vectors collapsed training where scoring the same documents re-encoded did not; documents from a
#   momentum encoder keep the memory usable.
# - The momentum encoder has its own price (section 8 compares the small batch with and without it), so judge a
#   memory against the run it extends and against the plain small batch, and a large batch at equal steps also
#   sees more training pairs. Section 8 states each comparison with its spread over seeds.
#
# ## Exercises
#
# 1. **Enqueue first.** Write `step_enqueue_first(q, d, ids, bank)` that enqueues the batch and only then
#    scores it with `cbns_loss(q, d, memory, doc_ids=ids, memory_ids=memory_ids)`. On `q, d` of section 3, compare
#    it with the right order (score, then enqueue), each with its own fresh `MemoryBank(2 * BATCH_SIZE, q.shape[1])`.
#    Check: `assert wrong > right`. Each row's own positive is masked as an accidental hit, so why is the
#    loss still higher?
# 2. **Ages.** After `t` enqueues of batches of size `b` into `MemoryBank(m, dim)`, what is the oldest age?
#    Write `max_age(m, b, t)` and check it against banks filled with t batches of b zero vectors, for several
#    sizes: `assert all(filled(m, b, t).ages().max().item() == max_age(m, b, t) for m, b, t in [(24, 8, 10),
#    (20, 8, 10), (24, 8, 2), (7, 3, 9), (5, 5, 1)])`, with `filled` your helper.
# 3. **The estimator's bias.** For an item seen every k = 4 steps, Yi et al.'s gap after its n-th sighting is
#    B_n = k + (B₀ − k)(1 − α)ⁿ (B₀ = `initial_gap` = 100). Feed the id 0 every 4 steps into
#    `StreamingFrequencyEstimator(16, alpha=0.1)` at steps 4, 8, …, 80 (n = 20 sightings). Check:
#    `assert abs(est.gap([0]).item() - (4 + 96 * 0.9 ** 20)) < 1e-9`. How many sightings until p̂ is within
#    10 % of 1/4?
# 4. **What a memory costs.** With `measure_step`, compare one step at B = 16 on *the same batch* without a memory
#    and with a full memory of M = 240 (`settings(batch_size=16, memory_size=240, warmup_steps=0, momentum=None)`;
#    fill it by calling the step under `torch.no_grad()` on other batches until it is full). Check:
#    `assert len(step.probe.memory) == 240 and cost_memory["saved_bytes"] < 1.1 * cost_plain["saved_bytes"]`,
#    while section 1's B = 256 step saved many times more.
