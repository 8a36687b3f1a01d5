"""SimBERT: one BERT that both retrieves and generates, trained through the UniLM sequence-to-sequence mask.

SimBERT (Su, 2020, ZhuiyiTechnology/simbert; blog kexue.fm/archives/7427) feeds every pair of similar
sentences (A, B) as two rows, ``[CLS] A [SEP] B [SEP]`` and ``[CLS] B [SEP] A [SEP]``, through one BERT under
the UniLM mask (Dong et al., 2019, §2.3; ``course_lib.masks.unilm_mask``) and adds two losses:

* **seq2seq**: predict each segment-B token from the previous position (B is generated from A);
* **similarity**: the [CLS] vector through a *linear* pooler, L2-normalised, against every other row of the
  batch, scale 30, its own row masked, the partner row (i XOR 1) as the target.

Segment-A rows never see segment B, so the [CLS] output of ``[CLS] A [SEP] B [SEP]`` equals that of
``[CLS] A [SEP]`` alone: the similarity loss rides on the seq2seq forward pass for free, and at inference a
sentence is encoded alone (Su, 2020, the SimBERT release, ZhuiyiTechnology/simbert).
"""

import copy
import math
from dataclasses import dataclass
from numbers import Real

import torch
import torch.nn.functional as F
from transformers import BertModel

from course_lib.data import TrainExample
from course_lib.masks import attention_bias, unilm_mask
from course_lib.models import LMHead, bert_config
from course_lib.samplers import NoDuplicateBatchSampler
from course_lib.train import History, train
from course_lib.utils import get_device

PAIR_KINDS = ("gloss", "example", "both")


@dataclass(frozen=True)
class SimPair:
    """Two texts that mean the same thing; ``group`` (the synset id) keeps duplicates out of a batch."""

    a: str
    b: str
    group: str


def make_pairs(data, kind: str = "gloss") -> list[SimPair]:
    """Similar-sentence pairs from the training split.

    ``"gloss"``: an example sentence and its sense's gloss ("the nascent chicks" ↔ "nascent: being born or
    beginning"), one per training example. ``"example"``: two example sentences of the same sense, chained
    (e0 ↔ e1, e1 ↔ e2, ...) for senses with several. ``"both"``: the two lists together.
    """
    if kind not in PAIR_KINDS:
        raise ValueError(f"kind must be one of {PAIR_KINDS}, got {kind!r}")
    pairs = []
    if kind in ("gloss", "both"):
        pairs += [SimPair(e.query, data.documents[e.positive], e.positive) for e in data.train]
    if kind in ("example", "both"):
        by_sense: dict[str, list[str]] = {}
        for e in data.train:
            by_sense.setdefault(e.positive, []).append(e.query)
        pairs += [SimPair(x, y, sid) for sid, texts in by_sense.items() for x, y in zip(texts, texts[1:])]
    if not pairs:
        raise ValueError(f"no {kind!r} pairs: data.train is empty or has no sense with two examples")
    return pairs


def held_out_pairs(data, split: str = "test", n: int | None = 100, seed: int = 0,
                   kind: str = "gloss") -> tuple[list[str], list[str]]:
    """``n`` held-out pairs of a split (``None``: all of them), a seeded sample in a seeded order (the first
    ``n`` of ``n=None``'s lists): the texts A to generate from and the references to score against.
    ``kind="gloss"``: an example sentence and its gold document; ``"example"``: an example and another example
    of the same sense (senses with two or more). Dev and test senses are never a training positive, so the
    model has seen neither their glosses nor their examples."""
    ids, texts, relevant = data.split_items(split)
    if kind == "gloss":
        items = [(texts[i], data.documents[min(relevant[i])]) for i in range(len(ids))]
    elif kind == "example":
        by_sense: dict[str, list[str]] = {}
        for i in range(len(ids)):
            by_sense.setdefault(min(relevant[i]), []).append(texts[i])
        items = [(a, b) for sid in sorted(by_sense) for a, b in zip(by_sense[sid], by_sense[sid][1:2])]
    else:
        raise ValueError(f"kind must be 'gloss' or 'example', got {kind!r}")
    if n is not None and not (isinstance(n, int) and 1 <= n <= len(items)):
        raise ValueError(f"n must be between 1 and the {len(items)} {kind} pairs of split {split!r}, got {n}")
    pick = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return [items[i][0] for i in pick], [items[i][1] for i in pick]


