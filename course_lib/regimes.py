"""Training regimes measured over seeds: the probes behind the orderings notebooks 02 and 03 state.

Three questions, each answered by runs over several seeds and stored in one JSON file that the notebooks read:

- ``lr_sweep`` (notebook 03): does RetroMAE's start beat MLM's once each is fine-tuned in the regime that suits
  it? The RetroMAE reference fine-tunes gently (lr 2e-5 with a linear decay: staoxiao/RetroMAE,
  examples/retriever/msmarco/README.md), the course at a constant 1e-3. Every start (random, MLM, RetroMAE) is
  fine-tuned at each lr of ``LRS`` with a 10 % warm-up and linear decay, and at the course's constant lr, with a
  dev curve.
- ``small_folder`` (notebook 03): the same starts on a user-style folder cut from the corpus
  (``course_lib.folder.write_folder``) with few training pairs, where pretraining is expected to matter more.
- ``collapse`` (notebook 02): SimBERT from random weights at several lrs, with and without a warm-up. A batch
  whose pooled vectors are all equal has a similarity loss of exactly ln(2n − 1) and a zero gradient through it;
  we record the loss, the mean pairwise cosine of pooled [CLS] vectors on dev queries, and dev R@10.
- ``pretrain_schedule`` (notebook 03): MLM and RetroMAE pretrained at a constant lr and in the reference's shape
  (warm-up, then linear decay: staoxiao/RetroMAE, examples/pretrain/README.md), same peak lr and steps.

Pretrained starts are cached (``cache_dir()/starts``, keyed by the data, the preset's pretraining knobs, the
schedule and the seed; each is seeded before its model is built, so it depends on its seed alone), so a rerun
costs only the fine-tuning. ``python -m course_lib.regimes --preset fast --out results/fast/regimes.json`` runs
all four (the first three measured 53, 14 and 18 minutes on 2 cores shared with other jobs); ``--only`` runs
some and keeps the others already in the file.
"""

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from course_lib.folder import load_folder, write_folder
from course_lib.in_batch import train_in_batch
from course_lib.metrics import evaluate, spread_verdict
from course_lib.models import encode, encoder_from_bert
from course_lib.retromae import make_retromae, pretrain, pretrain_texts
from course_lib.simbert import train_simbert
from course_lib.utils import atomic_path, cache_dir, seed_everything

STARTS = ("random", "mlm", "retromae")
LRS = (1e-4, 3e-4, 1e-3)  # fine-tuning lrs with warm-up + linear decay (the references' schedule shape)
WARMUP_FRACTION = 0.1
SCHEDULES = ("constant", "warmup_linear")  # an lr held, or warmed up over WARMUP_FRACTION then decayed linearly to 0
COLLAPSE_LRS = (3e-4, 2e-3)  # notebook 02: [CLS] from scratch learns at 3e-4, far more slowly at 2e-3
COLLAPSE_WARMUP = (0.0, 0.1)
FOLDER = {"n_docs": 1500, "n_train": 300}  # a small user-style folder: 300 training pairs instead of 36,274
PROBES = ("lr_sweep", "small_folder", "collapse", "pretrain_schedule")


def stored_regimes(preset: str = "fast") -> dict:
    """The probes of the repository's ``results/<preset>/regimes.json`` (each records its command, commit and
    date), for the notebooks."""
    from course_lib.benchmark import stored_json

    return stored_json(preset, "regimes.json", "probes",
                       f"python -m course_lib.regimes --preset {preset} --out results/{preset}/regimes.json")


def regime_name(lr: float, schedule: str) -> str:
    return f"{schedule} lr {lr:g}"


def _dev_scores(model, data, tokenizer, cfg) -> dict:
    m = evaluate(model, data, "dev", tokenizer=tokenizer, ks=(10,), max_query_len=cfg.max_query_len,
                 max_doc_len=cfg.max_doc_len)
    return {"recall@10": round(m["recall@10"], 4), "mrr@10": round(m["mrr@10"], 4)}


