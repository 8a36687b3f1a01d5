"""Training with mined hard negatives, notebook 05: four strategies in one loop, so that they differ only in
where each query's extra negatives come from.

- ``none``: in-batch negatives only (the baseline).
- ``static``: mined once, with the model itself after its warm-up, from FlagEmbedding's rank window 10–210
  (``hn_mine.py``), then kept for the rest of the run.
- ``ance``: ANCE's refresh (Xiong et al., 2021, arXiv:2007.00808, §4–5): the corpus is re-encoded and
  re-indexed every ``ance_every`` steps after the first mining and every query's negatives are re-drawn from the new index's top window.
- ``dynamic``: Conan-embedding's rule (Li et al., 2024, arXiv:2408.15710, §2.2): mined once from the window
  [10, n + 10), then every ``check_every`` steps after that an example whose negatives stopped being hard (score·1.15 below
  the score at mining, |score| < 0.8) gets replacements from the next window, ranked by the current model.

All strategies train ``warmup_steps`` in-batch steps first (mining with a random encoder finds random
documents), on the same pairs, at the same batch size and learning rate. Mined strategies store ``n_mined``
negatives per example and put ``n_per_step`` of them, drawn at random, in each step's batch as extra columns
(FlagEmbedding samples its ``train_group_size − 1`` the same way). Mining time counts as training time.

Pairs and pool (``mining_pairs``): negatives are mined from the corpus the retriever will search (ANCE mines
its own corpus), and training uses the pairs whose positive lies in it, so that s⁺ is defined and the
positive can be excluded: in the full preset every training pair and all 117,659 synsets; in FAST the 2,736
pairs of the 4,976 sampled synsets.
"""

import time
from dataclasses import asdict, dataclass

import torch

from course_lib.in_batch import add_negatives, in_batch_step
from course_lib.mining import AnceRefresher, DynamicHardNegativeMiner, conan_window, mine_hard_negatives
from course_lib.models import encode, make_encoder, tokenize
from course_lib.samplers import NoDuplicateBatchSampler
from course_lib.train import History, train
from course_lib.utils import get_device

STRATEGIES = ("none", "static", "ance", "dynamic")


