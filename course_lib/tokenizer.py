"""A WordPiece tokenizer trained from scratch on the course's training text (HF ``tokenizers``).

Nothing is downloaded: the vocabulary is learned from the documents and the *training* queries only (dev
and test queries never shape it), deterministically, and cached by a digest of the texts. The result is
wrapped as a ``transformers.PreTrainedTokenizerFast`` so that any transformers code can use it. Like BERT's
tokenizer (Devlin et al., 2019, §3) it lower-cases, splits on whitespace and punctuation, and puts CJK
characters in their own tokens, so Chinese text runs through the same pipeline.
"""

import hashlib
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from course_lib.utils import atomic_path, cache_dir

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a lower-casing WordPiece tokenizer with BERT's special tokens and ``[CLS] A [SEP] (B [SEP])``
    templates (segment ids 0 for A, 1 for B)."""
    if not texts:
        raise ValueError("train_tokenizer needs at least one text; got an empty list")
    if not isinstance(vocab_size, int) or vocab_size < len(SPECIAL_TOKENS) + 100:
        raise ValueError(f"vocab_size must be an int >= {len(SPECIAL_TOKENS) + 100}, got {vocab_size!r}")
    trained = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    trained.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, handle_chinese_chars=True)
    trained.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    trained.train_from_iterator(texts, trainer=trainer)
    # The trainer breaks frequency ties in hash-map order, so the same texts give the same token *set* but
    # different ids from run to run (huggingface/tokenizers#1794). Re-number: special tokens, then sorted.
    learned = set(trained.get_vocab()) - set(SPECIAL_TOKENS)
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + sorted(learned))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = trained.normalizer
    tok.pre_tokenizer = trained.pre_tokenizer
    tok.decoder = decoders.WordPiece(prefix="##")
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return _wrap(tok)


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def vocab_digest(tokenizer) -> str:
    """sha256 of the vocabulary (token → id), as recorded in ``data/manifest_*.json``."""
    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode("utf-8")).hexdigest()


def load_tokenizer(data, vocab_size: int) -> PreTrainedTokenizerFast:
    """The tokenizer for a data set: trained on its documents and training queries, cached on disk.

    The cache file name carries a digest of the training texts and the vocabulary size; a cache file that
    does not parse is rebuilt.
    """
    texts = [data.documents[i] for i in sorted(data.documents)] + [t.query for t in data.train]
    digest = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()[:16]
    path = Path(cache_dir()) / "tokenizers" / f"wordpiece-{data.name}-{vocab_size}-{digest}.json"
    if path.exists():
        try:
            return _wrap(Tokenizer.from_file(str(path)))
        except Exception:  # a truncated or edited file: rebuild it below
            pass
    wrapped = train_tokenizer(texts, vocab_size)
    with atomic_path(path) as tmp:
        wrapped.backend_tokenizer.save(str(tmp))
    return wrapped
