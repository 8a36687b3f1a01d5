"""Seeds of a benchmark method: one ``results.json`` entry from its runs (mean, sample standard deviation, each
seed's figures), pooling seeds run at different times into one entry, and the orderings the course may state.

A full-preset seed of a pretrained method takes tens of minutes on 2 cores, so its seeds need not run in one
call: ``python -m course_lib.benchmark … --seeds 1 --first-seed 1 --merge`` adds seed 1 to the seeds already
stored for each named method (``pool_seeds``). Each seed's row keeps the commit and date that made it.
"""

import statistics

from course_lib.metrics import spread_verdict

REPORTED = ("recall@1", "recall@5", "recall@10", "recall@20", "recall@50", "recall@100", "mrr@10", "ndcg@10")


def mean_sd(m: dict, key: str) -> str:
    """A stored metric as 'mean ± sd' over seeds, or the single value."""
    return f"{m[key]:.3f}" + (f" ± {m['spread'][key]:.3f}" if "spread" in m else "")


def mean_sd_of(values: list[float], equal_sd: bool = True) -> str:
    """Values over seeds as 'mean ± sample sd', or the single value; with ``equal_sd=False`` the sd is left out
    when every seed gave the same value (a floor that scores 0.000 in every seed)."""
    shown = len(values) > 1 and (equal_sd or len(set(values)) > 1)
    return f"{statistics.fmean(values):.3f}" + (f" ± {statistics.stdev(values):.3f}" if shown else "")


def ordering(a: dict, b: dict, key: str = "recall@10") -> tuple[float, str]:
    """Gap ``a − b`` of a stored metric and the verdict the course allows: "above" / "below" only when the gap
    exceeds the larger standard deviation over seeds, else "within noise"; "one seed" when either has none;
    no verdict either when a run of either stopped at its wall-clock cap (its steps then depended on the load)."""
    gap = a[key] - b[key]
    if a.get("capped_seeds") or b.get("capped_seeds"):
        return gap, "a run stopped at its wall-clock cap: no ordering claimed"
    if a.get("steps_unverified") or b.get("steps_unverified"):  # recorded before per-seed steps, close to a cap
        return gap, "a run stopped at its wall-clock cap? (steps unverified): no ordering claimed"
    if "spread" not in a or "spread" not in b:
        return gap, "one seed: no ordering claimed"
    noise = max(a["spread"][key], b["spread"][key])
    return gap, f"{spread_verdict(gap, a['spread'][key], b['spread'][key])} (largest sd {noise:.3f})"


def _seed_extras(extra: dict) -> dict:
    """What a run reports besides ``REPORTED`` that is judged over seeds, from its extras (a ``MethodResult``'s
    ``extra``, or a stored one-seed entry): a SimBERT run's generation scores (token F1 and BLEU-4 of each output
    and floor) and the recipe's hybrid test metrics."""
    g = extra.get("generation", {})
    out = {"generation": {k: v for k, v in g.items() if k.startswith(("token_f1_", "bleu_"))}} if g else {}
    return out | ({"test_hybrid": extra["test_hybrid"]} if extra.get("test_hybrid") else {})


def generation_runs(entry: dict) -> list[dict]:
    """A SimBERT entry's generation scores, one dict per seed whose ``per_seed`` row carries them, else the
    entry's own (its first seed's) as the only run: what a mean and spread over seeds are computed from."""
    return [row["generation"] for row in entry.get("per_seed", []) if row.get("generation")] or [entry["generation"]]


def summarize_seeds(runs: list, seeds: list[int]) -> dict:
    """One results.json entry from a method's runs (``course_lib.recipes.MethodResult``): the mean of each
    reported metric (and of the training cost) and the ``seeds``, with ``spread`` (the sample standard deviation
    over seeds) and ``per_seed`` when there is more than one run. The extras (configuration, generation scores, step cost) are
    those of the first seed's run; each seed's generation scores and hybrid test metrics are also kept in
    ``per_seed``, with its training seconds."""
    first = runs[0]
    entry = {k: statistics.fmean(r.metrics[k] for r in runs) for k in REPORTED} | {
        "train_seconds": round(statistics.fmean(r.train_seconds for r in runs), 1), "steps": first.steps,
        "seeds": seeds}
    if len(runs) > 1:
        entry["spread"] = {k: statistics.stdev(r.metrics[k] for r in runs) for k in REPORTED}
        entry["per_seed"] = [{k: r.metrics[k] for k in REPORTED} | {"seed": s, "steps": r.steps, "stopped": r.stopped,
                                                                     "train_seconds": round(r.train_seconds, 1)}
                             | _seed_extras(r.extra or {}) for r, s in zip(runs, seeds)]
    capped = [s for r, s in zip(runs, seeds) if "time_budget" in r.stopped]
    if capped:  # said in results.md and by ``ordering``: such a run's numbers depend on the machine's load
        entry["capped_seeds"] = capped
    return entry | (first.extra or {})


