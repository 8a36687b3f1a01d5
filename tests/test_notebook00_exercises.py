"""Notebook 00's exercises: each check (the notebook's assertion, as a function) fails on the unsolved starting
point and passes on the kept solution below. Everything runs on the FAST preset, as the notebook does by default."""

import numpy as np
import pytest

from course_lib.baselines import BM25
from course_lib.config import get_config
from course_lib.data import load_dataset
from course_lib.index import ExactIndex, HNSWIndex, recall_vs_exact
from course_lib.metrics import KS, embed_corpus, mrr_at_k, recall_at_k, retrieval_metrics
from course_lib.models import encode, make_encoder
from course_lib.tokenizer import load_tokenizer
from course_lib.utils import seed_everything

CFG = get_config("fast")
TOY_RANKED = [["a", "b", "c"], ["c", "a", "b"], ["b", "c", "a"]]  # section 4's toy example
TOY_RELEVANT = [{"a"}, {"a"}, {"d", "b"}]


@pytest.fixture(scope="module")
def nb():
    """What the notebook has computed by its exercises: the data, the test split, BM25's rankings and metrics."""
    data = load_dataset("wordnet", "fast")
    _, test_texts, test_relevant = data.split_items("test")
    bm25_ranked, _ = BM25(data.corpus).search(test_texts, max(KS))
    return {"data": data, "test_texts": test_texts, "test_relevant": test_relevant, "bm25_ranked": bm25_ranked,
            "bm25": retrieval_metrics(bm25_ranked, test_relevant, KS)}


def bm25_r10(corpus, nb, **kwargs) -> float:
    ranked, _ = BM25(corpus, **kwargs).search(nb["test_texts"], 10)
    return recall_at_k(ranked, nb["test_relevant"], 10)


# exercise 1: hit rate ------------------------------------------------------------------------------------


def hit_rate(ranked, relevant, k):  # the kept solution
    return float(np.mean([bool(rel & set(r[:k])) for r, rel in zip(ranked, relevant)]))


def hit_rate_stub(ranked, relevant, k):  # the tempting shortcut: recall under another name
    return recall_at_k(ranked, relevant, k)


def exercise_1_check(fn, nb) -> bool:
    return bool(np.isclose(fn(TOY_RANKED, TOY_RELEVANT, 1), 2 / 3)
                and np.isclose(fn(nb["bm25_ranked"], nb["test_relevant"], 10), nb["bm25"]["recall@10"]))


def test_exercise_1(nb):
    assert exercise_1_check(hit_rate, nb) and not exercise_1_check(hit_rate_stub, nb)


# exercise 2: stemming ------------------------------------------------------------------------------------


def exercise_2_check(r10_unstemmed, nb) -> bool:
    return r10_unstemmed < nb["bm25"]["recall@10"]


def test_exercise_2(nb):
    solution = bm25_r10(nb["data"].corpus, nb, stemmer=None)
    stub = bm25_r10(nb["data"].corpus, nb)  # the starting point: stemming still on
    assert exercise_2_check(solution, nb) and not exercise_2_check(stub, nb)


# exercise 3: definitions only ----------------------------------------------------------------------------


def exercise_3_check(r10_definitions, nb) -> bool:
    return r10_definitions < nb["bm25"]["recall@10"] - 0.1


def test_exercise_3(nb):
    definitions = {i: text.split(": ", 1)[1] for i, text in nb["data"].corpus.items()}  # the kept solution
    assert exercise_3_check(bm25_r10(definitions, nb), nb)
    assert not exercise_3_check(bm25_r10(nb["data"].corpus, nb), nb)  # the starting point: documents unchanged


