"""CBNS training: in-batch negatives plus a memory of recent batches, with optional logQ correction.

Cross-batch negative sampling (Wang et al., SIGIR 2021, arXiv:2110.15154, §3): a small batch scores its
queries against its own B positives *and* the M document embeddings that recent batches left in a FIFO
memory (``course_lib.memory.MemoryBank``), so each query meets B − 1 + M negatives while the encoder only
runs on B documents. The stored vectors were computed by older weights; CBNS argues (§3, "embedding
stability") that after a warm-up of plain in-batch steps the encoder changes slowly enough for them to stay
useful, and ``drift_every`` measures exactly that. At our scale, with one encoder shared by queries and
documents, it does not hold: scoring stored vectors collapses training (notebook 04), and ``momentum`` encodes
the documents with MoCo's slowly updated copy instead. Popular documents are drawn more often,
so they are negatives more often; the sampling-bias correction of Yi et al. (RecSys 2019, §3) subtracts each
candidate's log sampling probability, here from the streaming estimator of their §4
(``course_lib.memory.StreamingFrequencyEstimator``) or from the sampler's true probabilities.

``CBNSSettings`` holds the method's own knobs; ``BENCHMARK_SETTINGS`` the seven configurations that the
benchmark compares (notebook 04): a small batch with and without slow documents, a memory with live and with
slow documents, the memory under a popularity-skewed sampler with and without logQ, and a large batch whose
in-batch candidates equal the small batch's plus the memory.
"""

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from course_lib.in_batch import _to, pair_batches
from course_lib.losses import cbns_loss
from course_lib.memory import MemoryBank, StreamingFrequencyEstimator
from course_lib.models import make_encoder, tokenize
from course_lib.samplers import NoDuplicateBatchSampler, PopularitySampler
from course_lib.train import History, train
from course_lib.utils import get_device

LOGQ_SOURCES = (None, "estimator", "sampler")


@dataclass(frozen=True)
class CBNSSettings:
    """One CBNS configuration. ``memory_size=0`` is plain in-batch training with the same sampler.

    - ``batch_size``: pairs per step (B); the encoder runs on B queries and B documents.
    - ``memory_size``: M stored document embeddings scored as extra negatives after the warm-up.
    - ``warmup_steps``: plain in-batch steps before the memory is scored (it is filled all along). CBNS warms
      up for 4·10⁴ of its iterations; here a sixth of the FAST budget.
    - ``logq``: None, ``"estimator"`` (Yi et al.'s streaming estimate, learned from the batches seen so far)
      or ``"sampler"`` (the popularity sampler's true probability, known only in a simulation like ours).
    - ``popularity_alpha``: batches drawn with probability ∝ (sense count + 1)^α
      (``course_lib.samplers.PopularitySampler``), so popular documents really are over-represented as negatives;
      None draws uniform batches without duplicates instead.
    - ``estimator_*``: the estimator's hash buckets, tables and learning rate α (Yi et al. §4; α = 0.1
      rather than their 0.01, because our runs last hundreds of steps, not millions).
    - ``lr``: AdamW's learning rate for every configuration (B = 16 learns best near 5e-4 in FAST probes, where the
      preset's 2e-3 was chosen for B = 64).
    - ``momentum``: None encodes the batch's documents with the encoder being trained (CBNS as published, two
      towers in a recommender); a float m encodes them with a slow copy whose weights follow the trained ones
      as θ_k ← m·θ_k + (1 − m)·θ (MoCo, He et al., 2020, arXiv:1911.05722, §3.2; Contriever for text), so the
      documents in the batch and those in the memory come from nearly the same weights. Documents then get no
      gradient; the queries' encoder learns, and is what evaluation uses.
    - ``refresh_memory``: re-encode the memory's documents with today's weights before scoring them (no
      staleness at all, at the cost of encoding M more documents per step): a diagnostic, not CBNS.
    """

    batch_size: int = 16
    memory_size: int = 112
    warmup_steps: int = 50
    logq: str | None = None
    popularity_alpha: float | None = None
    estimator_buckets: int = 1 << 16
    estimator_hashes: int = 2
    estimator_alpha: float = 0.1
    estimator_initial_gap: float = 100.0
    lr: float = 5e-4
    momentum: float | None = 0.99
    refresh_memory: bool = False

    def __post_init__(self):
        for name in ("batch_size", "warmup_steps", "memory_size", "estimator_buckets", "estimator_hashes"):
            value = getattr(self, name)
            low = 1 if name in ("batch_size", "estimator_buckets", "estimator_hashes") else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"CBNSSettings.{name} must be an int >= {low}, got {value!r}")
        if self.logq not in LOGQ_SOURCES:
            raise ValueError(f"CBNSSettings.logq must be one of {LOGQ_SOURCES}, got {self.logq!r}")
        if self.momentum is not None and not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"CBNSSettings.momentum must be None or in [0, 1), got {self.momentum!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"CBNSSettings.lr must be a positive number, got {self.lr!r}")
        if self.logq == "sampler" and self.popularity_alpha is None:
            raise ValueError("logq='sampler' needs the popularity sampler (popularity_alpha set): the uniform "
                             "no-duplicate sampler has no per-document probability to correct for")

    def describe(self) -> dict:
        """The settings as plain numbers, for results.json."""
        return {"batch_size": self.batch_size, "memory_size": self.memory_size, "warmup_steps": self.warmup_steps,
                "logq": self.logq, "popularity_alpha": self.popularity_alpha, "lr": self.lr, "momentum": self.momentum,
                "negatives_per_query": self.batch_size - 1 + self.memory_size}


