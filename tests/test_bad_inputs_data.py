"""Bad inputs to the data side of the course library, swept one kind at a time.

Covers the user-folder loader (``course_lib.data.load_folder`` / ``load_dataset``: encodings, BOMs, bad
scores, nested ids, wrong argument types), the cache folder (``COURSE_CACHE``), the tokenizer (reproducible
training, a cache that holds some other tokenizer) and the embeddings cache of ``encode_cached`` (wrong width,
NaN). Each case checks the error type, that the message names the problem, and where it matters that nothing
on disk changed. The parametrized groups at the end pin bad inputs that already gave clear errors.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models

from course_lib.config import get_config
from course_lib.data import load_dataset, load_folder
from course_lib.models import encode_cached, make_encoder
from course_lib.tokenizer import load_tokenizer, train_tokenizer
from course_lib.utils import cache_dir, seed_everything

REPO = Path(__file__).resolve().parent.parent
CORPUS = [{"id": "d1", "text": "The cat sat on the mat."}, {"id": "d2", "text": "Dogs chase cars."},
          {"id": "d3", "text": "Stock markets fell sharply."}, {"id": "d4", "text": "A recipe for chocolate cake."}]
QUERIES = [{"id": "q1", "text": "where did the cat sit"}, {"id": "q2", "text": "animals chasing vehicles"},
           {"id": "q3", "text": "how to bake a cake"}]
TRAIN = [{"query": "feline on a rug", "positive": "d1", "negatives": ["d2", "d3"]},
         {"query": "dessert baking", "positive": "d4"}]


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def make_folder(root: Path, **override) -> Path:
    """A valid tiny data folder under ``root``; ``override`` replaces a file's text (``qrels__tsv=...``)."""
    files = {"corpus.jsonl": jsonl(CORPUS), "queries.jsonl": jsonl(QUERIES), "qrels.tsv": "query-id\tdoc-id\tscore\n"
             "q1\td1\t1\nq2\td2\t1\n", "qrels_dev.tsv": "q3\td4\t2\n", "train.jsonl": jsonl(TRAIN)}
    files.update({k.replace("__", "."): v for k, v in override.items()})
    folder = root / "mydata"
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def expect_error(folder: Path, file: str, line: int, message: str, error=ValueError):
    """``load_folder`` raises naming ``folder/file:line`` and ``message``, and leaves the folder as it was."""
    before = snapshot(folder)
    with pytest.raises(error, match=re.escape(f"{folder / file}:{line}:") + ".*" + message):
        load_folder(folder)
    assert snapshot(folder) == before

# 32 short texts with many count ties: the case where HF's trainer broke ties in hash-map order
TIE_TEXTS = [
    f"the {a} {b} sat on the {c}"
    for a, b, c in zip(
        "red blue green black white small big old".split() * 4,
        "cat dog fox owl bat rat cow pig".split() * 4,
        "mat rug bed sofa chair table floor roof".split() * 4,
    )
]
TRAIN_IN_SUBPROCESS = (
    "import json, sys; from course_lib.tokenizer import train_tokenizer; "
    "tok = train_tokenizer(json.loads(sys.stdin.read()), 200); "
    "print(json.dumps(sorted(tok.get_vocab().items())))"
)


# ---------------------------------------------------------------------------------------------------------
# tokenizer


def test_train_tokenizer_is_reproducible_across_processes():
    # each process gets a fresh hash seed, which is what made the learned token set differ from run to run
    vocabs = []
    for _ in range(4):
        out = subprocess.run(
            [sys.executable, "-c", TRAIN_IN_SUBPROCESS], input=json.dumps(TIE_TEXTS), capture_output=True,
            text=True, cwd=REPO, check=True, timeout=300,
        )
        vocabs.append(out.stdout)
    assert len(TIE_TEXTS) == 32 and all(v == vocabs[0] for v in vocabs), "different vocabularies in 4 runs"


def small_data(tmp_path: Path):
    return load_folder(make_folder(tmp_path, corpus__jsonl=jsonl({"id": f"d{i}", "text": t} for i, t in enumerate(TIE_TEXTS))))