# exercise 4: M against ef --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vectors(nb):
    """The untrained encoder's vectors of sections 3 and 5, the exact top 10, and the two graphs."""
    seed_everything(CFG.seed, CFG.num_threads)
    tokenizer = load_tokenizer(nb["data"], CFG.vocab_size)
    model = make_encoder(CFG, tokenizer)
    doc_ids, doc_emb = embed_corpus(model, tokenizer, nb["data"], max_length=CFG.max_doc_len)
    q_emb = encode(model, tokenizer, nb["test_texts"], max_length=CFG.max_query_len)
    exact = ExactIndex(doc_emb.shape[1])
    exact.add(doc_ids, doc_emb)
    exact10, _ = exact.search(q_emb, 10)
    graphs = {}
    for name, m, ef_construction in (("hnsw", CFG.hnsw_m, CFG.hnsw_ef_construction), ("sparse", 4, 20)):
        graphs[name] = HNSWIndex(doc_emb.shape[1], M=m, ef_construction=ef_construction, seed=CFG.seed)
        graphs[name].add(doc_ids, doc_emb)
    return q_emb, exact10, graphs


def smallest_ef(reaches, index):  # the kept solution: double ef from 10 until it reaches the recall
    ef = 10
    while not reaches(index, ef):
        ef *= 2
    return ef


def exercise_4_check(ef_sparse, ef_dense, vectors) -> bool:
    q_emb, exact10, graphs = vectors

    def reaches(index, ef):
        index.set_ef(ef)
        return recall_vs_exact(index.search(q_emb, 10)[0], exact10, 10) >= 0.85

    sparse, hnsw = graphs["sparse"], graphs["hnsw"]
    return (reaches(sparse, ef_sparse) and not reaches(sparse, ef_sparse // 2)
            and reaches(hnsw, ef_dense) and not reaches(hnsw, ef_dense // 2))


def test_exercise_4(vectors):
    q_emb, exact10, graphs = vectors

    def reaches(index, ef):
        index.set_ef(ef)
        return recall_vs_exact(index.search(q_emb, 10)[0], exact10, 10) >= 0.85

    ef_sparse, ef_dense = smallest_ef(reaches, graphs["sparse"]), smallest_ef(reaches, graphs["hnsw"])
    assert ef_sparse > ef_dense  # the sparser graph needs the wider search
    assert exercise_4_check(ef_sparse, ef_dense, vectors)
    assert not exercise_4_check(10, 10, vectors)  # the starting point: the narrowest search for both
    assert not exercise_4_check(CFG.hnsw_ef_search, CFG.hnsw_ef_search, vectors)  # or the preset's ef for both


# exercise 5: the most frequent sense ---------------------------------------------------------------------


def candidates(nb):
    """Per test query, the senses (in the corpus) of each gold lemma that occurs in the query text."""
    data, out = nb["data"], []
    for text, relevant in zip(nb["test_texts"], nb["test_relevant"]):
        lemmas = data.corpus[next(iter(relevant))].split(": ")[0].split(", ")
        found = [s for lemma in lemmas if lemma.lower() in text.lower() for s in data.senses.get(lemma.lower(), [])]
        out.append([s for s in dict.fromkeys(found) if s in data.corpus])
    return out


def exercise_5_check(mfs_ranked, nb) -> bool:
    data, relevant = nb["data"], nb["test_relevant"]
    ordered = all(data.popularity[a] >= data.popularity[b] for r in mfs_ranked for a, b in zip(r, r[1:]))
    return ordered and mrr_at_k(mfs_ranked, relevant, 10) > mrr_at_k([r[::-1] for r in mfs_ranked], relevant, 10)


def test_exercise_5(nb):
    popularity = nb["data"].popularity
    solution = [sorted(c, key=lambda s: -popularity[s]) for c in candidates(nb)]
    assert exercise_5_check(solution, nb)
    assert not exercise_5_check([[] for _ in nb["test_texts"]], nb)  # the starting point: nothing ranked
    assert not exercise_5_check([sorted(c) for c in candidates(nb)], nb)  # candidates right, order not by popularity
    # what the exercise asks to compare: popularity beats a random order of the same candidates, a little
    expected_random = np.mean([sum(1 / r for r in range(1, min(len(c), 10) + 1)) / len(c) if set(c) & rel else 0.0
                               for c, rel in zip(solution, nb["test_relevant"])])
    assert expected_random < mrr_at_k(solution, nb["test_relevant"], 10) < expected_random + 0.05