def _start_path(cfg, data, kind: str, seed: int, schedule: str = "constant") -> Path:
    from course_lib.data import data_digest

    key = f"{data.name}-{data_digest(data)[:12]}-{cfg.preset}-{cfg.pretrain_steps}-{cfg.pretrain_lr:g}-" \
          f"{cfg.batch_size}-{cfg.hidden_size}x{cfg.num_layers}-{cfg.vocab_size}-s{seed}"
    # "v2": seeded before the model is built (the first probes' starts, at commit 98cf8c2, were not)
    return Path(cache_dir()) / "starts" / f"{kind}-{key}-{schedule}-v2.pt"


def pretrained_start(cfg, data, tokenizer, kind: str, seed: int, schedule: str = "constant") -> tuple:
    """The encoder weights a fine-tuning starts from: ``None`` for "random", else the BERT of a seeded MLM or
    RetroMAE pretraining on ``pretrain_texts(data)`` (cached on disk), and the pretraining's steps and seconds.
    ``schedule``: the pretraining lr, "constant" (``cfg.pretrain_lr``) or "warmup_linear" (``WARMUP_FRACTION``
    warm-up to ``cfg.pretrain_lr``, then linear decay to 0, as the RetroMAE reference pretrains)."""
    if kind not in STARTS:
        raise ValueError(f"kind must be one of {STARTS}, got {kind!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if kind == "random":
        return None, {"steps": 0, "seconds": 0.0}
    path = _start_path(cfg, data, kind, seed, schedule)
    seed_everything(seed, cfg.num_threads)  # the start's initial weights depend on the seed alone
    model = make_retromae(cfg, tokenizer, decoder=kind == "retromae")
    if path.exists():
        saved = torch.load(path, weights_only=False)
        model.bert.load_state_dict(saved["bert"])
        return model.bert, saved["info"]
    warmup = int(cfg.pretrain_steps * WARMUP_FRACTION) if schedule == "warmup_linear" else 0
    model, history, _ = pretrain(cfg.replace(seed=seed), pretrain_texts(data), tokenizer, model=model, progress=False,
                                 warmup_steps=warmup, decay="linear" if warmup else "constant")
    info = {"steps": history.steps, "seconds": round(history.train_seconds, 1), "stopped": history.stopped,
            "schedule": schedule}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"bert": model.bert.state_dict(), "info": info}, tmp)
    return model.bert, info


