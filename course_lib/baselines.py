"""Lexical baseline: BM25 (Robertson & Zaragoza, 2009, "The Probabilistic Relevance Framework: BM25 and
Beyond", §3.4) via the ``bm25s`` package (Lù, 2024), Lucene's variant with k1 = 1.5, b = 0.75, English stop
words and the Snowball English stemmer (PyStemmer); or, for Chinese, over single characters (no stop words, no
stemmer), since Chinese writes no spaces between words."""

import bm25s
import numpy as np
import Stemmer

# bm25s's token_pattern per tokenization: English words of two or more word characters (bm25s's default), or
# every single word character (a Han character, letter or digit; punctuation and "～" are not tokens)
TOKEN_PATTERNS = {"words": r"(?u)\b\w\w+\b", "chars": r"(?u)\w"}


def lexical_tokenize(corpus: dict[str, str], sample: int = 2000) -> str:
    """The BM25 tokenization a corpus calls for: ``"chars"`` when most of its letters are Han characters
    (CJK Unified Ideographs, U+4E00–U+9FFF), else ``"words"``; judged on an evenly spaced sample of documents."""
    texts = [corpus[i] for i in sorted(corpus)]
    letters = [c for t in texts[:: max(1, len(texts) // sample)] for c in t if c.isalpha()]
    han = sum("\u4e00" <= c <= "\u9fff" for c in letters)
    return "chars" if letters and han / len(letters) > 0.5 else "words"


class BM25:
    """BM25 over a corpus dict; ``search(texts, k)`` returns ranked doc ids and scores like the indexes do."""

    def __init__(self, corpus: dict[str, str], k1: float = 1.5, b: float = 0.75, stemmer: str | None = "english",
                 tokenize: str = "words"):
        """``stemmer`` names a Snowball stemmer (PyStemmer), or ``None`` to match words as they are.
        ``tokenize="words"`` (English: words, stop words removed, stemmed) or ``"chars"`` (Chinese: every character
        that is a letter or digit is a token; nothing is removed or stemmed, so ``stemmer`` is not used and may
        only be left at its default or None)."""
        if not corpus:
            raise ValueError("BM25 needs a non-empty corpus")
        if tokenize not in TOKEN_PATTERNS:
            raise ValueError(f"unknown tokenize {tokenize!r}; use 'words' (English) or 'chars' (Chinese)")
        if tokenize == "chars" and stemmer not in (None, "english"):
            raise ValueError(f"stemmer {stemmer!r} stems words, but tokenize='chars' makes single characters; "
                             "leave stemmer out (or None) with tokenize='chars'")
        if stemmer is not None and stemmer not in Stemmer.algorithms():
            raise ValueError(f"unknown stemmer {stemmer!r}; use None or one of {Stemmer.algorithms()}")
        self.ids = sorted(corpus)
        self.tokenize = tokenize
        self._stemmer = Stemmer.Stemmer(stemmer) if stemmer and tokenize == "words" else None
        tokens = self._tokens([corpus[i] for i in self.ids])
        self._bm25 = bm25s.BM25(k1=k1, b=b)
        self._bm25.index(tokens, show_progress=False)

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, texts: list[str], k: int) -> tuple[list[list[str]], np.ndarray]:
        """Top-k doc ids and BM25 scores per query (a query with no known word scores 0 everywhere)."""
        if isinstance(texts, str):
            raise TypeError("search expects a list of query texts, not one string")
        if not texts:
            raise ValueError("no queries to search with")
        if not isinstance(k, int) or not 1 <= k <= len(self.ids):
            raise ValueError(f"k must be an int in [1, {len(self.ids)}] (the corpus size), got {k!r}")
        tokens = self._tokens(list(texts))
        docs, scores = self._bm25.retrieve(tokens, k=k, show_progress=False, n_threads=1)  # (Q, k) each
        return [[self.ids[j] for j in row] for row in docs.tolist()], scores

    def _tokens(self, texts: list[str]):
        stopwords = "en" if self.tokenize == "words" else None
        return bm25s.tokenize(texts, token_pattern=TOKEN_PATTERNS[self.tokenize], stopwords=stopwords,
                              stemmer=self._stemmer, show_progress=False)


MINILM_MAX_UNKNOWN = 0.05  # share of [UNK] tokens in a corpus above which MiniLM cannot be said to read it


def minilm_unknown_share(tokenizer, texts: list[str], sample: int = 2000) -> float:
    """Share of ``tokenizer``'s tokens that are its unknown token, over an evenly spaced sample of ``texts``."""
    picked = texts[:: max(1, len(texts) // sample)]
    ids = [i for row in tokenizer(picked, add_special_tokens=False)["input_ids"] for i in row]
    return sum(i == tokenizer.unk_token_id for i in ids) / max(1, len(ids))


def minilm_embeddings(data, split: str = "test"):
    """all-MiniLM-L6-v2 zero-shot embeddings of the corpus and of a split's queries, cached on disk (MiniLM
    encodes only ~60–130 short texts/s on 2 CPU cores, so the first call on a corpus takes a while).

    Returns ``(doc_ids, doc_emb (N, 384), query_emb (Q, 384))``, queries in ``data.split_items(split)`` order.
    A corpus that MiniLM cannot read (more than ``MINILM_MAX_UNKNOWN`` of its tokens are [UNK], as for the Chinese
    idioms: its English vocabulary holds 187 of their 5,308 Han characters) raises ``ValueError``: there is no
    MiniLM baseline for it, rather than a meaningless one.
    """
    from course_lib.models import MINILM_SHA256, encode_cached, load_minilm

    model, tok = load_minilm()
    doc_ids = sorted(data.corpus)
    share = minilm_unknown_share(tok, [data.corpus[i] for i in doc_ids])
    if share > MINILM_MAX_UNKNOWN:
        raise ValueError(
            f"all-MiniLM-L6-v2 cannot read {data.name!r}: {share:.0%} of its corpus tokens are [UNK] (MiniLM's "
            "vocabulary is English WordPiece), so its embeddings would not measure this task. No MiniLM baseline "
            "exists for this data set; compare with BM25 (tokenize='chars' for Chinese) and the course encoder"
        )
    _, texts, _ = data.split_items(split)
    # resumable: finished chunks of the corpus are kept on disk, so an interrupted first run (15–30 minutes
    # for the full corpus on 2 cores) continues where it stopped; a progress bar counts the documents
    doc_emb = encode_cached(model, tok, [data.corpus[i] for i in doc_ids], key=MINILM_SHA256, max_length=128,
                            desc="MiniLM: corpus")
    return doc_ids, doc_emb, encode_cached(model, tok, texts, key=MINILM_SHA256, max_length=128, desc="MiniLM: queries")