# the benchmark's configurations (README, notebook 04). in_batch_large's B equals the small batch's B + M, so
# "small + memory" and "large" score the same number of candidates per query. cbns_live is CBNS as published
# (documents encoded by the weights being trained); at our scale it collapses, and cbns adds MoCo's slow copy.
BENCHMARK_SETTINGS = {
    "in_batch_small": CBNSSettings(memory_size=0, momentum=None),
    "in_batch_small_momentum": CBNSSettings(memory_size=0),
    "cbns_live": CBNSSettings(momentum=None),
    "cbns": CBNSSettings(),
    "in_batch_large": CBNSSettings(batch_size=128, memory_size=0, momentum=None),
    "cbns_skewed": CBNSSettings(popularity_alpha=1.0),
    "cbns_logq": CBNSSettings(popularity_alpha=1.0, logq="estimator"),
}


@dataclass
class DriftRecord:
    """Embedding drift at one training step: for each age a (in steps) of the memory's entries, the mean
    cosine between a stored vector and the same document re-encoded by the current weights (CBNS §3.2)."""

    step: int
    ages: list[int]
    cosine: list[float]


@dataclass
class CBNSProbe:
    """What a CBNS run leaves besides the model and its loss history: the memory, the estimator, the drift
    records, and how many memory columns were masked as accidental hits per step."""

    memory: MemoryBank
    estimator: StreamingFrequencyEstimator | None
    drift: list[DriftRecord] = field(default_factory=list)
    memory_hits: list[int] = field(default_factory=list)


