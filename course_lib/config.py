"""Presets: one frozen dataclass holds every knob a notebook or the benchmark reads.

``get_config()`` returns FAST unless ``COURSE_FAST=0`` selects the full preset (or a notebook's parameters cell
sets ``PRESET = "full"``): a learner who opens the course gets notebooks that finish in about a minute each. FAST is sized so that each notebook runs in at most 90 s on 2 CPU cores
(the budget that `conftest.py` enforces). Full searches all of WordNet and trains longer with the same small encoder; on 2 CPU
cores its notebooks take longer than the design's ~15 minutes, mostly to encode 117,659 documents per
evaluation (the README lists measured times). A GPU, used automatically, shortens both.
"""

import dataclasses
import math
import os
from dataclasses import dataclass

POOLINGS = ("mean", "cls")  # the same as course_lib.models.POOLINGS (a test keeps them equal)
HNSW_M_RANGE = (2, 100)  # the same as course_lib.index.M_RANGE
INF = math.inf
# int fields: (lowest, highest) allowed
_INT_RANGES = {
    "seed": (0, INF), "num_threads": (1, INF), "vocab_size": (1, INF), "max_query_len": (1, INF),
    "max_doc_len": (1, INF), "hidden_size": (1, INF), "num_layers": (1, INF), "num_heads": (1, INF),
    "intermediate_size": (1, INF), "batch_size": (1, INF), "train_steps": (1, INF), "simbert_pairs": (1, INF),
    "pretrain_steps": (1, INF), "hnsw_m": HNSW_M_RANGE, "hnsw_ef_construction": (1, INF), "hnsw_ef_search": (1, INF),
}
# number fields: (lowest, highest, the range as the message writes it); the bounds marked ( ) are excluded
_FLOAT_RANGES = {
    "dropout": (0.0, 1.0, "[0, 1)"), "encoder_mask_ratio": (0.0, 1.0, "[0, 1)"),
    "decoder_mask_ratio": (0.0, 1.0, "[0, 1)"),
    **{name: (0.0, INF, "(0, inf)") for name in ("lr", "temperature", "simbert_lr", "pretrain_lr", "finetune_lr")},
    **{name: (0.0, INF, "(0, inf]") for name in ("train_seconds", "pretrain_seconds")},
}


