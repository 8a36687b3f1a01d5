"""Lexical baseline: BM25 (Robertson & Zaragoza, 2009, "The Probabilistic Relevance Framework: BM25 and
Beyond", §3.4) via the ``bm25s`` package (Lù, 2024), Lucene's variant with k1 = 1.5, b = 0.75, English stop
words and the Snowball English stemmer (PyStemmer)."""

import bm25s
import numpy as np
import Stemmer


class BM25:
    """BM25 over a corpus dict; ``search(texts, k)`` returns ranked doc ids and scores like the indexes do."""

    def __init__(self, corpus: dict[str, str], k1: float = 1.5, b: float = 0.75, stemmer: str | None = "english"):
        """``stemmer`` names a Snowball stemmer (PyStemmer), or ``None`` to match words as they are."""
        if not corpus:
            raise ValueError("BM25 needs a non-empty corpus")
        if stemmer is not None and stemmer not in Stemmer.algorithms():
            raise ValueError(f"unknown stemmer {stemmer!r}; use None or one of {Stemmer.algorithms()}")
        self.ids = sorted(corpus)
        self._stemmer = Stemmer.Stemmer(stemmer) if stemmer else None
        tokens = bm25s.tokenize([corpus[i] for i in self.ids], stopwords="en", stemmer=self._stemmer,
                                show_progress=False)
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
        tokens = bm25s.tokenize(list(texts), stopwords="en", stemmer=self._stemmer, show_progress=False)
        docs, scores = self._bm25.retrieve(tokens, k=k, show_progress=False, n_threads=1)  # (Q, k) each
        return [[self.ids[j] for j in row] for row in docs.tolist()], scores


def minilm_embeddings(data, split: str = "test"):
    """all-MiniLM-L6-v2 zero-shot embeddings of the corpus and of a split's queries, cached on disk (MiniLM
    encodes only ~60–130 short texts/s on 2 CPU cores, so the first call on a corpus takes a while).

    Returns ``(doc_ids, doc_emb (N, 384), query_emb (Q, 384))``, queries in ``data.split_items(split)`` order.
    """
    from course_lib.models import MINILM_SHA256, encode_cached, load_minilm

    model, tok = load_minilm()
    doc_ids = sorted(data.corpus)
    _, texts, _ = data.split_items(split)
    doc_emb = encode_cached(model, tok, [data.corpus[i] for i in doc_ids], key=MINILM_SHA256, max_length=128)
    return doc_ids, doc_emb, encode_cached(model, tok, texts, key=MINILM_SHA256, max_length=128)
