"""A WordPiece tokenizer trained from scratch on the course's training text (HF ``tokenizers``).

Nothing is downloaded: the vocabulary is learned from the documents and the *training* queries only (dev
and test queries never shape it), deterministically, and cached by a digest of the texts. The result is
wrapped as a ``transformers.PreTrainedTokenizerFast`` so that any transformers code can use it. Like BERT's
tokenizer (Devlin et al., 2019, §3) it lower-cases, splits on whitespace and punctuation, and puts CJK
characters in their own tokens, so Chinese text runs through the same pipeline.
"""

import hashlib
import json
import warnings
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
    # The trainer gives each continuation token ("##e") its id in hash-map order, and breaks merge-count
    # ties by those ids, so on small corpora the learned *set* changed from run to run
    # (huggingface/tokenizers#1794, PR #2066). Registering them up front, sorted, fixes their ids: they are
    # in the vocabulary either way, so on a tie-free corpus the result is the same as before.
    seeds = SPECIAL_TOKENS + _continuation_tokens(trained, texts)
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=seeds, show_progress=False)
    trained.train_from_iterator(texts, trainer=trainer)
    # Re-number the ids canonically too: special tokens, then the learned tokens sorted.
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


def _continuation_tokens(tok: Tokenizer, texts: list[str]) -> list[str]:
    """Sorted ``##c`` for every character ``c`` that follows another within a pre-tokenized word: exactly the
    continuation tokens the WordPiece trainer creates before its first merge."""
    chars: set[str] = set()
    for text in texts:
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text)):
            chars.update(word[1:])
    return [f"##{c}" for c in sorted(chars)]


def _cache_problem(tok: Tokenizer, vocab_size: int) -> str | None:
    """Why a loaded cache file is not a tokenizer that ``train_tokenizer(…, vocab_size)`` makes, or None.

    Checks: a WordPiece model; ids 0-4 are ``SPECIAL_TOKENS`` and the rest sorted (the canonical numbering);
    more than the special tokens but at most ``vocab_size`` tokens; the ``[CLS] … [SEP]`` template.
    """
    by_id = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    n, learned = len(SPECIAL_TOKENS), by_id[len(SPECIAL_TOKENS):]
    wrong = "is not the tokenizer train_tokenizer makes"
    if not isinstance(tok.model, models.WordPiece) or by_id[:n] != SPECIAL_TOKENS:
        return f"{wrong} (its first tokens are {by_id[:n]}, not {SPECIAL_TOKENS})"
    if not 0 < len(learned) <= vocab_size - n or learned != sorted(learned):
        return f"{wrong} ({len(by_id)} tokens, expected {n + 1} to {vocab_size} with the learned ones sorted)"
    wrapped = tok.encode("a").tokens
    if wrapped[:1] != ["[CLS]"] or wrapped[-1:] != ["[SEP]"]:
        return f"{wrong} (it encodes 'a' as {wrapped}, not [CLS] … [SEP])"
    return None


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

    The cache file name carries a digest of the training texts and the vocabulary size. A cache file that does
    not load, or that holds some other tokenizer (see ``_cache_problem``), is retrained and overwritten with a
    warning.
    """
    texts = [data.documents[i] for i in sorted(data.documents)] + [t.query for t in data.train]
    digest = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()[:16]
    path = Path(cache_dir()) / "tokenizers" / f"wordpiece-{data.name}-{vocab_size}-{digest}.json"
    if path.exists():
        try:
            cached = Tokenizer.from_file(str(path))
        except Exception as e:  # a truncated or edited file
            problem = f"does not load ({type(e).__name__}: {str(e)[:120]})"
        else:
            problem = _cache_problem(cached, vocab_size)
            if problem is None:
                return _wrap(cached)
        warnings.warn(f"tokenizer cache {path} {problem}; retraining it and overwriting the file")
    wrapped = train_tokenizer(texts, vocab_size)
    with atomic_path(path) as tmp:
        wrapped.backend_tokenizer.save(str(tmp))
    return wrapped