def test_tokenizer_cache_of_another_tokenizer_is_retrained(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    data = small_data(tmp_path)
    good = load_tokenizer(data, 200)
    [path] = (tmp_path / "cache" / "tokenizers").glob("*.json")
    Tokenizer(models.WordPiece(unk_token="[UNK]")).save(str(path))  # valid JSON, but an empty vocabulary
    with pytest.warns(UserWarning, match=r"tokenizer cache .* is not the tokenizer .* retraining"):
        again = load_tokenizer(data, 200)
    assert again.get_vocab() == good.get_vocab()
    assert Tokenizer.from_file(str(path)).get_vocab() == good.get_vocab()  # the bad cache was overwritten


def test_tokenizer_cache_that_does_not_parse_warns(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    data = small_data(tmp_path)
    good = load_tokenizer(data, 200)
    [path] = (tmp_path / "cache" / "tokenizers").glob("*.json")
    path.write_text('{"truncated": ')
    with pytest.warns(UserWarning, match="does not load"):
        assert load_tokenizer(data, 200).get_vocab() == good.get_vocab()


@pytest.fixture(scope="module")
def tiny_model():
    tok = train_tokenizer(TIE_TEXTS, 200)
    seed_everything(0)
    return make_encoder(get_config("fast"), tok).eval(), tok


@pytest.mark.parametrize(
    "bad, problem",
    [
        (lambda n, d: torch.zeros(n, d // 2), r"shape \(8, 64\), expected \(8, 128\)"),
        (lambda n, d: torch.zeros(n + 1, d), r"shape \(9, 128\), expected \(8, 128\)"),
        (lambda n, d: torch.full((n, d), float("nan")), "non-finite"),
        (lambda n, d: {"emb": torch.zeros(n, d)}, "not a tensor"),
    ],
    ids=["wrong-width", "wrong-rows", "all-nan", "not-a-tensor"],
)
def test_embedding_cache_with_bad_content_is_recomputed(tiny_model, tmp_path, monkeypatch, bad, problem):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    model, tok = tiny_model
    texts = TIE_TEXTS[:8]
    good = encode_cached(model, tok, texts, key="tiny")
    [path] = (tmp_path / "embeddings").glob("*.pt")
    torch.save(bad(len(texts), model.dim), path)
    with pytest.warns(UserWarning, match=problem + ".*recomputing"):
        again = encode_cached(model, tok, texts, key="tiny")
    torch.testing.assert_close(again, good)
    torch.testing.assert_close(torch.load(path, weights_only=True), good)  # overwritten with the good one


# ---------------------------------------------------------------------------------------------------------
# your own data folder


def test_qrels_nan_score_is_rejected(tmp_path):
    folder = make_folder(tmp_path, qrels__tsv="q1\td1\t1\nq2\td2\tnan\n")
    expect_error(folder, "qrels.tsv", 2, r"score 'nan' is not a finite number")


@pytest.mark.parametrize("score", ["inf", "-inf", "NaN"])
def test_qrels_other_non_finite_scores_are_rejected(tmp_path, score):
    folder = make_folder(tmp_path, qrels_dev__tsv=f"q3\td4\t{score}\n")
    expect_error(folder, "qrels_dev.tsv", 1, f"score '{score}' is not a finite number")


@pytest.mark.parametrize("file", ["corpus.jsonl", "queries.jsonl", "qrels.tsv", "qrels_dev.tsv", "train.jsonl"])
def test_utf8_bom_is_accepted(tmp_path, file):
    plain = load_folder(make_folder(tmp_path / "plain"))
    folder = make_folder(tmp_path / "bom")
    path = folder / file
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_folder(folder).corpus == plain.corpus
    assert load_folder(folder).qrels == plain.qrels and load_folder(folder).train == plain.train


@pytest.mark.parametrize(
    "file, line, good, bad",
    [("corpus.jsonl", 3, b"Stock", b"St\xe9ck"), ("qrels.tsv", 3, b"q2", b"q\xe92"), ("train.jsonl", 2, b"dessert", b"d\xe9ssert")],
)
def test_non_utf8_byte_names_file_and_line(tmp_path, file, line, good, bad):
    folder = make_folder(tmp_path)
    path = folder / file
    path.write_bytes(path.read_bytes().replace(good, bad))  # e.g. a Latin-1 "é"
    expect_error(folder, file, line, r"byte 0xe9 at column \d+ is not UTF-8.*save the file as UTF-8")


@pytest.mark.parametrize(
    "row, problem",
    [
        ({"query": "x", "positive": ["d1"]}, r"'positive' must be a doc id \(a string\), got a list"),
        ({"query": "x", "positive": {"id": "d1"}}, r"'positive' must be a doc id \(a string\), got a dict"),
        ({"query": "x", "positive": "d1", "negatives": [["d2"]]}, r"'negatives' must be a list of doc ids \(strings\)"),
        ({"query": "x", "positive": "d1", "negatives": [{"id": "d2"}]}, r"'negatives' must be a list of doc ids"),
        ({"query": ["x"], "positive": "d1"}, "field 'query' must be a string"),
    ],
    ids=["positive-list", "positive-object", "negative-list", "negative-object", "query-list"],
)
def test_train_nested_ids_name_file_and_line(tmp_path, row, problem):
    folder = make_folder(tmp_path, train__jsonl=jsonl(TRAIN[:1]) + jsonl([row]))
    expect_error(folder, "train.jsonl", 2, problem)


@pytest.mark.parametrize("arg", [123, None, b"wordnet", ["wordnet"]])
def test_load_dataset_rejects_non_paths(arg):
    with pytest.raises(TypeError, match=r"load_dataset expects .*'wordnet'.* or a folder path .*got "):
        load_dataset(arg)


def test_course_cache_pointing_at_a_file(tmp_path, monkeypatch):
    target = tmp_path / "not-a-folder"
    target.write_text("keep me")
    monkeypatch.setenv("COURSE_CACHE", str(target))
    with pytest.raises(NotADirectoryError, match=r"COURSE_CACHE=.*not-a-folder.* is a file, not a folder"):
        cache_dir()
    assert target.read_text() == "keep me" and sorted(tmp_path.iterdir()) == [target]


# ---------------------------------------------------------------------------------------------------------
# bad inputs that already gave clear errors: kept here so that they stay clear

ALREADY_CLEAR_FOLDER = [
    ("corpus.jsonl", jsonl(CORPUS[:1]) + '{"id": "d2", "text": \n' + jsonl(CORPUS[2:]), 2, "not valid JSON"),
    ("queries.jsonl", jsonl(QUERIES[:2]) + '["q3", "text"]\n', 3, "expected a JSON object, got list"),
    ("corpus.jsonl", jsonl(CORPUS[:2]) + jsonl([{"id": "d3", "body": "x"}]) + jsonl(CORPUS[3:]), 3, "missing field 'text'"),
    ("corpus.jsonl", jsonl(CORPUS[:1]) + jsonl([{"id": "d2", "text": 42}]) + jsonl(CORPUS[2:]), 2, "'text' must be a string"),
    ("corpus.jsonl", jsonl(CORPUS) + jsonl([{"id": 7, "text": "x"}]), 5, "'id' must be a string"),
    ("queries.jsonl", jsonl(QUERIES) + jsonl([{"id": "q1", "text": "again"}]), 4, "duplicate id 'q1'"),
    ("qrels.tsv", "q1\td1\t1\nq2\td2\n", 2, "expected 3 tab-separated columns"),
    ("qrels.tsv", "q1\td1\t1\tx\n", 1, "expected 3 tab-separated columns"),
    ("qrels.tsv", "q1\td1\trelevant\n", 1, "score 'relevant' is not a number"),
    ("qrels.tsv", "q1\td1\t1\nq9\td2\t1\n", 2, "query id 'q9' is not in queries.jsonl"),
    ("qrels_dev.tsv", "q3\td4\t1\nq3\td99\t1\n", 2, "doc id 'd99' is not in corpus.jsonl"),
    ("train.jsonl", jsonl(TRAIN[:1]) + jsonl([{"query": "x", "positive": "d1", "negatives": ["nope"]}]), 2,
     "doc id 'nope' is not in corpus.jsonl"),
    ("train.jsonl", jsonl([{"query": "x"}]), 1, "missing field 'positive'"),
    ("train.jsonl", jsonl([{"query": "x", "positive": "d1", "negatives": "d2"}]), 1, "'negatives' must be a list"),
]


@pytest.mark.parametrize("file, text, line, problem", ALREADY_CLEAR_FOLDER)
def test_already_clear_folder_errors(tmp_path, file, text, line, problem):
    expect_error(make_folder(tmp_path, **{file.replace(".", "__"): text}), file, line, problem)


@pytest.mark.parametrize("missing", ["corpus.jsonl", "queries.jsonl", "qrels.tsv"])
def test_already_clear_missing_file(tmp_path, missing):
    folder = make_folder(tmp_path)
    (folder / missing).unlink()
    before = snapshot(folder)
    with pytest.raises(FileNotFoundError, match=re.escape(f"lacks ['{missing}']") + ".*see data/README.md"):
        load_folder(folder)
    assert snapshot(folder) == before


@pytest.mark.parametrize(
    "call, error, problem",
    [
        (lambda tmp: load_folder(make_folder(tmp, corpus__jsonl="\n\n")), ValueError, "the corpus is empty"),
        (lambda tmp: load_dataset("no-such-dataset"), ValueError, r"unknown dataset 'no-such-dataset'.*'wordnet'"),
        (lambda tmp: load_dataset(make_folder(tmp), preset="huge"), ValueError, "huge"),
        (lambda tmp: load_folder(make_folder(tmp)).split_items("val"), ValueError, r"unknown split 'val'"),
        (lambda tmp: train_tokenizer([], 200), ValueError, "empty list"),
        (lambda tmp: train_tokenizer(TIE_TEXTS, 50), ValueError, "vocab_size must be an int >= 105"),
        (lambda tmp: train_tokenizer(TIE_TEXTS, "200"), ValueError, "vocab_size must be an int"),
    ],
    ids=["empty-corpus", "unknown-dataset", "unknown-preset", "unknown-split", "no-texts", "vocab-too-small",
         "vocab-not-int"],
)
def test_already_clear_argument_errors(tmp_path, call, error, problem):
    with pytest.raises(error, match=problem):
        call(tmp_path)


@pytest.mark.parametrize(
    "texts, error, problem",
    [("one string", TypeError, r"not a single string; wrap it"), ([], ValueError, "empty list of texts")],
    ids=["string", "empty"],
)
def test_already_clear_encode_errors(tiny_model, tmp_path, monkeypatch, texts, error, problem):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    model, tok = tiny_model
    with pytest.raises(error, match=problem):
        encode_cached(model, tok, texts, key="tiny")
    assert not (tmp_path / "embeddings").exists()  # nothing cached