class SimBERT(torch.nn.Module):
    """The shared BERT, a linear pooler on [CLS] for similarity, and an LM head for generation.

    ``forward(input_ids, attention_mask)`` is the retrieval encoder (a sentence alone, segment 0, plain mask →
    L2-normalised pooled [CLS]), so ``course_lib.models.encode`` and ``course_lib.metrics.evaluate`` take a
    SimBERT like any other encoder. ``seq2seq_hidden`` runs pair rows under the UniLM mask.
    """

    def __init__(self, bert: BertModel):
        super().__init__()
        self.bert = bert
        hidden = bert.config.hidden_size
        self.pooler = torch.nn.Linear(hidden, hidden)  # linear, no tanh (RoFormer_pytorch #22)
        self.lm_head = LMHead(bert.get_input_embeddings(), bert.config.layer_norm_eps)

    @property
    def dim(self) -> int:
        return self.bert.config.hidden_size

    def sentence_vector(self, hidden: torch.Tensor) -> torch.Tensor:
        """Pooled, L2-normalised [CLS] vector (B, H) from last hidden states (B, L, H)."""
        return F.normalize(self.pooler(hidden[:, 0]), dim=-1)  # (B, H)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        return self.sentence_vector(hidden)  # (B, H)

    def seq2seq_hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last hidden states (B, L, H) of ``[CLS] A [SEP] B [SEP]`` rows under the UniLM mask."""
        bias = attention_bias(unilm_mask(token_type_ids, attention_mask), self.bert.dtype)  # (B, 1, L, L)
        return self.bert(
            input_ids=input_ids, attention_mask=bias, token_type_ids=token_type_ids, position_ids=position_ids
        ).last_hidden_state  # (B, L, H)


def make_simbert(cfg, tokenizer) -> SimBERT:
    """A randomly initialised SimBERT with the course encoder's size (``course_lib.models.bert_config``)."""
    return SimBERT(BertModel(bert_config(cfg, tokenizer), add_pooling_layer=False))


def simbert_from_pretrained(pretrained) -> SimBERT:
    """A SimBERT that starts from a *copy* of a pretrained BERT and its LM head, e.g. the MLM model of
    ``course_lib.retromae.pretrain(decoder=False)``; only the linear pooler is new. The reference starts from
    pretrained Chinese BERT weights (ZhuiyiTechnology/simbert): generation needs a language model to begin with."""
    model = SimBERT(copy.deepcopy(pretrained.bert))
    model.lm_head.load_state_dict(pretrained.lm_head.state_dict())  # its decoder weight is the copy's embeddings
    return model


# ---------------------------------------------------------------------------------------------------------
# Batches and losses


