"""Every figure of the course. Each ``plot_*`` function returns a matplotlib Figure; none calls ``show`` or
writes a file (the notebook displays it, the benchmark saves it)."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

# one style for the whole course
FIGSIZE = (6.4, 4.0)
COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
GOLD = "#d62728"
matplotlib.rcParams.update({"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3})


def _axes(ax, figsize=FIGSIZE):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def _labelled(fig, ax, xlabel: str, ylabel: str, title: str):
    """Axis labels, title and a small legend: the finish of every line and histogram plot."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _check_positive(name: str, values, why: str) -> None:
    """Every value of ``values`` must be a finite number > 0 (a log axis cannot place the others)."""
    bad = [v for v in values if not (np.isfinite(v) and v > 0)]
    if bad:
        raise ValueError(f"{name} must all be > 0 and finite for {why}, got {bad[:5]}; drop those points or "
                         "use a linear axis")


def _check_recalls(results: dict[str, dict[str, float]]) -> None:
    """Every ``recall@k`` entry has k ≥ 1 (the x axis is logarithmic) and a finite value in [0, 1]."""
    for name, metrics in results.items():
        for key, value in metrics.items():
            if not key.startswith("recall@"):
                continue
            if int(key.split("@")[1]) < 1:
                raise ValueError(f"{key} of {name!r}: k must be >= 1 on the log axis of k; drop that entry")
            if not (np.isfinite(value) and 0 <= value <= 1):
                raise ValueError(f"{key} of {name!r} is {value!r}; recall lies in [0, 1] (the axis is fixed "
                                 "there, so the point would be hidden): pass the fraction, not a percentage")