def finetune_run(cfg, data, tokenizer, bert, *, lr: float, schedule: str, seed: int, pooling: str = "cls",
                 eval_every: int = 100) -> dict:
    """In-batch fine-tuning of ``cfg.train_steps`` from ``bert`` (None: random weights) at ``lr``, ``schedule``
    "constant" or "warmup_linear" (``WARMUP_FRACTION`` warm-up, then linear decay to 0): the dev curve (step 0
    included) and the test metrics."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    ft_cfg = cfg.replace(pooling=pooling, lr=lr, seed=seed)
    seed_everything(seed, cfg.num_threads)
    model = encoder_from_bert(ft_cfg, tokenizer, bert)
    curve = [{"step": 0, **_dev_scores(model, data, tokenizer, cfg)}]
    warmup = int(cfg.train_steps * WARMUP_FRACTION) if schedule == "warmup_linear" else 0
    model, history = train_in_batch(ft_cfg, data, tokenizer, model=model, progress=False, warmup_steps=warmup,
                                    decay="linear" if schedule == "warmup_linear" else "constant",
                                    eval_fn=lambda m: _dev_scores(m, data, tokenizer, cfg), eval_every=eval_every)
    curve += [{k: e[k] for k in ("step", "recall@10", "mrr@10")} for e in history.evals]
    test = evaluate(model, data, "test", tokenizer=tokenizer, max_query_len=cfg.max_query_len,
                    max_doc_len=cfg.max_doc_len)
    return {"dev_curve": curve, "test": {k: round(test[k], 4) for k in ("recall@10", "mrr@10")},
            "steps": history.steps, "stopped": history.stopped, "train_seconds": round(history.train_seconds, 1)}


def summarize(runs: list[dict]) -> dict:
    """Mean and sample standard deviation over seeds of the test metrics and of every dev-curve point."""
    out = {"seeds": len(runs), "steps": [r["steps"] for r in runs], "stopped": [r["stopped"] for r in runs]}
    for key in ("recall@10", "mrr@10"):
        values = [r["test"][key] for r in runs]
        out[key] = round(statistics.fmean(values), 4)
        out[f"{key}_sd"] = round(statistics.stdev(values), 4) if len(values) > 1 else None
    steps = [p["step"] for p in runs[0]["dev_curve"]]
    out["dev_curve"] = [{"step": s, **{k: round(statistics.fmean(r["dev_curve"][i][k] for r in runs), 4)
                                       for k in ("recall@10", "mrr@10")}} for i, s in enumerate(steps)]
    return out


def verdict(a: dict, b: dict, key: str = "recall@10") -> str:
    """"above" / "below" only when the gap of the means exceeds the larger standard deviation over seeds."""
    if a.get(f"{key}_sd") is None or b.get(f"{key}_sd") is None:
        return "one seed: no ordering"
    return spread_verdict(a[key] - b[key], a[f"{key}_sd"], b[f"{key}_sd"])


def _starts_grid(cfg, data, tokenizer, seeds, regimes, pretrain_info) -> dict:
    rows = {}
    for kind in STARTS:
        for lr, schedule in regimes:
            runs = []
            for seed in seeds:
                bert, info = pretrained_start(cfg, data, tokenizer, kind, seed)
                pretrain_info.setdefault(kind, {})[f"seed {seed}"] = info
                runs.append(finetune_run(cfg, data, tokenizer, bert, lr=lr, schedule=schedule, seed=seed))
            rows[f"{kind} | {regime_name(lr, schedule)}"] = {"start": kind, "lr": lr, "schedule": schedule,
                                                             **summarize(runs), "per_seed": runs}
    return rows


def best_by_dev(rows: dict) -> dict:
    """Each start's regime with the highest mean dev R@10 at the last curve point (the test split is never
    used to choose)."""
    best = {}
    for name, row in rows.items():
        kind = row["start"]
        if kind not in best or row["dev_curve"][-1]["recall@10"] > rows[best[kind]]["dev_curve"][-1]["recall@10"]:
            best[kind] = name
    return best


def lr_sweep(cfg, data, tokenizer, seeds) -> dict:
    regimes = [(lr, "warmup_linear") for lr in LRS] + [(cfg.finetune_lr, "constant")]
    info: dict = {}
    rows = _starts_grid(cfg, data, tokenizer, seeds, regimes, info)
    best = best_by_dev(rows)
    return {"rows": rows, "best_by_dev": best, "pretraining": info,
            "retromae_vs_mlm": verdict(rows[best["retromae"]], rows[best["mlm"]]),
            "mlm_vs_random": verdict(rows[best["mlm"]], rows[best["random"]]),
            "retromae_vs_random": verdict(rows[best["retromae"]], rows[best["random"]])}


def pretrain_schedule(cfg, data, tokenizer, seeds) -> dict:
    """MLM and RetroMAE pretrained at the preset's constant ``pretrain_lr`` and in the reference's shape
    (``WARMUP_FRACTION`` warm-up to the same peak, then linear decay), same steps; each start fine-tuned in the
    regime ``lr_sweep``'s dev curves picked for both pretrained starts (the course's constant ``finetune_lr``)."""
    rows, info = {}, {}
    for kind in ("mlm", "retromae"):
        for schedule in SCHEDULES:
            runs = []
            for seed in seeds:
                bert, pre = pretrained_start(cfg, data, tokenizer, kind, seed, schedule)
                info.setdefault(f"{kind} | pretraining {schedule}", {})[f"seed {seed}"] = pre
                runs.append(finetune_run(cfg, data, tokenizer, bert, lr=cfg.finetune_lr, schedule="constant",
                                         seed=seed))
            rows[f"{kind} | pretraining {schedule}"] = {"start": kind, "pretraining_schedule": schedule,
                                                        "pretrain_lr": cfg.pretrain_lr, **summarize(runs),
                                                        "per_seed": runs}
    return {"rows": rows, "pretraining": info, "finetune": regime_name(cfg.finetune_lr, "constant"),
            "verdicts": {
                "mlm: warmup_linear vs constant": verdict(rows["mlm | pretraining warmup_linear"],
                                                          rows["mlm | pretraining constant"]),
                "retromae: warmup_linear vs constant": verdict(rows["retromae | pretraining warmup_linear"],
                                                               rows["retromae | pretraining constant"]),
                "retromae vs mlm (warmup_linear)": verdict(rows["retromae | pretraining warmup_linear"],
                                                           rows["mlm | pretraining warmup_linear"]),
                "retromae vs mlm (constant)": verdict(rows["retromae | pretraining constant"],
                                                      rows["mlm | pretraining constant"])}}


def small_folder(cfg, data, tokenizer, seeds) -> dict:
    """The starts on a folder of ``FOLDER["n_docs"]`` documents and ``FOLDER["n_train"]`` training pairs cut
    from ``data`` (its own tokenizer and pretraining, as a user's folder gets), fine-tuned at the course's
    constant ``cfg.finetune_lr`` and, for reference, the random start mean-pooled at ``cfg.lr``."""
    from course_lib.tokenizer import load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = load_folder(write_folder(data, Path(tmp) / "folder", seed=0, **FOLDER))
    small_tok = load_tokenizer(folder, cfg.vocab_size)
    info: dict = {}
    rows = _starts_grid(cfg, folder, small_tok, seeds, [(cfg.finetune_lr, "constant")], info)
    mean_runs = [finetune_run(cfg, folder, small_tok, None, lr=cfg.lr, schedule="constant", seed=s, pooling="mean")
                 for s in seeds]
    rows["random mean-pooled | " + regime_name(cfg.lr, "constant")] = {
        "start": "random (mean pooling)", "lr": cfg.lr, "schedule": "constant", **summarize(mean_runs),
        "per_seed": mean_runs}
    by = {row["start"]: row for row in rows.values()}
    return {"folder": {**FOLDER, "documents": len(folder.corpus), "train_pairs": len(folder.train),
                       "test_queries": len(folder.queries["test"]), "dev_queries": len(folder.queries["dev"])},
            "rows": rows, "pretraining": info,
            "retromae_vs_mlm": verdict(by["retromae"], by["mlm"]),
            "mlm_vs_random": verdict(by["mlm"], by["random"]),
            "retromae_vs_random": verdict(by["retromae"], by["random"])}


def mean_pairwise_cosine(vectors: torch.Tensor) -> float:
    """Mean cosine over all pairs of distinct rows of ``vectors`` (n, D), n >= 2: 1.0 when every row points
    the same way (a collapsed encoder), about 0 for random directions."""
    if vectors.ndim != 2 or vectors.shape[0] < 2:
        raise ValueError(f"vectors must be (n, D) with n >= 2, got shape {tuple(vectors.shape)}")
    v = torch.nn.functional.normalize(vectors.double(), dim=-1)
    n = v.shape[0]
    return float(((v @ v.T).sum() - n) / (n * (n - 1)))


def collapse(cfg, data, tokenizer, seeds) -> dict:
    """SimBERT from random weights at each lr of ``COLLAPSE_LRS`` with each warm-up fraction of
    ``COLLAPSE_WARMUP``: the similarity loss over the last 50 steps against ln(2n − 1), the mean pairwise cosine
    of pooled [CLS] vectors of 256 dev queries (1 when collapsed), and dev R@10."""
    rows = {}
    n_rows = 2 * cfg.simbert_pairs
    floor = math.log(n_rows - 1)
    probe = [data.queries["dev"][q] for q in sorted(data.queries["dev"])][:256]
    for lr in COLLAPSE_LRS:
        for warm in COLLAPSE_WARMUP:
            runs = []
            for seed in seeds:
                seed_everything(seed, cfg.num_threads)
                model, history, parts = train_simbert(cfg.replace(simbert_lr=lr, seed=seed), data, tokenizer,
                                                      progress=False, warmup_steps=int(cfg.train_steps * warm))
                sim = parts["similarity"][-50:]
                runs.append({"similarity_loss_end": round(statistics.fmean(sim), 4),
                             "pooled_cosine": round(mean_pairwise_cosine(
                                 encode(model, tokenizer, probe, max_length=cfg.max_query_len)), 4),
                             "dev": _dev_scores(model, data, tokenizer, cfg), "steps": history.steps,
                             "stopped": history.stopped})
            collapsed = [r["similarity_loss_end"] > floor - 0.05 for r in runs]
            rows[f"lr {lr:g}, warm-up {warm:.0%}"] = {
                "lr": lr, "warmup_fraction": warm, "collapsed_seeds": sum(collapsed), "seeds": len(runs),
                "similarity_loss_end": round(statistics.fmean(r["similarity_loss_end"] for r in runs), 4),
                "pooled_cosine": round(statistics.fmean(r["pooled_cosine"] for r in runs), 4),
                "dev_recall@10": round(statistics.fmean(r["dev"]["recall@10"] for r in runs), 4),
                "per_seed": runs}
    return {"ln(2n-1)": round(floor, 4), "rows_per_batch": n_rows, "rows": rows}


def run(preset: str, out: Path, only=PROBES, seeds: int = 3) -> dict:
    from course_lib.benchmark import git_commit, machine
    from course_lib.config import get_config
    from course_lib.data import load_dataset
    from course_lib.tokenizer import load_tokenizer

    unknown = set(only) - set(PROBES)
    if unknown or not only:
        raise ValueError(f"only must name some of {PROBES}, got {sorted(only)}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 2:
        raise ValueError(f"seeds must be an int >= 2 (a spread needs two runs), got {seeds!r}")
    out = Path(out)
    result = json.loads(out.read_text()) if out.exists() else {"preset": preset, "probes": {}}
    if result.get("preset") != preset:
        raise ValueError(f"{out} holds {result.get('preset')!r} probes; write {preset!r} ones to another --out")
    cfg = get_config(preset).replace(train_seconds=math.inf, pretrain_seconds=math.inf)  # steps bind, not load
    data = load_dataset("wordnet", preset)
    tokenizer = load_tokenizer(data, cfg.vocab_size)
    functions = {"lr_sweep": lr_sweep, "small_folder": small_folder, "collapse": collapse,
                 "pretrain_schedule": pretrain_schedule}
    for name in PROBES:
        if name not in only:
            continue
        t0 = time.perf_counter()
        probe = functions[name](cfg, data, tokenizer, list(range(seeds)))
        result["probes"][name] = probe | {
            "command": f"python -m course_lib.regimes --preset {preset} --out {out} --only {name} --seeds {seeds}",
            "commit": git_commit(), "date": time.strftime("%Y-%m-%d"), "machine": machine(),
            "seconds": round(time.perf_counter() - t0, 1)}
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=["fast", "full"], default="fast")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="+", choices=PROBES, default=list(PROBES))
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    run(args.preset, args.out, args.only, args.seeds)


if __name__ == "__main__":
    main()