@dataclass(frozen=True)
class HardNegSettings:
    """The method's own knobs (the preset's ``Config`` holds the scale: steps, batch size, temperature, lr)."""

    strategy: str = "static"
    warmup_steps: int = 100  # in-batch steps before the first mining
    n_mined: int = 8  # negatives stored per example (Conan's n: the width of each dynamic window)
    n_per_step: int = 1  # of those, hard-negative columns per query in each batch
    static_range: tuple[int, int] = (10, 210)  # FlagEmbedding hn_mine's range_for_sampling
    ance_every: int = 100  # ANCE re-indexes every 10k batches; our runs are 300–800 steps long
    ance_range: tuple[int, int] = (0, 200)  # ANCE samples from the ANN top 200
    check_every: int = 100  # Conan's check interval
    offset: int = 10  # Conan's windows start at rank 10
    factor: float = 1.15
    abs_limit: float = 0.8
    relative_margin: float | None = None  # NV-Retriever's TopK-PercPos at the first mining: keep s ≤ s⁺ − |s⁺|·m

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        for name in ("warmup_steps", "n_mined", "n_per_step", "ance_every", "check_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "warmup_steps" else 1):
                raise ValueError(f"{name} must be a {'non-negative' if name == 'warmup_steps' else 'positive'} int, "
                                 f"got {value!r}")
        if self.relative_margin is not None and not (isinstance(self.relative_margin, (int, float))
                                                     and not isinstance(self.relative_margin, bool)
                                                     and 0.0 <= self.relative_margin < 1.0):
            raise ValueError(f"relative_margin must be None or a number in [0, 1), got {self.relative_margin!r}")
        if self.n_per_step > self.n_mined:
            raise ValueError(f"n_per_step={self.n_per_step} exceeds n_mined={self.n_mined}: a batch can only use "
                             "negatives that were mined")

    @property
    def first_range(self) -> tuple[int, int]:
        """The rank window of the first mining."""
        return {"static": self.static_range, "ance": self.ance_range,
                "dynamic": conan_window(1, self.n_mined, self.offset)}.get(self.strategy, (0, 0))

    def describe(self) -> dict:
        keep = {"none": ("warmup_steps",), "static": ("static_range",), "ance": ("ance_every", "ance_range"),
                "dynamic": ("check_every", "offset", "factor", "abs_limit")}[self.strategy]
        base = ("strategy", "warmup_steps") + (("n_mined", "n_per_step", "relative_margin")
                                               if self.strategy != "none" else ())
        return {k: v for k, v in asdict(self).items() if k in base + keep}


def mining_pairs(data) -> tuple[list, list[str]]:
    """The training pairs whose positive is in ``data.corpus``, and the corpus ids (sorted): the mining pool."""
    pool = sorted(data.corpus)
    examples = [e for e in data.train if e.positive in data.corpus]
    if not examples:
        raise ValueError(f"no training pair of {data.name!r} has its positive in the corpus; hard negatives are "
                         "mined from the corpus, so at least some positives must be in it")
    return examples, pool


class NegativeSource:
    """Holds each example's mined negatives and updates them at the steps its strategy says.

    ``log``: one record per mining event, ``{"step", "event", "seconds", "replaced"}`` (static/ance: the
    examples given new negatives; dynamic checks: the negatives replaced); ``seconds``: all mining time."""

    def __init__(self, settings: HardNegSettings, examples, pool_ids, data, tokenizer, cfg, seed: int):
        self.settings, self.examples, self.pool_ids = settings, examples, pool_ids
        self.data, self.tokenizer, self.cfg, self.seed = data, tokenizer, cfg, seed
        self.query_texts = [e.query for e in examples]
        self.doc_texts = [data.corpus[i] for i in pool_ids]
        self.positives = [e.positive for e in examples]
        self.negatives: list[list[str]] | None = None  # per example, None until the first mining
        self.miner: DynamicHardNegativeMiner | None = None
        self.refresher = AnceRefresher(settings.ance_every, settings.ance_range, settings.n_mined, seed=seed,
                                       start=settings.warmup_steps)
        self.log: list[dict] = []
        self.seconds = 0.0

    def _queries(self, model, rows=None) -> torch.Tensor:
        texts = self.query_texts if rows is None else [self.query_texts[r] for r in rows]
        return encode(model, self.tokenizer, texts, max_length=self.cfg.max_query_len)  # (Q, D)

    def _docs(self, model, ids=None) -> torch.Tensor:
        texts = self.doc_texts if ids is None else [self.data.corpus[i] for i in ids]
        return encode(model, self.tokenizer, texts, max_length=self.cfg.max_doc_len)  # (N, D)

    def before_step(self, step: int, model) -> None:
        """Mine or check, when ``step`` (optimizer steps done so far) calls for it."""
        s = self.settings
        if s.strategy == "none" or step < s.warmup_steps:
            return
        t0 = time.perf_counter()
        event, changed = None, 0
        if step == s.warmup_steps and s.strategy in ("static", "dynamic"):
            queries, docs = self._queries(model), self._docs(model)
            mined = mine_hard_negatives(queries, self.positives, self.pool_ids, docs,
                                        rank_range=s.first_range, num_negatives=s.n_mined, seed=self.seed,
                                        relative_margin=s.relative_margin,
                                        query_texts=self.query_texts, doc_texts=self.doc_texts)
            unfiltered = self._unfiltered_rows(mined, queries, docs)
            self.negatives, event, changed = mined.ids, "mine", len(mined.ids)
            if s.strategy == "dynamic":
                self.miner = DynamicHardNegativeMiner(
                    mined, self.positives, self.pool_ids, check_every=s.check_every, factor=s.factor,
                    abs_limit=s.abs_limit, offset=s.offset, query_texts=self.query_texts,
                    doc_texts=self.doc_texts, seed=self.seed, start=step)
                self.negatives = self.miner.negatives  # the miner edits these lists in place
        elif s.strategy == "ance" and (step == s.warmup_steps or self.refresher.due(step)):
            mined = self.refresher.refresh(step, self._queries(model), self.positives, self.pool_ids,
                                           self._docs(model), self.query_texts, self.doc_texts)
            self.negatives, event, changed = mined.ids, "reindex", len(mined.ids)
        elif s.strategy == "dynamic" and step > s.warmup_steps and self.miner.due(step):
            changed = self.miner.maybe_update(step, lambda rows: self._queries(model, rows),
                                              lambda ids: self._docs(model, ids))
            event = "check"
        if event is not None:
            seconds = time.perf_counter() - t0
            self.seconds += seconds
            self.log.append({"step": step, "event": event, "seconds": round(seconds, 3), "replaced": changed}
                            | ({"unfiltered_rows": unfiltered} if event == "mine" and s.relative_margin else {}))

    def _unfiltered_rows(self, mined, queries, docs) -> int:
        """Rows that ``relative_margin`` left with fewer than ``n_mined`` negatives (an early encoder can score
        every document within the margin of the positive) take the window's unfiltered candidates instead, so
        that every batch can hold ``n_per_step`` of them; returns how many rows did (the mining log records it)."""
        s = self.settings
        short = [r for r, ids in enumerate(mined.ids) if len(ids) < s.n_mined]
        if s.relative_margin is None or not short:
            return 0
        again = mine_hard_negatives(queries[short], [self.positives[r] for r in short], self.pool_ids, docs,
                                    rank_range=s.first_range, num_negatives=s.n_mined, seed=self.seed,
                                    query_texts=[self.query_texts[r] for r in short], doc_texts=self.doc_texts)
        for j, r in enumerate(short):
            mined.ids[r], mined.scores[r], mined.ranks[r] = again.ids[j], again.scores[j], again.ranks[j]
        return len(short)

    def draw(self, rows: list[int], k: int, generator: torch.Generator) -> list[list[str]]:
        """``k`` of each example's stored negatives, uniformly without replacement."""
        out = []
        for r in rows:
            pool = self.negatives[r]
            if len(pool) < k:
                raise RuntimeError(f"example {r} has only {len(pool)} mined negatives, fewer than n_per_step={k}; "
                                   "mine from a wider rank window or lower n_per_step")
            out.append([pool[j] for j in torch.randperm(len(pool), generator=generator)[:k].tolist()])
        return out


def hardneg_batches(source: NegativeSource, model, sampler, generator: torch.Generator):
    """Pair batches over ``source.examples``; once ``source`` holds negatives, each query gets
    ``n_per_step`` of its own as extra columns. ``source.before_step`` runs before each batch is built."""
    data, tokenizer, cfg = source.data, source.tokenizer, source.cfg
    for step, idx in enumerate(sampler):
        source.before_step(step, model)
        examples = [source.examples[i] for i in idx]
        batch = {
            "q": tokenize(tokenizer, [e.query for e in examples], cfg.max_query_len),
            "d": tokenize(tokenizer, [data.documents[e.positive] for e in examples], cfg.max_doc_len),
            "doc_ids": [e.positive for e in examples],
        }
        if source.negatives is not None:
            add_negatives(batch, source.draw(idx, source.settings.n_per_step, generator), data, tokenizer, cfg)
        yield batch


def train_hardneg(cfg, data, tokenizer, settings: HardNegSettings, *, model=None, optimizer=None,
                  steps: int | None = None, batch_size: int | None = None, eval_fn=None,
                  eval_every: int | None = None, progress: bool = True) -> tuple[torch.nn.Module, History, NegativeSource]:
    """Train an encoder (new unless ``model`` is given) on ``mining_pairs(data)`` with ``settings``' strategy,
    the preset's temperature, lr, batch size and step budget; ``optimizer`` (over ``model``'s parameters, e.g.
    to continue a run with its AdamW state) defaults to a new AdamW. ``history.train_seconds`` includes the mining;
    each evaluation record also holds ``train_seconds`` and ``mining_seconds`` so far (for wall-clock curves).
    Returns the model, the ``History`` and the ``NegativeSource`` (its ``log``, ``negatives``, ``miner``)."""
    device = get_device()
    model = (model or make_encoder(cfg, tokenizer)).to(device)
    examples, pool = mining_pairs(data)
    generator = torch.Generator().manual_seed(cfg.seed)
    sampler = NoDuplicateBatchSampler(examples, batch_size or cfg.batch_size, generator)
    source = NegativeSource(settings, examples, pool, data, tokenizer, cfg, cfg.seed)
    def timed_eval(m):
        return {"mining_seconds": round(source.seconds, 3), **eval_fn(m)}

    history = train(
        model,
        in_batch_step(cfg.temperature),
        hardneg_batches(source, model, sampler, generator),
        optimizer=optimizer or torch.optim.AdamW(model.parameters(), lr=cfg.lr),
        max_steps=steps or cfg.train_steps,
        time_budget_s=cfg.train_seconds,
        eval_fn=timed_eval if eval_fn is not None else None,
        eval_every=eval_every,
        progress=progress,
        desc=f"hard negatives: {settings.strategy}",
    )
    history.train_seconds += source.seconds
    return model, history, source