def plot_recall_at_k(results: dict[str, dict[str, float]], ks=None, ax=None, title: str = "Recall@k on the test split"):
    """Recall@k against k (log axis), one line per method. ``results`` maps a method to its metrics dict.
    The y-axis spans 0–1, or 0 to a little above the largest recall when every recall is at most 0.25 (a hard
    task's curves would otherwise lie flat on the floor; the axis label then says so).
    Checks: at least one method; every ``recall@k`` has k ≥ 1 and a finite value in [0, 1]."""
    if not results:
        raise ValueError("plot_recall_at_k needs at least one method's metrics")
    _check_recalls(results)
    own_figure = ax is None
    fig, ax = _axes(ax)
    for i, (name, metrics) in enumerate(results.items()):
        found = sorted(int(key.split("@")[1]) for key in metrics if key.startswith("recall@"))
        kk = [k for k in (ks or found) if f"recall@{k}" in metrics]
        wrap = i // len(COLORS)  # past the palette: same colours, another line style and marker
        ax.plot(kk, [metrics[f"recall@{k}"] for k in kk], color=COLORS[i % len(COLORS)],
                ls=("-", "--", ":")[wrap % 3], marker=("o", "s", "^")[wrap % 3],
                label=f"{name} (MRR@10 {metrics.get('mrr@10', float('nan')):.3f})")
    ax.set_xscale("log")
    ax.set_xlabel("k (documents retrieved)")
    top = max(v for m in results.values() for key, v in m.items() if key.startswith("recall@"))
    zoom = top <= 0.25
    ceiling = max(top * 1.15, 0.01) if zoom else 1  # every value ≤ 0.25: zoom in, and say so on the axis
    ax.set_ylabel(f"Recall@k (axis cut at {ceiling:.2g}, not 1)" if zoom else "Recall@k")
    ax.set_ylim(0, ceiling)
    ax.set_title(title)
    if len(results) > 5:  # a long legend would hide the curves: put it beside the axes
        ncol = 1 if len(results) <= 16 else 2  # past 16 entries one column runs off the figure
        if own_figure:
            fig.set_figwidth(fig.get_figwidth() + 3.5 * ncol)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8, ncol=ncol)
    else:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_ann_tradeoff(efs, recalls, ms_per_1k, exact_ms_per_1k: float, ax=None):
    """HNSW: recall@10 against exact search (left axis) and search time (right axis) as ``ef`` grows.
    Checks: the three lists non-empty and of equal length; every ef > 0 (log axis)."""
    if not (len(efs) == len(recalls) == len(ms_per_1k)) or not len(efs):
        raise ValueError("efs, recalls and ms_per_1k must be non-empty and of equal length")
    _check_positive("efs", efs, "the log axis of ef")
    fig, ax = _axes(ax)
    ax.plot(efs, recalls, marker="o", color=COLORS[0], label="HNSW recall@10 vs exact")
    ax.axhline(0.98, color=COLORS[0], ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("ef (search breadth)")
    ax.set_ylabel("recall@10 vs exact", color=COLORS[0])
    ax.set_ylim(min(0.5, min(recalls) - 0.05), 1.01)
    ax2 = ax.twinx()
    ax2.plot(efs, ms_per_1k, marker="s", color=COLORS[1], label="HNSW ms / 1k queries")
    ax2.axhline(exact_ms_per_1k, color=COLORS[1], ls="--", lw=1, label="exact ms / 1k queries")
    ax2.set_ylabel("ms per 1,000 queries", color=COLORS[1])
    ax2.grid(False)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax.legend(lines, labels, loc="center right", fontsize=8)
    ax.set_title("Exact vs HNSW search")
    fig.tight_layout()
    return fig


def plot_ranked_scores(doc_texts: list[str], scores, is_gold: list[bool], query: str = "", ax=None, width: int = 70):
    """A horizontal bar per retrieved document (best on top), the relevant ones in red."""
    if not (len(doc_texts) == len(scores) == len(is_gold)) or not len(doc_texts):
        raise ValueError("doc_texts, scores and is_gold must be non-empty and of equal length")
    fig, ax = _axes(ax, figsize=(8, 0.35 * len(doc_texts) + 1.2))
    y = np.arange(len(doc_texts))[::-1]
    ax.barh(y, scores, color=[GOLD if g else COLORS[0] for g in is_gold])
    labels = [(t if len(t) <= width else t[: width - 1] + "…") for t in doc_texts]
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel("score")
    ax.set_title(f"query: {query[:90]}" if query else "retrieved documents", fontsize=9)
    fig.tight_layout()
    return fig


def plot_length_histogram(lengths: dict[str, list[int]], max_length: int | None = None, ax=None):
    """Token counts per text kind (e.g. queries vs documents), with the truncation length marked."""
    fig, ax = _axes(ax)
    top = max(max(v) for v in lengths.values())
    bins = np.arange(0, top + 2)
    for i, (name, vals) in enumerate(lengths.items()):
        ax.hist(vals, bins=bins, alpha=0.6, color=COLORS[i % len(COLORS)], label=f"{name} (mean {np.mean(vals):.1f})")
    if max_length:
        ax.axvline(max_length, color="k", ls="--", lw=1, label=f"max_length {max_length}")
    ax.set_xlabel("tokens (with [CLS] and [SEP])")
    ax.set_ylabel("texts")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_loss_curve(losses, smooth: int = 10, ax=None, label: str = "training loss",
                    reference: float | None = None, reference_label: str = "ln B (uniform guessing)"):
    """Per-step loss (faint) and its running mean over ``smooth`` steps; ``reference`` draws a dashed level,
    e.g. ln B, the loss of a model that scores every candidate alike (a collapsed encoder sits there).
    ``losses`` is a list, or a dict of named lists drawn together (e.g. the two parts of a joint loss)."""
    curves = losses if isinstance(losses, dict) else {label: losses}
    if not curves or any(len(v) == 0 for v in curves.values()):
        raise ValueError("plot_loss_curve needs at least one loss value per curve")
    fig, ax = _axes(ax)
    for i, (name, values) in enumerate(curves.items()):
        color = COLORS[i % len(COLORS)]
        steps = np.arange(1, len(values) + 1)
        ax.plot(steps, values, alpha=0.3, color=color, label=f"{name}, per step")
        w = max(1, min(smooth, len(values)))
        ax.plot(steps[w - 1 :], np.convolve(values, np.ones(w) / w, mode="valid"), color=color,
                label=f"{name}, mean of {w} steps")
    if reference is not None:
        ax.axhline(reference, color="k", ls="--", lw=1, label=reference_label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_similarity_matrix(logits, n_positive_cols: int | None = None, softmax: bool = True, title: str = "logits",
                           row_labels=None, targets: list[int] | None = None,
                           axis_labels: tuple[str, str] = ("candidate documents", "queries"),
                           extra_columns: str = "hard negatives"):
    """Heatmap of a (B, C) logit matrix with each row's positive boxed in red (column i, or ``targets[i]``);
    with ``softmax`` a second panel shows the row-wise softmax, i.e. the probability the loss puts on each
    candidate. −inf entries (masked candidates) are left blank. Columns after the first ``n_positive_cols``
    (default B) are hard negatives, separated by a vertical line; when they come in blocks of B (one per
    query), each row's own hard negatives are boxed with dashes. ``extra_columns`` names those columns; any name
    but "hard negatives" (e.g. "memory") draws no per-row boxes, since they are shared by every row."""
    import torch

    s = torch.as_tensor(logits, dtype=torch.float32).detach().cpu()
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] < s.shape[0]:
        raise ValueError(f"logits must be (B, C) with C >= B >= 1, got shape {tuple(s.shape)}")
    b = s.shape[0]
    n_pos = b if n_positive_cols is None else n_positive_cols
    targets = list(range(b)) if targets is None else list(targets)
    if len(targets) != b or any(not 0 <= t < s.shape[1] for t in targets):
        raise ValueError(f"targets must give one column in [0, {s.shape[1]}) per row ({b} rows), got {targets}")
    panels = [("logits (similarity / τ)", s, "RdBu_r")]
    if softmax:
        panels.append(("row softmax (probabilities)", torch.softmax(s, dim=1), "viridis"))
    width = min(14.0, 3.0 + 0.25 * s.shape[1]) * len(panels) / 2 + 2
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 0.3 * b + 2.2), squeeze=False)
    for ax, (name, m, cmap) in zip(axes[0], panels):
        finite = m[torch.isfinite(m)]
        lim = float(finite.abs().max()) if finite.numel() else 1.0
        kw = {"vmin": -lim, "vmax": lim} if cmap == "RdBu_r" else {"vmin": 0.0, "vmax": 1.0}
        im = ax.imshow(m.numpy(), cmap=cmap, aspect="auto", **kw)
        for i in range(b):
            ax.add_patch(matplotlib.patches.Rectangle((targets[i] - 0.5, i - 0.5), 1, 1, fill=False, ec=GOLD, lw=1.5))
            # per-query hard negatives (column blocks of B): box each row's own, dashed
            per_row = extra_columns == "hard negatives" and (s.shape[1] - n_pos) % b == 0
            for col in range(n_pos + i, s.shape[1], b) if per_row else ():
                ax.add_patch(matplotlib.patches.Rectangle((col - 0.5, i - 0.5), 1, 1, fill=False, ec="k", lw=1, ls="--"))
        if s.shape[1] > n_pos:
            ax.axvline(n_pos - 0.5, color="k", lw=1)
        ax.set_xlabel(axis_labels[0] + (f" (positives, then {extra_columns})" if s.shape[1] > n_pos else ""))
        ax.set_ylabel(axis_labels[1])
        ax.set_title(name, fontsize=9)
        ax.grid(False)
        if row_labels is not None:
            ax.set_yticks(range(b), [str(t)[:28] for t in row_labels], fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_curve(xs, ys: dict[str, list[float]], xlabel: str, ylabel: str, title: str = "", logx: bool = False, ax=None):
    """One line per named series over shared x values (e.g. recall@10 against batch size).
    Checks: every series as long as ``xs``; with ``logx``, every x > 0."""
    if not ys or any(len(v) != len(xs) for v in ys.values()):
        raise ValueError("ys must map names to lists as long as xs")
    if logx:
        _check_positive("xs", xs, "logx=True (a log axis)")
    fig, ax = _axes(ax)
    for i, (name, vals) in enumerate(ys.items()):
        ax.plot(xs, vals, marker="o", color=COLORS[i % len(COLORS)], label=name)
    if logx:
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(xs), [str(x) for x in xs])
    return _labelled(fig, ax, xlabel, ylabel, title)