def pair_rows(tokenizer, pairs: list[SimPair], max_length: int) -> dict[str, torch.Tensor]:
    """Tokens (2n, L) for n pairs: row 2k is ``[CLS] A [SEP] B [SEP]``, row 2k+1 is ``[CLS] B [SEP] A [SEP]``
    (partners adjacent), with ``token_type_ids`` 0 on the first sentence and 1 on the second; each row is
    truncated to ``max_length`` tokens, the longer sentence first."""
    first = [t for p in pairs for t in (p.a, p.b)]
    second = [t for p in pairs for t in (p.b, p.a)]
    enc = tokenizer(first, second, padding=True, truncation="longest_first", max_length=max_length,
                    return_token_type_ids=True, return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def simbert_similarity_loss(cls: torch.Tensor, scale: float = 30.0) -> torch.Tensor:
    """SimBERT's similarity loss over a batch of 2n pooled [CLS] vectors (2n, H), partners adjacent.

    u = v/‖v‖; S = scale·(U Uᵀ − 10¹²·I) (own row removed *before* scaling, as the reference does); the target
    of row i is its partner i XOR 1; mean cross-entropy over rows (ZhuiyiTechnology/simbert, simbert.py).
    Checks: ``cls`` is (2n, H) with 2n even and ≥ 2; ``scale`` is a finite real number > 0.
    """
    if isinstance(scale, bool) or not isinstance(scale, Real):
        raise TypeError(f"scale must be a real number (the reference uses 30), got {type(scale).__name__} {scale!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be finite and > 0 (the reference uses 30; scale = 1/temperature), got {scale!r}")
    if cls.dim() != 2:
        raise ValueError(f"cls must be (2n, H), got shape {tuple(cls.shape)}")
    n = cls.shape[0]
    if n < 2 or n % 2:
        raise ValueError(f"the batch must hold partner rows two by two (even size >= 2), got {n} rows")
    u = F.normalize(cls, dim=-1)  # (2n, H)
    eye = torch.eye(n, dtype=u.dtype, device=u.device)  # (2n, 2n)
    logits = scale * (u @ u.T - 1e12 * eye)  # (2n, 2n); a row can never pick itself
    labels = torch.arange(n, device=u.device) ^ 1  # 0↔1, 2↔3, ...
    return F.cross_entropy(logits, labels)


def seq2seq_targets(input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """BoolTensor (B, L−1): True at position t−1 when token t is a non-pad segment-1 token, i.e. the
    positions whose hidden state predicts the next token of B (its first token from A's [SEP], its final
    [SEP] from B's last word)."""
    return (token_type_ids[:, 1:] == 1) & attention_mask[:, 1:].bool()  # (B, L-1)


def seq2seq_loss(model: SimBERT, hidden: torch.Tensor, input_ids, token_type_ids, attention_mask) -> torch.Tensor:
    """Mean token cross-entropy of segment B given A (UniLM, Dong et al., 2019, §2.3); the LM head runs only on the
    predicting positions, which saves most of its (·, V) matmul."""
    where = seq2seq_targets(input_ids, token_type_ids, attention_mask)  # (B, L-1)
    logits = model.lm_head(hidden[:, :-1][where])  # (T, V), T = number of segment-1 tokens
    return F.cross_entropy(logits, input_ids[:, 1:][where])


DIRECTIONS = ("both", "a_to_b")


def simbert_step(scale: float = 30.0, directions: str = "both"):
    """A ``step_fn`` for ``course_lib.train.train``: one UniLM forward pass, loss = seq2seq + similarity
    (unweighted, as in the reference). The two parts are appended to ``step.parts`` for plotting.
    ``directions="a_to_b"`` keeps the seq2seq loss of the A → B rows only (the even rows of ``pair_rows``; the
    similarity loss still uses every row's [CLS])."""
    if directions not in DIRECTIONS:
        raise ValueError(f"directions must be one of {DIRECTIONS}, got {directions!r}")
    rows = slice(None) if directions == "both" else slice(0, None, 2)

    def step(model, batch):
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        hidden = model.seq2seq_hidden(**batch)  # (2n, L, H)
        sim = simbert_similarity_loss(model.pooler(hidden[:, 0]), scale)
        s2s = seq2seq_loss(model, hidden[rows], batch["input_ids"][rows], batch["token_type_ids"][rows],
                           batch["attention_mask"][rows])
        step.parts["similarity"].append(sim.item())
        step.parts["seq2seq"].append(s2s.item())
        return sim + s2s

    step.parts = {"similarity": [], "seq2seq": []}
    return step


def train_simbert(
    cfg,
    data,
    tokenizer,
    *,
    pairs: list[SimPair] | None = None,
    model: SimBERT | None = None,
    batch_size: int | None = None,
    steps: int | None = None,
    scale: float = 30.0,
    directions: str = "both",
    generator: torch.Generator | None = None,
    eval_fn=None,
    eval_every: int | None = None,
    progress: bool = True,
    warmup_steps: int = 0,
) -> tuple[SimBERT, History, dict[str, list[float]]]:
    """Joint seq2seq + similarity training on ``pairs`` (default: example ↔ gloss from ``data.train``), the
    seq2seq loss in both directions (the reference) or ``directions="a_to_b"`` (e.g. example → gloss only).

    ``batch_size`` counts pairs (each gives two rows; default ``cfg.simbert_pairs``). The learning rate is
    ``cfg.simbert_lr``: [CLS] pooling from scratch collapses at the higher lr the mean-pooled in-batch model
    uses. ``warmup_steps`` > 0 ramps the lr up linearly over those steps and then decays it linearly to 0 (transformers'
    ``get_linear_schedule_with_warmup``; notebook 02 measures what it does to collapse). Returns the model, the loop's history (total loss) and the two
    loss parts per step.
    """
    pairs = pairs if pairs is not None else make_pairs(data, "gloss")
    device = get_device()
    model = (model or make_simbert(cfg, tokenizer)).to(device)
    generator = generator or torch.Generator().manual_seed(cfg.seed)
    batch_size = batch_size or cfg.simbert_pairs
    sampler = NoDuplicateBatchSampler([TrainExample(p.a, p.group) for p in pairs], batch_size, generator)
    max_length = cfg.max_query_len + cfg.max_doc_len
    step = simbert_step(scale, directions)
    history = train(
        model,
        step,
        (pair_rows(tokenizer, [pairs[i] for i in idx], max_length) for idx in sampler),
        optimizer=torch.optim.AdamW(model.parameters(), lr=cfg.simbert_lr, weight_decay=0.01),
        max_steps=steps or cfg.train_steps,
        time_budget_s=cfg.train_seconds,
        eval_fn=eval_fn,
        eval_every=eval_every,
        progress=progress,
        warmup_steps=warmup_steps,
        decay="linear" if warmup_steps else "constant",
        desc=f"SimBERT {batch_size} pairs",
    )
    return model, history, step.parts
