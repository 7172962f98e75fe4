"""The Mosaic paper's figures: ROC curves, AUC vs repetitions, AUC and rho vs the variation parameter, and
near-duplicate counts vs distance."""
from __future__ import annotations

import re
from pathlib import Path

from .. import plots
from ..plots import pyplot  # noqa: F401 (re-exported for the plot step)


def save(fig, path) -> Path:
    fig.tight_layout()
    return plots.save(fig, path)


def roc_png(curves: dict, path, title: str) -> Path:
    """curves: name -> (fpr, tpr, auc); log-log axes as in the MIA literature."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([1e-3, 1], [1e-3, 1], "k:", lw=0.8)
    ax.set(xscale="log", yscale="log", xlim=(1e-3, 1), ylim=(1e-3, 1.05), xlabel="FPR", ylabel="TPR", title=title)
    ax.legend(fontsize=7)
    return save(fig, path)


def split_label(label: str) -> tuple[str, float] | None:
    """'mlm_R10' -> ('mlm', 10.0); 'shuffle_tau0.3' -> ('shuffle', 0.3)."""
    m = re.fullmatch(r"(.+?)_([A-Za-z]*)(\d+(?:\.\d+)?)", label)
    return (m.group(1) + (f" ({m.group(2)})" if m.group(2) else ""), float(m.group(3))) if m else None


def series(values: dict[str, float]) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list] = {}
    for label, v in values.items():
        s = split_label(label)
        if s and v is not None:
            out.setdefault(s[0], []).append((s[1], v))
    return {k: sorted(v) for k, v in out.items()}


def auc_vs_reps_png(exact: dict, smoothed: dict | None, path, title: str = "Exact duplicates") -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    xs = sorted(int(k) for k in exact)
    ax.plot(xs, [exact[str(x)] for x in xs], "o-", label="MIA AUC")
    if smoothed:
        ax.plot(xs, [smoothed[str(x)] for x in xs], "--", color="grey", label="smoothed (rho's curve)")
    ax.set(xlabel="exact repetitions", ylabel="AUC", title=title)
    ax.legend()
    return save(fig, path)


def rho_png(rho: dict, path) -> Path:
    """rho (and AUC) vs the variation parameter, one line per strategy."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for key, ax, ylabel in (("rho", axes[0], "rho"), ("auc", axes[1], "MIA AUC")):
        for name, pts in series({k: v[key] for k, v in rho.items()}).items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
        for label, v in rho.items():  # the 95% intervals where the rho step had bootstrap replicates
            s, ci = split_label(label), v.get(f"{key}_ci")
            if s and ci and v[key] is not None:
                ax.errorbar([s[1]], [v[key]], yerr=[[v[key] - ci[0]], [ci[1] - v[key]]], color="k", capsize=3,
                            lw=0.8)
            if s and key == "rho" and v.get("extrapolated") and v[key] is not None:  # beyond the exact curve
                ax.scatter([s[1]], [v[key]], s=90, facecolors="white", edgecolors="red", zorder=3,
                           label="extrapolated" if not ax.get_legend_handles_labels()[1].count("extrapolated") else None)
        ax.set(xlabel="variation parameter (tokens replaced R, inserted X, or tau)", ylabel=ylabel)
        ax.legend(fontsize=8)
    axes[0].axhline(0, color="k", lw=0.5)
    fig.suptitle("Fuzzy duplicates: how much they count as exact ones")
    return save(fig, path)


def scan_png(summary: dict, path) -> Path:
    """Mean cumulative near-duplicate count vs distance per duplicate-count bucket (Hamming, Levenshtein) and the
    fuzzy duplicates per exact duplicate (Levenshtein), with 95% bands over targets."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    panels = [(axes[0], "mean_cumulative_hamming", "Hamming", "near-duplicates per target"),
              (axes[1], "mean_cumulative_levenshtein", "Levenshtein", "near-duplicates per target"),
              (axes[2], "fuzzy_per_exact_levenshtein", "Fuzzy per exact duplicate", "fuzzy / exact (Levenshtein)")]
    for ax, key, title, ylabel in panels:
        for bucket, s in summary.items():
            ys = s[key]
            line, = ax.plot(range(len(ys)), ys, label=f"{bucket} exact copies")
            band = [(d, c) for d, c in enumerate(s.get(f"{key}_ci") or []) if c]
            if band:
                ax.fill_between([d for d, _ in band], [c[0] for _, c in band], [c[1] for _, c in band],
                                color=line.get_color(), alpha=0.2, lw=0)
        ax.set(xlabel="distance (tokens)", ylabel=ylabel, title=title)
        ax.set_yscale("symlog" if key.startswith("fuzzy") else "log")
        ax.legend(fontsize=8)
    return save(fig, path)