def plot_align_uniform(points: dict[str, tuple[float, float]], ax=None):
    """Wang & Isola (2020) alignment (lower: positives closer) against uniformity (lower: embeddings spread
    over the sphere), one labelled point per model; lower-left is better."""
    if not points:
        raise ValueError("plot_align_uniform needs at least one (alignment, uniformity) point")
    fig, ax = _axes(ax, figsize=(5.2, 4.2))
    for i, (name, (align, uniform)) in enumerate(points.items()):
        ax.scatter([uniform], [align], s=60, color=COLORS[i % len(COLORS)], label=name, zorder=3)
    ax.set_xlabel("ℓ_uniform (lower: more spread out)")
    ax.set_ylabel("ℓ_align (lower: positives closer)")
    ax.set_title("Alignment and uniformity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_attention_masks(masks: dict, tokens: list[str], row: int | None = None):
    """Attention masks side by side, one panel per name: cell (i, j) is dark when query position i (row) may
    attend key position j (column), with the tokens on both axes. ``row`` outlines one query row in red."""
    import torch

    if not masks:
        raise ValueError("plot_attention_masks needs at least one mask")
    L = len(tokens)
    for name, m in masks.items():
        if tuple(torch.as_tensor(m).shape) != (L, L):
            raise ValueError(f"mask {name!r} has shape {tuple(torch.as_tensor(m).shape)}, expected ({L}, {L}) for {L} tokens")
    if row is not None and not 0 <= row < L:
        raise ValueError(f"row must be in [0, {L - 1}], got {row}")
    size = 1.6 + 0.22 * L
    fig, axes = plt.subplots(1, len(masks), figsize=(size * len(masks), size), squeeze=False)
    for ax, (name, m) in zip(axes[0], masks.items()):
        ax.imshow(torch.as_tensor(m).float().numpy(), cmap="Greys", vmin=0, vmax=1.25)
        ax.set_xticks(range(L), tokens, rotation=90, fontsize=7)
        ax.set_yticks(range(L), tokens, fontsize=7)
        ax.set_xlabel("key (attended)")
        ax.set_ylabel("query (attending)")
        ax.set_title(name, fontsize=9)
        ax.grid(False)
        if row is not None:
            ax.add_patch(matplotlib.patches.Rectangle((-0.5, row - 0.5), L, 1, fill=False, ec=GOLD, lw=2))
    fig.tight_layout()
    return fig


def plot_drift(drift: dict[str, list], ax=None, title: str = "Embedding drift: stored vector vs the same document now"):
    """CBNS's stability check (Wang et al., 2021, §3.2): for each probe step, the mean cosine between a memory
    entry and its re-encoding by the current weights, against the entry's age in steps. ``drift`` maps a run's
    name to its ``course_lib.cbns.DriftRecord`` list; one panel per run, one line per probe step (later = darker)."""
    if not drift or not all(drift.values()):
        raise ValueError("plot_drift needs at least one run with at least one drift record")
    n = len(drift)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.8), squeeze=False, sharey=True)
    for ax, (name, records) in zip(axes[0], drift.items()):
        cmap = plt.get_cmap("viridis")
        for j, r in enumerate(records):
            ax.plot(r.ages, r.cosine, marker="o", ms=3, color=cmap(1 - j / max(1, len(records) - 1) * 0.85),
                    label=f"step {r.step}")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylim(-1.05, 1.05)
        ax.set_xlabel("age of the memory entry (steps)")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7, ncol=2)
    axes[0][0].set_ylabel("cos(stored, re-encoded now)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_frequency_tracking(steps, true_p, est_p, items: dict[str, int], switch_step: int | None = None):
    """The streaming frequency estimator (Yi et al., 2019, §4) against the truth over time: left, true and
    estimated per-step probability of a few items (``items`` maps a label to a column); right, the mean
    absolute error over all items. ``true_p``, ``est_p``: (T, N) arrays sampled at ``steps``."""
    true_p, est_p = np.asarray(true_p), np.asarray(est_p)
    if true_p.shape != est_p.shape or true_p.ndim != 2 or true_p.shape[0] != len(steps):
        raise ValueError(f"true_p and est_p must both be (T, N) with T = len(steps) = {len(steps)}, got "
                         f"{true_p.shape} and {est_p.shape}")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 3.8))
    for i, (label, col) in enumerate(items.items()):
        left.plot(steps, true_p[:, col], color=COLORS[i % len(COLORS)], ls="--", lw=1)
        left.plot(steps, est_p[:, col], color=COLORS[i % len(COLORS)], label=label)
    left.set_xlabel("step")
    left.set_ylabel("probability of appearing in a batch")
    left.set_title("estimate (solid) vs truth (dashed)", fontsize=9)
    left.legend(fontsize=7)
    right.plot(steps, np.abs(est_p - true_p).mean(axis=1), color=COLORS[0])
    right.set_xlabel("step")
    right.set_ylabel("mean |estimate − truth| over items")
    right.set_title("error over time", fontsize=9)
    for ax in (left, right):
        if switch_step is not None:
            ax.axvline(switch_step, color="k", ls=":", lw=1)
    fig.tight_layout()
    return fig


