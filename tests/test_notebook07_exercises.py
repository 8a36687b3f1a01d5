"""Notebook 07's exercises: each check fails on the unsolved stub and passes on the kept solution below."""

import pytest
import torch

from course_lib.benchmark import stored_results
from course_lib.claims import VERDICTS, check_claims
from course_lib.config import get_config
from course_lib.data import load_dataset
from course_lib.index import ExactIndex
from course_lib.metrics import embed_corpus
from course_lib.models import encode, make_encoder
from course_lib.tokenizer import load_tokenizer

CFG = get_config("fast")


# exercise 1: a verdict from two stored results ------------------------------------------------------------


def verdict(a, b):  # the kept solution
    if any(m.get("capped_seeds") or m.get("steps_unverified") for m in (a, b)):
        return "capped: no verdict"
    a, b = ({"spread": {"recall@10": 0.0}} | m if m.get("steps") == 0 else m for m in (a, b))
    if "spread" not in a or "spread" not in b:
        return "one seed"
    gap = a["recall@10"] - b["recall@10"]
    noise = max(a["spread"]["recall@10"], b["spread"]["recall@10"])
    if abs(gap) <= noise:
        return "within noise"
    return "yes" if gap > 0 else "reversed"


def verdict_stub(a, b):
    return "yes"


def check_verdict(fn, results):  # the notebook's check
    for row in check_claims(results):
        if row["reproduced"] == "not run":
            continue
        got = fn(results[row["better"]], results[row["worse"]])
        assert got == row["reproduced"], f"{row['better']} vs {row['worse']}: got {got!r}"


def synthetic_results():
    """Stored-result-shaped entries covering every verdict, independent of what the repository holds now."""
    def m(r10, sd=None, steps=300, **extra):
        return {"recall@10": r10, "steps": steps} | ({"spread": {"recall@10": sd}} if sd is not None else {}) | extra
    return {"in_batch": m(0.5, 0.01), "bm25": m(0.4, steps=0), "in_batch_large": m(0.50, 0.02),
            "in_batch_small": m(0.49, 0.01), "static_hardneg": m(0.4, 0.01), "no_mining": m(0.5, 0.01),
            "retromae_then_in_batch": m(0.4), "mlm_then_in_batch": m(0.3, 0.01), "cbns": m(0.6, 0.01, capped_seeds=[1])}


@pytest.mark.parametrize("results", [synthetic_results(), stored_results("full"), stored_results("fast")],
                         ids=["synthetic", "full", "fast"])
def test_verdict_solution_passes(results):
    check_verdict(verdict, results)


def test_verdict_stub_fails():
    with pytest.raises(AssertionError):
        check_verdict(verdict_stub, synthetic_results())


def test_synthetic_results_cover_every_verdict():
    assert {row["reproduced"] for row in check_claims(synthetic_results())} == set(VERDICTS)


def test_the_old_solution_without_capped_runs_or_untrained_methods_fails():
    def old_verdict(a, b):  # before capped runs and steps == 0
        if "spread" not in a or "spread" not in b:
            return "one seed"
        gap, noise = a["recall@10"] - b["recall@10"], max(a["spread"]["recall@10"], b["spread"]["recall@10"])
        return "within noise" if abs(gap) <= noise else "yes" if gap > 0 else "reversed"

    with pytest.raises(AssertionError):
        check_verdict(old_verdict, synthetic_results())


# exercise 2: a brute-force searcher ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup():
    data = load_dataset("wordnet", "fast")
    tokenizer = load_tokenizer(data, CFG.vocab_size)
    torch.manual_seed(0)
    model = make_encoder(CFG, tokenizer)
    ids, docs = embed_corpus(model, tokenizer, data, max_length=CFG.max_doc_len)
    index = ExactIndex(docs.shape[1])
    index.add(ids, docs)
    texts = data.split_items("test")[1][:10]
    return model, tokenizer, ids, docs, index, texts


def make_searcher(model, tokenizer, ids, docs):  # the kept solution
    def searcher(text, k):
        q = encode(model, tokenizer, [text], max_length=CFG.max_query_len)[0]  # (D,)
        scores = docs @ q  # (N,)
        top = torch.topk(scores, k)
        return [ids[j] for j in top.indices.tolist()], top.values.tolist()
    return searcher


def searcher_stub(text, k):
    return [], []


def check_searcher(fn, model, tokenizer, index, texts, k=10):  # the notebook's check
    for text in texts:
        got, _ = fn(text, k)
        expected, _ = index.search(encode(model, tokenizer, [text], max_length=CFG.max_query_len), k)
        assert list(got) == expected[0]


def test_searcher_solution_passes(setup):
    model, tokenizer, ids, docs, index, texts = setup
    check_searcher(make_searcher(model, tokenizer, ids, docs), model, tokenizer, index, texts)


def test_searcher_stub_fails(setup):
    model, tokenizer, ids, docs, index, texts = setup
    with pytest.raises(AssertionError):
        check_searcher(searcher_stub, model, tokenizer, index, texts)
