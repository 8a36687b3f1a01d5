"""The papers' orderings next to ours (notebook 07 and the README): for each claim "A beats B" a paper makes,
the two benchmark methods that test it at our scale, the paper's own figure, and a verdict computed from the
stored results with ``course_lib.seeds.ordering`` (an ordering counts only when the gap exceeds the larger
standard deviation over seeds; a trained method run with one seed, or a run stopped at its wall-clock cap,
decides nothing; a method that trains nothing, ``steps == 0``, has spread 0, see ``claim_entry``).
"""

from dataclasses import dataclass

from course_lib.seeds import mean_sd, ordering


@dataclass(frozen=True)
class PaperClaim:
    claim: str  # what the paper reports, in words
    source: str  # authors, year, arXiv id and where
    figure: str  # the paper's own numbers
    better: str  # the benchmark method the paper says wins
    worse: str  # the method it beats


PAPER_CLAIMS = (
    PaperClaim("a dense retriever trained with in-batch negatives beats BM25",
               "Karpukhin et al., 2020, DPR, arXiv:2004.04906, Table 2", "NQ top-20 78.4 vs 59.1",
               "in_batch", "bm25"),
    PaperClaim("more in-batch negatives (a larger batch) help",
               "Karpukhin et al., 2020, DPR, arXiv:2004.04906, §5.2 and Table 3", "NQ top-k accuracy grows with batch size",
               "in_batch_large", "in_batch_small"),
    PaperClaim("hard negatives on top of in-batch ones help (DPR's negatives come from BM25; ours are mined once by "
               "the model itself, static_hardneg, a substitution)",
               "Karpukhin et al., 2020, DPR, arXiv:2004.04906, Table 3", "one BM25 negative per question beats gold-only in-batch training (NQ)",
               "static_hardneg", "no_mining"),
    PaperClaim("RetroMAE pretraining beats plain MLM pretraining for retrieval",
               "Xiao et al., 2022, RetroMAE, arXiv:2205.12035, Table 1", "MS MARCO dev MRR@10 0.393, above the BERT start fine-tuned the same way",
               "retromae_then_in_batch", "mlm_then_in_batch"),
    PaperClaim("a memory of past batches (CBNS) beats the small batch alone",
               "Wang et al., 2021, CBNS, arXiv:2110.15154, §4", "reports gains over in-batch sampling (its table is not quoted here)",
               "cbns", "in_batch_small"),
    PaperClaim("the logQ correction beats plain sampled softmax under a skewed sampler",
               "Yi, Yang, Hong, Cheng, Heldt, Kumthekar, Zhao, Wei & Chi, 2019, Sampling-Bias-Corrected Neural "
               "Modeling for Large Corpus Item Recommendations, RecSys, DOI 10.1145/3298689.3346996, §6",
               "Wikipedia R@100 0.4835 vs 0.3573",
               "cbns_logq", "cbns_skewed"),
    PaperClaim("refreshing negatives from the current model (ANCE) beats fixed ones",
               "Xiong et al., 2021, ANCE, arXiv:2007.00808, Table 1", "NQ top-20 81.9 vs DPR 78.4",
               "ance_refresh", "static_hardneg"),
    PaperClaim("Conan's dynamic re-mining beats mining once",
               "Li et al., 2024, Conan-embedding, arXiv:2408.15710, ablation", "CMTEB retrieval 73.8 vs 72.4",
               "dynamic_hardneg", "static_hardneg"),
    PaperClaim("a batch larger than memory allows, through GradCache, beats the largest plain batch",
               "Gao et al., 2021, GradCache, arXiv:2101.06983, §4", "retrieval improves with the larger batches GradCache makes possible",
               "gradcache_large_batch", "in_batch_large"),
)


def claim_entry(m: dict, key: str = "recall@10") -> dict:
    """A stored result as a claim compares it: a method that trains nothing (``steps == 0``: BM25, MiniLM, the
    untrained encoder) is run once by the benchmark, because another seed would not change what it is trained
    on, so its spread is 0 rather than unknown. (BM25 and MiniLM are exactly deterministic; the untrained
    encoder's numbers do depend on its seed, but no claim compares it.) Any other entry is returned unchanged."""
    if m.get("steps") == 0 and "spread" not in m:
        return m | {"spread": {key: 0.0}}
    return m


def verdict_of(ordering_verdict: str) -> str:
    """``course_lib.seeds.ordering``'s verdict as the claims table's "reproduced?" word; an unknown verdict
    raises rather than being counted as a reversal."""
    for start, word in (("a run stopped at its wall-clock cap", "capped: no verdict"), ("one seed", "one seed"),
                        ("within noise", "within noise"), ("above", "yes"), ("below", "reversed")):
        if ordering_verdict.startswith(start):
            return word
    raise ValueError(f"unknown verdict from course_lib.seeds.ordering: {ordering_verdict!r}; add it to "
                     "course_lib.claims.verdict_of")


VERDICTS = ("yes", "reversed", "within noise", "one seed", "capped: no verdict", "not run")


def check_claims(methods: dict, key: str = "recall@10") -> list[dict]:
    """One row per claim: both methods' stored ``key`` (mean ± sd), the gap, and "yes" (ours agrees, outside the
    spread), "reversed" (the opposite, outside the spread), "within noise", "one seed" (a trained method ran
    once), "capped: no verdict" (a run stopped at its wall-clock cap) or "not run"."""
    rows = []
    for c in PAPER_CLAIMS:
        row = {"claim": c.claim, "source": c.source, "paper": c.figure, "better": c.better, "worse": c.worse}
        if c.better not in methods or c.worse not in methods:
            rows.append(row | {"ours": "—", "gap": None, "reproduced": "not run"})
            continue
        a, b = methods[c.better], methods[c.worse]
        gap, verdict = ordering(claim_entry(a, key), claim_entry(b, key), key)
        shown = [mean_sd(m, key) + (" (no training: sd 0)" if claim_entry(m, key) is not m else "") for m in (a, b)]
        rows.append(row | {"ours": " vs ".join(shown), "gap": round(gap, 3), "reproduced": verdict_of(verdict)})
    return rows