def plot_score_histograms(scores: dict[str, list[float]], bins: int = 40, ax=None,
                          title: str = "Scores against each query", xlabel: str = "cosine similarity"):
    """Overlaid, density-normalised histograms, one per named list of scores (e.g. the positive's score, the
    hardest in-batch negative's, the hardest mined negative's), each with its median as a dashed line."""
    if not scores or any(len(v) == 0 for v in scores.values()):
        raise ValueError("scores must map names to non-empty lists")
    fig, ax = _axes(ax)
    lo = min(min(v) for v in scores.values())
    hi = max(max(v) for v in scores.values())
    edges = np.linspace(lo, hi, bins + 1)
    for i, (name, vals) in enumerate(scores.items()):
        color = COLORS[i % len(COLORS)]
        ax.hist(vals, bins=edges, density=True, alpha=0.45, color=color, label=f"{name} (median {np.median(vals):.2f})")
        ax.axvline(float(np.median(vals)), color=color, linestyle="--", linewidth=1)
    return _labelled(fig, ax, xlabel, "density", title)


def plot_series(series: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str = "", ax=None):
    """One line per named ``(xs, ys)`` pair, each with its own x values (e.g. recall against seconds)."""
    if not series or any(len(xs) != len(ys) or not xs for xs, ys in series.values()):
        raise ValueError("series must map names to (xs, ys) of equal, non-zero length")
    fig, ax = _axes(ax)
    for i, (name, (xs, ys)) in enumerate(series.items()):
        ax.plot(xs, ys, marker="o", markersize=3, color=COLORS[i % len(COLORS)], label=name)
    return _labelled(fig, ax, xlabel, ylabel, title)