class CBNSStep:
    """A ``step_fn`` for ``course_lib.train.train`` (the method written as one object, since it has state).

    Each call: encode the batch's queries and positives; update the frequency estimator with the batch's
    document ids and read their log q (logQ runs only); after the warm-up, score against the memory *as it
    was before this batch* (``MemoryBank`` docstring); then enqueue this batch's detached positives with their
    log q. ``document_tokens(ids)`` tokenizes documents by id, for the drift probe every ``drift_every`` steps.
    """

    def __init__(self, settings: CBNSSettings, temperature: float, *, dim: int, sampler=None, device="cpu",
                 drift_every: int | None = None, document_tokens=None, seed: int = 0):
        self.settings, self.temperature = settings, temperature
        self.sampler = sampler
        self.steps = 0
        estimator = None
        if settings.logq == "estimator":
            estimator = StreamingFrequencyEstimator(settings.estimator_buckets, alpha=settings.estimator_alpha,
                                                    num_hashes=settings.estimator_hashes,
                                                    initial_gap=settings.estimator_initial_gap, seed=seed)
        self.probe = CBNSProbe(MemoryBank(settings.memory_size, dim, device=device), estimator)
        if drift_every is not None and (not isinstance(drift_every, int) or drift_every < 1 or document_tokens is None):
            raise ValueError("drift_every must be a positive int, and document_tokens (ids → tokens) must be given")
        self.drift_every, self.document_tokens = drift_every, document_tokens
        self.key_encoder = None  # the slow copy that encodes documents when settings.momentum is set

    @torch.no_grad()
    def document_encoder(self, model):
        """The encoder of the batch's documents: ``model`` itself, or (momentum) its slow copy, first moved
        towards ``model``'s current weights: θ_k ← m·θ_k + (1 − m)·θ (MoCo's update after each optimizer step)."""
        m = self.settings.momentum
        if m is None:
            return model
        if self.key_encoder is None:
            self.key_encoder = copy.deepcopy(model).requires_grad_(False)
        else:
            for key, live in zip(self.key_encoder.parameters(), model.parameters()):
                key.mul_(m).add_(live.detach(), alpha=1.0 - m)
        self.key_encoder.train(model.training)
        return self.key_encoder

    def log_q(self, ids: list[str], device) -> torch.Tensor | None:
        """log q of each document id (B,), from the estimator (after this step's update) or the sampler."""
        if self.settings.logq == "estimator":
            self.probe.estimator.update(ids, self.steps)
            return self.probe.estimator.log_prob(ids).to(device=device, dtype=torch.float32)  # (B,)
        if self.settings.logq == "sampler":
            return torch.tensor([math.log(self.sampler.doc_probability(i)) for i in ids], device=device)  # (B,)
        return None

    @torch.no_grad()
    def measure_drift(self, model) -> DriftRecord:
        """Re-encode the memory's documents with the current weights and compare with what is stored."""
        stored, ids, _ = self.probe.memory.tensors()  # (M, D)
        ages = self.probe.memory.ages()  # (M,)
        encoder = model if self.key_encoder is None else self.key_encoder  # whichever wrote the memory
        was_training = encoder.training
        encoder.eval()
        fresh = encoder(**_to(self.document_tokens(ids), stored.device))  # (M, D)
        encoder.train(was_training)
        cos = F.cosine_similarity(stored, fresh, dim=-1)  # (M,)
        by_age = sorted(set(ages.tolist()))
        return DriftRecord(self.steps, by_age, [cos[ages == a].mean().item() for a in by_age])

    def __call__(self, model, batch) -> torch.Tensor:
        self.steps += 1
        device = next(model.parameters()).device
        memory = self.probe.memory
        if self.drift_every and self.steps % self.drift_every == 0 and len(memory) and self.steps > 1:
            self.probe.drift.append(self.measure_drift(model))
        q = model(**_to(batch["q"], device))  # (B, D)
        doc_encoder = self.document_encoder(model)  # one momentum update per step
        d = doc_encoder(**_to(batch["d"], device))  # (B, D), no graph when momentum is set
        ids = batch["doc_ids"]
        logq = self.log_q(ids, device)  # (B,) or None
        use_memory = self.steps > self.settings.warmup_steps and len(memory) > 0
        stored, stored_ids, stored_logq = memory.tensors() if use_memory else (None, None, None)  # (M, D)
        if use_memory and self.settings.refresh_memory:
            with torch.no_grad():
                stored = doc_encoder(**_to(self.document_tokens(stored_ids), device))  # (M, D), today's weights
        if use_memory:
            positives = set(ids)
            self.probe.memory_hits.append(sum(i in positives for i in stored_ids))
        loss = cbns_loss(q, d, stored, temperature=self.temperature, logq=logq, memory_logq=stored_logq,
                         doc_ids=ids, memory_ids=stored_ids)
        memory.enqueue(d.detach(), ids, logq.detach() if logq is not None else None)  # after scoring
        return loss


def cbns_sampler(data, settings: CBNSSettings, generator: torch.Generator):
    """The batch sampler of a configuration: popularity-skewed, or uniform without duplicates."""
    if settings.popularity_alpha is None:
        return NoDuplicateBatchSampler(data.train, settings.batch_size, generator)
    return PopularitySampler(data.train, data.popularity, settings.batch_size, generator, alpha=settings.popularity_alpha)


def train_cbns(
    cfg,
    data,
    tokenizer,
    settings: CBNSSettings = CBNSSettings(),
    *,
    model=None,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    eval_fn=None,
    eval_every: int | None = None,
    drift_every: int | None = None,
    progress: bool = True,
) -> tuple[torch.nn.Module, History, CBNSProbe]:
    """Train an encoder (a new one unless ``model`` is given) with CBNS on ``data.train``: the preset's
    temperature, step budget and wall-clock cap, and ``settings``' batch, memory, warm-up, sampler, logQ, learning
    rate and momentum. Returns the model (the queries' encoder), the loop's ``History`` and a ``CBNSProbe``."""
    device = get_device()
    model = (model or make_encoder(cfg, tokenizer)).to(device)
    generator = generator or torch.Generator().manual_seed(cfg.seed)
    sampler = cbns_sampler(data, settings, generator)

    def document_tokens(ids):
        return tokenize(tokenizer, [data.documents[i] for i in ids], cfg.max_doc_len)

    step = CBNSStep(settings, cfg.temperature, dim=model.dim, sampler=sampler, device=device,
                    drift_every=drift_every, document_tokens=document_tokens, seed=cfg.seed)
    label = f"B={settings.batch_size}" + (f" + memory {settings.memory_size}" if settings.memory_size else "")
    history = train(
        model,
        step,
        pair_batches(data, tokenizer, sampler, cfg, generator=generator),
        optimizer=torch.optim.AdamW(model.parameters(), lr=settings.lr),
        max_steps=steps or cfg.train_steps,
        time_budget_s=cfg.train_seconds,
        eval_fn=eval_fn,
        eval_every=eval_every,
        progress=progress,
        desc=label + (f", logQ ({settings.logq})" if settings.logq else ""),
    )
    return model, history, step.probe
