"""Where a stored result came from, and whether it still describes the presets.

Each benchmark entry in ``results/<preset>/results.json`` records the commit that produced it and the preset's
``Config`` it ran under (``config``, without the seed, which the entry records separately). A notebook's
"at full scale" section reads those entries; ``stale_methods`` lists the ones whose recorded configuration no
longer matches ``course_lib.config.PRESETS`` (a test runs it), so numbers produced under an old preset cannot
sit in a notebook unnoticed.

Entries written before the benchmark recorded configurations get one from git: ``backfill_configs`` finds the
commit that first stored the entry's numbers in results.json and reads ``course_lib/config.py`` at that commit
(``config_source`` says so). Run it as ``python -m course_lib.provenance --backfill fast full``.
"""

import argparse
import dataclasses
import json
import subprocess
from pathlib import Path

from course_lib.config import PRESETS, Config

ROOT = Path(__file__).resolve().parent.parent
IGNORED = ("seed",)  # a method's seeds are recorded with its numbers; the preset's base seed is not a scale knob


def recorded_config(cfg: Config) -> dict:
    """The fields of ``cfg`` a results entry records (everything but the seed)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in IGNORED}


def config_differences(recorded: dict, preset: str) -> list[str]:
    """``"field: recorded → now"`` for every field where ``recorded`` differs from ``PRESETS[preset]``. A field
    added to ``Config`` after the entry was made, or removed from it since, is not counted: only a knob that
    both then and now had, with another value, makes an entry stale."""
    now = recorded_config(PRESETS[preset])
    return [f"{k}: {recorded[k]!r} → {v!r}" for k, v in now.items() if k in recorded and recorded[k] != v]


def stale_methods(preset: str, results: dict) -> dict[str, list[str]]:
    """Methods of a results dict whose recorded configuration is missing or differs from the preset's today,
    with the differences (empty dict: every entry still describes the preset)."""
    stale = {}
    for name, entry in results["methods"].items():
        if "config" not in entry:
            stale[name] = ["no configuration recorded"]
        elif diff := config_differences(entry["config"], preset):
            stale[name] = diff
    return stale


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def _config_at(commit: str, preset: str) -> dict:
    """``PRESETS[preset]`` as ``course_lib/config.py`` defined it at ``commit`` (executed in a fresh namespace)."""
    source = _git("show", f"{commit}:course_lib/config.py")
    namespace: dict = {"__name__": "course_lib_config_at_" + commit}
    exec(compile(source, f"{commit}:course_lib/config.py", "exec"), namespace)  # noqa: S102 (our own file)
    return recorded_config(namespace["PRESETS"][preset])


def _first_commit_storing(path: str, name: str, metrics: dict) -> str:
    """The oldest commit at which ``path`` holds ``name`` with these exact numbers (recall@10 and mrr@10)."""
    found = None
    for commit in _git("log", "--format=%H", "--", path).split():
        try:
            entry = json.loads(_git("show", f"{commit}:{path}"))["methods"].get(name)
        except (subprocess.CalledProcessError, json.JSONDecodeError, KeyError):
            continue
        if entry and all(entry.get(k) == metrics[k] for k in ("recall@10", "mrr@10")):
            found = commit  # the log runs newest first: keep going back while the numbers are the same
        elif found:
            break
    if found is None:
        raise LookupError(f"no commit of {path} stores {name} with recall@10 {metrics['recall@10']}")
    return found


def backfill_configs(preset: str) -> list[str]:
    """Give every entry of ``results/<preset>/results.json`` without a ``config`` the one from git (see module
    doc); returns the names filled. The file is rewritten only when something was filled."""
    rel = f"results/{preset}/results.json"
    results = json.loads((ROOT / rel).read_text())
    filled = []
    for name, entry in results["methods"].items():
        if "config" in entry:
            continue
        commit = entry.get("commit", "").split("+")[0] or _first_commit_storing(rel, name, entry)
        entry["config"] = _config_at(commit, preset)
        entry["config_source"] = f"backfilled from course_lib/config.py at {commit[:10]}"
        filled.append(name)
    if filled:
        (ROOT / rel).write_text(json.dumps(results, indent=2) + "\n")
    return filled


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Backfill or check the configurations recorded in results.json.")
    parser.add_argument("--backfill", nargs="*", default=[], choices=sorted(PRESETS))
    args = parser.parse_args(argv)
    for preset in args.backfill:
        print(preset, "filled:", backfill_configs(preset))
    for preset in sorted(PRESETS):
        path = ROOT / "results" / preset / "results.json"
        if path.exists():
            stale = stale_methods(preset, json.loads(path.read_text()))
            print(f"{preset}: {len(stale)} stale entries", *(f"  {n}: {'; '.join(d)}" for n, d in stale.items()), sep="\n")


if __name__ == "__main__":
    main()