def seed_rows(entry: dict, base_seed: int) -> list[dict]:
    """Each seed's figures in a stored entry, as ``per_seed`` rows that name their commit and date. A one-seed
    entry is one row, with its generation scores and hybrid metrics when it has them; its seed is ``seeds[0]``
    when recorded, else ``base_seed`` (the preset's ``cfg.seed``, which a one-seed run without ``--first-seed``
    uses)."""
    stamp = {"commit": entry.get("commit", "unknown"), "date": entry.get("date", "unknown")}
    if "per_seed" in entry:
        return [stamp | {"train_seconds": entry["train_seconds"]} | row for row in entry["per_seed"]]
    row = {k: entry[k] for k in REPORTED} | {"seed": entry.get("seeds", [base_seed])[0], "steps": entry["steps"],
                                             "train_seconds": entry["train_seconds"]}
    return [stamp | row | _seed_extras(entry)]


def check_poolable(stored: dict, config: dict | None, seeds: list[int], base_seed: int,
                   name: str = "the stored entry") -> None:
    """Raise unless new runs of ``seeds`` made under ``config`` can be pooled with a ``stored`` entry: the same
    configuration, and none of its seeds already stored. The benchmark asks before anything trains, so that a
    refusal costs nothing; ``pool_seeds`` asks again before it pools."""
    if stored.get("config") != config:
        old, new = stored.get("config") or {}, config or {}
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ValueError(f"cannot pool seeds: {name} was made under another configuration (differs in "
                         f"{diff or 'config missing'}); drop --first-seed to replace the entry")
    taken = sorted(r["seed"] for r in seed_rows(stored, base_seed))
    both = sorted(set(taken) & set(seeds))
    if both:
        raise ValueError(f"cannot pool seeds: seed(s) {both} are already stored: {name} already stores seeds {taken}; "
                         f"pass a --first-seed above {max(taken)}, or drop --first-seed to replace the entry")


def pool_seeds(stored: dict, new: dict, base_seed: int) -> dict:
    """One entry from a stored entry and a new one of the same method, made under the same configuration with
    other seeds: the means, spread and ``per_seed`` rows recomputed over all their seeds (sorted), the extras of
    the lowest seed's entry, the latest commit and date on top and each seed's own in its row. Raises when the
    configurations differ or a seed is in both (the entry is then left as it was)."""
    old_rows, new_rows = seed_rows(stored, base_seed), seed_rows(new, base_seed)
    check_poolable(stored, new.get("config"), [r["seed"] for r in new_rows], base_seed)
    rows = sorted(old_rows + new_rows, key=lambda r: r["seed"])
    lowest = stored if rows[0] in old_rows else new
    pooled = {k: v for k, v in lowest.items() if k not in ("spread", "per_seed", "seeds", "capped_seeds")}
    pooled |= {k: statistics.fmean(r[k] for r in rows) for k in REPORTED}
    pooled |= {"train_seconds": round(statistics.fmean(r["train_seconds"] for r in rows), 1),
               "seeds": [r["seed"] for r in rows], "spread": {k: statistics.stdev(r[k] for r in rows) for k in REPORTED},
               "per_seed": rows, "commit": new.get("commit", "unknown"), "date": new.get("date", "unknown"),
               "wall_seconds": round(stored.get("wall_seconds", 0) + new.get("wall_seconds", 0), 1)}
    capped = sorted(set(stored.get("capped_seeds", [])) | set(new.get("capped_seeds", [])))
    if capped:
        pooled["capped_seeds"] = capped
    return pooled