@dataclass(frozen=True)
class Config:
    """Every preset value, with the unit in its name where it has one."""

    preset: str
    seed: int = 0
    num_threads: int = 2
    # data: FAST samples this many polysemous lemmas for the retrieval corpus (None = every synset)
    n_lemmas: int | None = 1700
    # tokenizer
    vocab_size: int = 8000
    max_query_len: int = 32
    max_doc_len: int = 48
    # encoder (transformers BertConfig); dropout 0 and mean pooling learn fastest on CPU in our probes (README, Presets)
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 512
    dropout: float = 0.0
    pooling: str = "mean"
    # training
    batch_size: int = 64
    lr: float = 2e-3
    temperature: float = 0.05
    train_steps: int = 300  # the budget that makes runs reproducible
    train_seconds: float = 180.0  # a wall-clock cap on top, for slow machines (the steps normally bind)
    # SimBERT (notebook 02): [CLS] pooling trained from scratch stays collapsed (similarity loss at ln(2n − 1))
    # at the in-batch lr of 2e-3 and learns at 3e-4; pairs per batch (each pair gives two rows)
    simbert_lr: float = 3e-4
    simbert_pairs: int = 32
    # RetroMAE (notebook 03): pretraining on raw text before in-batch fine-tuning; mask ratios from the paper
    encoder_mask_ratio: float = 0.3
    decoder_mask_ratio: float = 0.5
    pretrain_lr: float = 1e-3
    pretrain_steps: int = 300
    pretrain_seconds: float = 600.0  # wall-clock cap of each pretraining (in FAST the steps bind)
    # in-batch fine-tuning with [CLS] pooling (RetroMAE's retrieval vector) from each start; in FAST probes
    # (400 pretraining steps) 1e-3 fine-tuned every start better than 3e-4, and 2e-3 collapses [CLS] from scratch
    finetune_lr: float = 1e-3
    # approximate search (HNSW, Malkov & Yashunin, 2018)
    hnsw_m: int = 16
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128

    def __post_init__(self) -> None:
        """Check every field's type and range (so ``get_config`` overrides and ``replace`` are checked too): ints
        are ints (not bools) in their range, numbers finite and in theirs, ``pooling`` one of ``POOLINGS``,
        ``n_lemmas`` None or >= 1, and ``hidden_size`` divisible by ``num_heads``."""
        if not isinstance(self.preset, str) or not self.preset:
            raise ValueError(f"Config.preset must be a non-empty str, got {self.preset!r}")
        fix = {f.name: f"; the default is {f.default!r}" for f in dataclasses.fields(self)}
        for name, (low, high) in _INT_RANGES.items():
            _check_int(name, getattr(self, name), low, high, fix[name])
        if self.n_lemmas is not None:
            _check_int("n_lemmas", self.n_lemmas, 1, INF, "; use None for every synset")
        for name, (low, high, shown) in _FLOAT_RANGES.items():
            _check_number(name, getattr(self, name), low, high, shown, fix[name])
        if self.pooling not in POOLINGS:
            raise ValueError(f"Config.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"Config: hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; "
                             "each attention head gets hidden_size / num_heads dimensions, so pick a divisor")

    def replace(self, **changes) -> "Config":
        """A copy with some fields changed (the dataclass is frozen); unknown names raise."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown config field(s) {sorted(unknown)}; see course_lib.config.Config")
        return dataclasses.replace(self, **changes)


def _check_int(name: str, value, low, high, fix: str) -> None:
    shown = f">= {low}" if high == INF else f"in [{low}, {high}]"
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"Config.{name} must be an int {shown}, got {value!r} ({type(value).__name__}){fix}")


def _check_number(name: str, value, low: float, high: float, shown: str, fix: str) -> None:
    """A number (int or float, not a bool) in the range ``shown``: "[" includes a bound, "(" excludes it."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if ok:
        above = value >= low if shown[0] == "[" else value > low
        below = value <= high if shown[-1] == "]" else value < high
        ok = above and below
    if not ok:
        raise ValueError(f"Config.{name} must be a number in {shown}, got {value!r} ({type(value).__name__}){fix}")


PRESETS = {
    "fast": Config(preset="fast"),
    # full = all of WordNet and longer training, with the same small encoder: on 2 CPU cores a 4-layer,
    # 256-wide BERT trains at ~0.5 steps/s (B = 64), too slow for a 15-minute notebook; on a GPU, raise it
    "full": Config(
        preset="full",
        n_lemmas=None,
        vocab_size=16000,
        lr=1e-3,
        train_steps=800,
        train_seconds=900.0,
        pretrain_steps=2500,
        # on 2 cores MLM runs 2,500 steps in ~13 min; RetroMAE (0.74 s/step) reaches this cap near step 2,400
        pretrain_seconds=1800.0,
        # on the in_batch encoder's 117,659 document vectors, M=16 reached recall@10 vs exact 0.943 at ef=128 and
        # 0.979 at ef=256; M=24, ef=192 reaches 0.985 at 1.5x the speed of exact search (README, full results)
        hnsw_m=24,
        hnsw_ef_search=192,
    ),
}


def fast_mode() -> bool:
    """False only when ``COURSE_FAST`` is 0/false/no: FAST is the default, full is one setting away."""
    flag = os.environ.get("COURSE_FAST")
    if flag is not None and flag.strip() != "":
        value = flag.strip().lower()
        if value in {"1", "true", "yes"}:
            return True
        if value in {"0", "false", "no"}:
            return False
        raise ValueError(f"COURSE_FAST={flag!r} is not understood; use 1 (FAST preset) or 0 (full preset)")
    return True


def get_config(preset: str | None = None, **overrides) -> Config:
    """Return the named preset ("fast" or "full"), or the one the environment selects, with overrides."""
    if preset is None:
        preset = "fast" if fast_mode() else "full"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset].replace(**overrides) if overrides else PRESETS[preset]
