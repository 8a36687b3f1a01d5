"""Your own retrieval data: a BEIR-like folder read into ``course_lib.data.RetrievalData``.

Layout (``data/README.md``): ``corpus.jsonl`` and ``queries.jsonl`` (``{"id", "text"}`` per line), ``qrels.tsv``
(test split) and optionally ``qrels_dev.tsv`` (dev split), ``query-id<TAB>doc-id<TAB>score`` per line, and
optionally ``train.jsonl`` (``{"query": text, "positive": doc_id, "negatives": [doc_id, …]}``). Every file is
UTF-8 (a leading byte-order mark is accepted). Every problem raises before anything is returned, naming the
file, the line and what to change. ``load_dataset(folder)`` and ``course_lib.data.load_folder`` call this loader.
"""

import json
import math
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from course_lib.data import SPLITS, RetrievalData, TrainExample


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered lines of a UTF-8 text file. A leading byte-order mark (which Windows editors add) is dropped;
    a byte that is not UTF-8 raises ``ValueError`` naming the file, the line and the column."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            yield from enumerate(f, 1)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _not_utf8(path: Path) -> ValueError:
    """The error for the first line of ``path`` that does not decode as UTF-8."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return ValueError(
                    f"{path}:{lineno}: byte 0x{raw[e.start]:02x} at column {e.start + 1} is not UTF-8 (the file is "
                    "in another encoding, such as Latin-1 or Windows-1252); save the file as UTF-8, e.g. with "
                    f"iconv -f latin1 -t utf-8 {path.name} > utf8.tmp && mv utf8.tmp {path.name}"
                )
    return ValueError(f"{path}: is not UTF-8; save the file as UTF-8")


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict]]:
    rows = []
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        for key in required:
            if key not in row:
                raise ValueError(f"{path}:{lineno}: missing field {key!r} (required: {list(required)})")
        for key in ("id", "text", "query"):
            if key in row and not isinstance(row[key], str):
                raise ValueError(f"{path}:{lineno}: field {key!r} must be a string, got {row[key]!r}")
        rows.append((lineno, row))
    return rows


def _read_unique(path: Path) -> dict[str, str]:
    out = {}
    for lineno, row in _read_jsonl(path, ("id", "text")):
        if row["id"] in out:
            raise ValueError(f"{path}:{lineno}: duplicate id {row['id']!r}")
        out[row["id"]] = row["text"]
    return out


def _score(path: Path, lineno: int, text: str) -> float:
    """A qrels score: a finite number (``nan`` or ``inf`` would silently judge nothing, or everything)."""
    try:
        score = float(text)
    except ValueError:
        raise ValueError(f"{path}:{lineno}: score {text!r} is not a number") from None
    if not math.isfinite(score):
        raise ValueError(
            f"{path}:{lineno}: score {text!r} is not a finite number, so it cannot say whether the document is "
            "relevant; use a number such as 1 (relevant) or 0 (not relevant)"
        )
    return score


def _read_qrels(path: Path, queries: dict, corpus: dict) -> dict[str, set[str]]:
    qrels: dict[str, set[str]] = defaultdict(set)
    for lineno, line in _lines(path):
        cols = line.rstrip("\n").split("\t")
        if not line.strip() or (lineno == 1 and cols[0] in {"query-id", "query_id", "qid"}):
            continue
        if len(cols) != 3:
            raise ValueError(f"{path}:{lineno}: expected 3 tab-separated columns (query-id, doc-id, score)")
        qid, did, score = cols[0], cols[1], _score(path, lineno, cols[2])
        if qid not in queries:
            raise ValueError(f"{path}:{lineno}: query id {qid!r} is not in queries.jsonl")
        if did not in corpus:
            raise ValueError(f"{path}:{lineno}: doc id {did!r} is not in corpus.jsonl")
        if score > 0:
            qrels[qid].add(did)
    return dict(qrels)


def _read_train(path: Path, corpus: dict) -> list[tuple[int, TrainExample]]:
    """Numbered training rows; ``positive`` must be a doc id (a string) and ``negatives`` a list of them, all in the
    corpus."""
    train = []
    for lineno, row in _read_jsonl(path, ("query", "positive")):
        positive, negatives = row["positive"], row.get("negatives", [])
        if not isinstance(positive, str):
            raise ValueError(
                f"{path}:{lineno}: 'positive' must be a doc id (a string), got a {type(positive).__name__}: "
                f'{positive!r}; write one id, e.g. "positive": "d1"'
            )
        if not isinstance(negatives, list) or not all(isinstance(n, str) for n in negatives):
            raise ValueError(
                f"{path}:{lineno}: 'negatives' must be a list of doc ids (strings), got {negatives!r}; "
                'write e.g. "negatives": ["d7", "d9"]'
            )
        for did in [positive, *negatives]:
            if did not in corpus:
                raise ValueError(f"{path}:{lineno}: doc id {did!r} is not in corpus.jsonl")
        train.append((lineno, TrainExample(row["query"], positive, tuple(negatives))))
    return train


def load_folder(path: str | os.PathLike) -> RetrievalData:
    """Load your own data from a folder (layout in ``data/README.md``).

    ``qrels.tsv`` judges the test split and the optional ``qrels_dev.tsv`` the dev split; only queries with a
    relevant document are evaluated. ``train.jsonl`` rows name corpus ids: ``{"query": text, "positive":
    doc_id, "negatives": [doc_id, …]}``.

    Checks (a missing required file raises ``FileNotFoundError``; every other problem ``ValueError`` naming file,
    line and problem): UTF-8 text (a leading BOM is dropped), valid JSON objects with the required string
    fields, unique ids, a non-empty corpus, 3 tab-separated qrels columns with a finite numeric score, query
    and doc ids that exist, and ids (strings, not lists or objects) in ``train.jsonl``.
    """
    folder = Path(path)
    need = ["corpus.jsonl", "queries.jsonl", "qrels.tsv"]
    missing = [n for n in need if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks {missing}. A data folder needs corpus.jsonl, queries.jsonl and qrels.tsv, and may "
            "have qrels_dev.tsv and train.jsonl (see data/README.md)"
        )
    corpus = _read_unique(folder / "corpus.jsonl")
    if not corpus:
        raise ValueError(f"{folder / 'corpus.jsonl'}: the corpus is empty; add one {{'id','text'}} per line")
    all_queries = _read_unique(folder / "queries.jsonl")
    queries, qrels = {s: {} for s in SPLITS}, {s: {} for s in SPLITS}
    for split, name in (("test", "qrels.tsv"), ("dev", "qrels_dev.tsv")):
        if (folder / name).is_file():
            qrels[split] = _read_qrels(folder / name, all_queries, corpus)
            queries[split] = {q: all_queries[q] for q in qrels[split]}
    train = _read_train(folder / "train.jsonl", corpus) if (folder / "train.jsonl").is_file() else []
    for lineno, example in train:
        queries["train"][f"train-{lineno}"] = example.query
        qrels["train"][f"train-{lineno}"] = {example.positive}
    return RetrievalData(folder.name, "custom", corpus, dict(corpus), queries, qrels, [t for _, t in train])


def write_folder(data: RetrievalData, path: str | os.PathLike, *, n_docs: int, n_train: int | None = None,
                 seed: int = 0) -> Path:
    """Write a small data set in the layout ``load_folder`` reads, cut from ``data``: ``n_docs`` corpus documents
    (those relevant to the sampled test and dev queries first — at most a quarter and an eighth of ``n_docs`` —
    so every kept query can be answered, then random positives of training pairs, then random others), those
    test and dev queries, and up to ``n_train`` training pairs whose positive is kept (all of them when None). For notebook 07 and the tests: a user's folder in miniature.
    Nothing is written unless every argument is valid; the folder must not exist yet."""
    if isinstance(n_docs, bool) or not isinstance(n_docs, int) or not 1 <= n_docs <= len(data.corpus):
        raise ValueError(f"n_docs must be an int in [1, {len(data.corpus)}] (the source corpus), got {n_docs!r}")
    if n_train is not None and (isinstance(n_train, bool) or not isinstance(n_train, int) or n_train < 0):
        raise ValueError(f"n_train must be None or an int >= 0, got {n_train!r}")
    folder = Path(path)
    if folder.exists():
        raise FileExistsError(f"{folder} exists; write_folder makes a new folder (remove it or choose another path)")
    import random

    rng = random.Random(seed)
    kept: dict[str, None] = {}
    chosen = {s: [] for s in ("test", "dev")}
    for split, share in (("test", 4), ("dev", 8)):
        qids = sorted(data.qrels.get(split, {}))
        rng.shuffle(qids)
        limit = len(kept) + n_docs // share
        for q in qids:
            rel = data.qrels[split][q]
            if rel <= data.corpus.keys() and len(kept) + len(rel - kept.keys()) <= limit:
                kept.update(dict.fromkeys(sorted(rel)))
                chosen[split].append(q)
    positives = sorted({e.positive for e in data.train if e.positive in data.corpus} - kept.keys())
    others = sorted(set(data.corpus) - kept.keys() - set(positives))
    rng.shuffle(positives)
    rng.shuffle(others)
    kept.update(dict.fromkeys((positives + others)[: n_docs - len(kept)]))
    train = [e for e in data.train if e.positive in kept]
    rng.shuffle(train)
    train = train[: len(train) if n_train is None else n_train]
    folder.mkdir(parents=True)

    def jsonl(name, rows):
        (folder / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    jsonl("corpus.jsonl", [{"id": d, "text": data.corpus[d]} for d in kept])
    jsonl("queries.jsonl", [{"id": q, "text": data.queries[s][q]} for s in chosen for q in chosen[s]])
    for split, name in (("test", "qrels.tsv"), ("dev", "qrels_dev.tsv")):
        rows = [f"{q}\t{d}\t1\n" for q in chosen[split] for d in sorted(data.qrels[split][q] & kept.keys())]
        (folder / name).write_text("".join(rows), encoding="utf-8")
    jsonl("train.jsonl", [{"query": e.query, "positive": e.positive,
                           "negatives": [n for n in e.negatives if n in kept]} for e in train])
    return folder
