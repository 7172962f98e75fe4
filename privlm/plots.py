"""Headline figures as PNGs next to their JSON (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path

from .io import atomic_file


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def retention_png(report: dict, path: str | Path) -> Path:
    """Bars of retention per template set (each template a thin bar), and utility before/after when present."""
    return save(retention_figure(report), path)


def save(fig, path: str | Path) -> Path:
    """Write a figure atomically (temp file + rename) and close it."""
    plt = pyplot()
    path = Path(path)
    try:
        with atomic_file(path, "wb") as fh:
            fig.savefig(fh, format=path.suffix.lstrip(".") or "png", dpi=110)
    finally:
        plt.close(fig)
    return path


def retention_figure(report: dict):
    plt = pyplot()
    sets = report["per_template"]
    has_u = "utility" in report
    fig, axes = plt.subplots(1, 2 if has_u else 1, figsize=(11 if has_u else 6, 3.8), squeeze=False)
    ax = axes[0][0]
    x = 0
    for i, (name, r) in enumerate(sets.items()):
        vals = [t["retention"] for t in r["templates"]]
        xs = [x + j for j in range(len(vals))]
        ax.bar(xs, vals, color=f"C{i}", label=f"{name} (mean {r['retention']:.2f})",
               yerr=yerr(vals, [t.get("retention_ci") for t in r["templates"]]), capsize=2,
               error_kw={"elinewidth": 0.8})
        x += len(vals) + 1
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("retention")
    ax.set_xticks([])
    ax.set_title(f"{report['num_fingerprints']} fingerprints, one bar per template")
    ax.legend(loc="lower right", fontsize=8)
    if has_u:
        u = report["utility"]
        ax = axes[0][1]
        labels, before, after, ci_b, ci_a = [], [], [], [], []
        for task, m in u["fingerprinted"]["lm_eval"].items():
            b = u["base"]["lm_eval"].get(task, {})
            labels.append(f"{task} acc")
            before.append(b.get("acc", float("nan")))
            after.append(m.get("acc", float("nan")))
            ci_b.append(b.get("acc_ci"))
            ci_a.append(m.get("acc_ci"))
        xs = range(len(labels))
        ax.bar([i - 0.2 for i in xs], before, 0.4, label="base", yerr=yerr(before, ci_b), capsize=3)
        ax.bar([i + 0.2 for i in xs], after, 0.4, label="fingerprinted", yerr=yerr(after, ci_a), capsize=3)
        ax.set_xticks(list(xs), labels)
        ax.set_ylim(0, 1)
        ax.set_title(f"utility; held-out ppl {u['base']['heldout_perplexity']:.1f} -> "
                     f"{u['fingerprinted']['heldout_perplexity']:.1f}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def yerr(values, cis):
    """matplotlib's asymmetric error bars from [low, high] intervals (none drawn where an interval is missing)."""
    lo = [v - c[0] if c else 0.0 for v, c in zip(values, cis)]
    hi = [c[1] - v if c else 0.0 for v, c in zip(values, cis)]
    return [lo, hi]


def roc_panel(ax, curves: dict, points: list[dict] | None = None):
    """ROC curves {label: (members' scores, non-members' scores)} on a symlog FPR axis (the low-FPR end visible),
    the chance line, and optional TPR-at-FPR points [{fpr, tpr, ci}] with their intervals."""
    import numpy as np

    from .mia.metrics import roc_curve

    for label, (members, nonmembers) in curves.items():
        ax.plot(*roc_curve(members, nonmembers), label=label)
    for p in points or []:
        if p["ci"]:
            ax.errorbar([p["fpr"]], [p["tpr"]], yerr=yerr([p["tpr"]], [p["ci"]]), fmt="o", color="k", capsize=3)
    chance = np.linspace(0, 1, 201)  # y = x, drawn point by point: the x axis is symlog
    ax.plot(chance, chance, ":", color="grey")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set(xlabel="false positive rate", ylabel="true positive rate")
    ax.legend(fontsize=7, loc="lower right")


def attack_figure(report: dict):
    """One bar per (attack, param): retention with its 95% interval."""
    plt = pyplot()
    rows = report["rows"]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows) + 2), 4))
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    vals = [r["retention"] for r in rows]
    ax.bar(range(len(rows)), vals, color=[f"C{attacks.index(r['attack'])}" for r in rows],
           yerr=yerr(vals, [r.get("retention_ci") for r in rows]), capsize=2)
    ax.set_xticks(range(len(rows)), [f"{r['attack']}\n{str(r['param'])[:14]}" if r["param"] is not None
                                     else r["attack"] for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("retention (95% CI)")
    ax.set_title(f"{report['num_fingerprints']} fingerprints under attack")
    fig.tight_layout()
    return fig


def capacity_figure(rows: list[dict]):
    """Retention and held-out perplexity ratio against the number of fingerprints (log x), per strategy."""
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, strat in enumerate(dict.fromkeys(r["strategy"] for r in rows)):
        rs = sorted((r for r in rows if r["strategy"] == strat), key=lambda r: r["num_fingerprints"])
        n = [r["num_fingerprints"] for r in rs]
        for ax, key in ((a1, "retention"), (a2, "heldout_ppl_ratio")):
            v = [r[key] for r in rs]
            ax.errorbar(n, v, yerr=yerr(v, [r.get(f"{key}_ci") for r in rs]), marker="o", capsize=3, color=f"C{i}",
                        label=strat)
        if any(r.get("retention_after_sft") is not None for r in rs):
            v = [r.get("retention_after_sft") for r in rs]
            a1.errorbar(n, v, yerr=yerr(v, [r.get("retention_after_sft_ci") for r in rs]), marker="s", ls="--",
                        capsize=3, color=f"C{i}", alpha=0.6, label=f"{strat}, after sft")
    for ax, label in ((a1, "retention (95% CI)"), (a2, "held-out perplexity ratio (95% CI)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("fingerprints")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    a1.set_ylim(0, 1.05)
    a2.axhline(1.05, color="grey", ls=":", lw=1)
    fig.tight_layout()
    return fig
