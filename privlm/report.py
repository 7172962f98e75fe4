"""Collect finished runs into one table: `python -m privlm.report results` writes results/sweep.{csv,json}."""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from .io import atomic_write_json, atomic_write_text
from .plots import yerr
from .stats import clopper_pearson, fmt

COLUMNS = ["run_hash", "model_path", "num_fingerprints", "max_key_length", "max_response_length",
           "fingerprint_generation_strategy", "learning_rate", "num_train_epochs", "forgetting_regularizer_strength",
           "use_augmentation_prompts", "deepspeed_stage", "final_loss", "train_seconds", "retention",
           "retention_heldout", "token_accuracy"]


def _flat(cfg: dict) -> dict:
    """Sections (trainer_args, ...) flattened to their leaf names, the way the sweep columns name them."""
    out = {}
    for k, v in cfg.items():
        out.update(_flat(v) if isinstance(v, dict) else {k: v})
    return out


def collect(results: Path) -> list[dict]:
    rows = []
    for run in sorted((results / "saved_models").glob("*/")):
        cfg_file, final = run / "config.json", run / "final_model"
        if not cfg_file.is_file() or not final.is_dir():
            continue
        cfg = _flat(json.loads(cfg_file.read_text()))
        cfg.setdefault("deepspeed_stage", cfg.get("deepspeed"))  # the column keeps the seed's name
        row = {k: cfg.get(k) for k in COLUMNS if k in cfg}
        metrics = run / "metrics.json"
        if metrics.is_file():
            m = json.loads(metrics.read_text())
            row["final_loss"] = m["history"][-1]["loss"] if m.get("history") else None
            row["train_seconds"] = m.get("train_seconds")
        check = run / "check.json"
        if check.is_file():
            c = json.loads(check.read_text())
            row["retention"] = c["retention"]
            row["token_accuracy"] = c["per_template"][c["template_set"]]["token_accuracy"]
            if "heldout" in c["per_template"]:
                row["retention_heldout"] = c["per_template"]["heldout"]["retention"]
        rows.append({k: row.get(k) for k in COLUMNS})
    return rows


def dp_table(results: Path) -> list[dict]:
    """One row per finished dp_finetune.py run under results/dp_models: mode, epsilon, held-out loss, extraction."""
    rows = []
    for run in sorted((results / "dp_models").glob("*/")):
        m_file = run / "metrics.json"
        if not m_file.is_file():
            continue
        m = json.loads(m_file.read_text())
        ev = m.get("eval", {})
        pii = ev.get("pii_extraction", {})
        rows.append({"run": run.name, "mode": m.get("mode"),
                     "epsilon": (m.get("privacy") or {}).get("epsilon"),  # null: no DP (infinite epsilon)
                     "heldout_loss": ev.get("heldout_loss"), "pii_extraction_rate": pii.get("rate"),
                     "pii_extraction_ci": pii.get("rate_ci") or (clopper_pearson(pii["extracted"], pii["n"])
                                                                 if pii.get("n") else None),
                     "pii_extracted": pii.get("extracted"), "pii_strings": pii.get("n"),
                     "pii_token_accuracy": pii.get("token_accuracy"),
                     "pii_by_type": pii.get("by_type"), "train_seconds": m.get("train_seconds"),
                     "scrubbed_entities": (m.get("scrub") or {}).get("entities")})
    order = {"undefended": 0, "scrubbed": 1, "dp": 2}
    return sorted(rows, key=lambda r: order.get(r["mode"], 3))


def format_dp_table(rows: list[dict]) -> str:
    """PII extraction with its 95% Clopper-Pearson interval next to it."""
    lines = [f"{'mode':<12}{'epsilon':>9}{'held-out loss':>15}{'PII extracted':>16}{'rate [95% CI]':>24}"
             f"{'PII token acc':>15}{'train s':>9}"]
    for r in rows:
        eps = "inf" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        # runs without ground-truth PII (ECHR, Enron) have nothing to extract: "-", not 0
        pii = f"{r['pii_extracted']}/{r['pii_strings']}" if r.get("pii_strings") else "-"
        rate = fmt(r.get("pii_extraction_rate"), r.get("pii_extraction_ci")) if r.get("pii_strings") else "-"
        tok = f"{r['pii_token_accuracy']:.4f}" if r.get("pii_token_accuracy") is not None else "-"
        lines.append(f"{r['mode']:<12}{eps:>9}{r['heldout_loss']:>15.4f}{pii:>16}{rate:>24}{tok:>15}"
                     f"{r['train_seconds']:>9.0f}")
    return "\n".join(lines)


def dp_main(results: Path) -> int:
    from .plots import pyplot, save

    rows = dp_table(results)
    atomic_write_json(results / "dp_table.json", rows)
    print("\n" + format_dp_table(rows))
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    names = [f"{r['mode']}\neps={r['epsilon']:.1f}" if r["epsilon"] is not None else r["mode"] for r in rows]
    rates = [r["pii_extraction_rate"] or 0 for r in rows]
    axes[0].bar(names, rates, color=["C3", "C1", "C2"][: len(rows)], capsize=4,
                yerr=yerr(rates, [r.get("pii_extraction_ci") for r in rows]))
    axes[0].set_title("PII extraction rate (greedy, from prefix; 95% CI)")
    axes[1].bar(names, [r["pii_token_accuracy"] or 0 for r in rows], color=["C3", "C1", "C2"][: len(rows)])
    axes[1].set_title("PII token accuracy (teacher-forced)")
    axes[2].bar(names, [r["heldout_loss"] for r in rows], color=["C3", "C1", "C2"][: len(rows)])
    axes[2].set_title("held-out loss")
    fig.tight_layout()
    save(fig, results / "dp_table.png")
    print(f"[privlm] {results / 'dp_table.json'}, {results / 'dp_table.png'}")
    return 0


def audit_table(folder: Path) -> list[dict]:
    """One row per audit.json under `folder` (python -m privlm.audit run), strongest privacy last."""
    rows = []
    for f in sorted(folder.glob("**/audit.json")):
        a = json.loads(f.read_text())
        at_ref = {b["method"]: b["epsilon_lower_bound"] for b in a.get("bounds", []) if b["delta"] == 1e-5}
        rows.append({"audit": str(f.parent), "mode": a.get("mode"), **{k: a.get(k) for k in (
            "threat_model", "verdict", "epsilon_lower_bound", "epsilon_lower_bound_method", "epsilon_upper_bound",
            "delta", "confidence", "num_canaries", "num_guesses", "num_correct", "auc", "auc_ci", "tpr_at_fpr",
            "attack", "canary_kind", "noise_multiplier", "train_seconds")},
                     "eps_delta_at_1e-5": at_ref.get("eps_delta"), "fdp_at_1e-5": at_ref.get("fdp")})
    # black-box before white-box, each from the least private (undefended) to the most
    return sorted(rows, key=lambda r: (r["threat_model"] == "whitebox", -(r["epsilon_upper_bound"] or float("inf"))))


def format_audit_table(rows: list[dict]) -> str:
    lines = [f"{'run':<14}{'threat':>10}{'eps_lb':>8}{'method':>10}{'delta':>9}{'eps_ub':>8}{'verdict':>12}"
             f"{'@1e-5 e-d/fdp':>15}{'right/guesses':>15}{'AUC [95% CI]':>24}{'TPR@1%FPR [95% CI]':>24}"]
    for r in rows:
        ub = "inf" if r["epsilon_upper_bound"] is None else f"{r['epsilon_upper_bound']:.2f}"
        t1 = next((t for t in r["tpr_at_fpr"] or [] if t["fpr"] == 0.01), None)
        ref = "/".join("-" if r.get(k) is None else f"{r[k]:.2f}" for k in ("eps_delta_at_1e-5", "fdp_at_1e-5"))
        lines.append(f"{Path(r['audit']).name[:13]:<14}{r.get('threat_model') or 'blackbox':>10}"
                     f"{r['epsilon_lower_bound']:>8.2f}{r.get('epsilon_lower_bound_method') or 'eps_delta':>10}"
                     f"{r['delta']:>9.2g}{ub:>8}{r.get('verdict') or '-':>12}{ref:>15}"
                     f"{str(r['num_correct']) + '/' + str(r['num_guesses']):>15}{fmt(r['auc'], r['auc_ci']):>24}"
                     f"{fmt(t1['tpr'], t1['ci']) if t1 else '-':>24}")
    return "\n".join(lines)


def audit_main(folder: Path) -> int:
    """The audit table (printed, audit_table.json) and one figure: eps_lb next to eps_ub, AUC with its interval,
    and every run's ROC curve."""
    import numpy as np

    from .plots import pyplot, roc_panel, save

    rows = audit_table(folder)
    if not rows:
        print(f"error: no audit.json under {folder}", file=sys.stderr)
        return 2
    atomic_write_json(folder / "audit_table.json", rows)
    print("\n" + format_audit_table(rows))
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    names = [Path(r["audit"]).name for r in rows]
    x = np.arange(len(rows))
    axes[0].bar(x - 0.2, [r["epsilon_lower_bound"] for r in rows], 0.4, label="eps lower bound (audit)",
                color=["C3" if r.get("verdict") == "violated" else "C0" for r in rows])
    ub = [r["epsilon_upper_bound"] for r in rows]
    axes[0].bar(x + 0.2, [u if u is not None else 0 for u in ub], 0.4, label="eps upper bound (accountant)")
    for i, u in enumerate(ub):
        if u is None:
            axes[0].text(i + 0.2, 0.05, "inf", ha="center", fontsize=8)
    axes[0].set_xticks(x, names, fontsize=8)
    axes[0].legend(fontsize=7)
    aucs = [r["auc"] for r in rows]
    axes[1].bar(x, aucs, yerr=yerr(aucs, [r["auc_ci"] for r in rows]), capsize=4, color="C2")
    axes[1].axhline(0.5, ls=":", color="grey")
    axes[1].set_xticks(x, names, fontsize=8)
    axes[1].set_title("MIA AUC on the canaries (95% CI)")
    curves = {}
    for r, name in zip(rows, names):
        f = Path(r["audit"]) / "scores.json"
        if f.is_file():
            sc = json.loads(f.read_text())
            s, m = np.asarray(sc["scores"]), np.asarray(sc["members"], dtype=bool)
            curves[name] = (s[m], s[~m])
    roc_panel(axes[2], curves)
    axes[2].set_title("ROC")
    fig.tight_layout()
    save(fig, folder / "audit_table.png")
    print(f"[privlm] {folder / 'audit_table.json'}, {folder / 'audit_table.png'}")
    return 0


def demo_main(argv: list[str]) -> int:
    """`python -m privlm.report demo REPORT [PHASE=SECONDS ...]`: the demo's five-line summary, and its phases in
    benchmarks/reports/demo_phases.json (the machine, the date, seconds per phase)."""
    import datetime as dt
    import os
    import platform

    report = Path(argv[0] if argv else "results/demo_check.json")
    if not report.is_file():
        print(f"error: no check report at {report} (run `make demo`)", file=sys.stderr)
        return 2
    r = json.loads(report.read_text())
    phases = {k: int(v) for k, v in (a.split("=", 1) for a in argv[1:])}
    t, h = r["per_template"], r["utility"]["heldout"]
    png = report.with_suffix(".png")
    lines = [
        f"retention, training template: {fmt(t['trained']['retention'], t['trained']['retention_ci'])} of "
        f"{r['num_fingerprints']} fingerprints; {len(t['heldout']['templates'])} held-out templates: "
        f"{fmt(t['heldout']['retention'], t['heldout']['retention_ci'])}" if "heldout" in t else
        f"retention: {fmt(r['retention'], r['retention_ci'])} of {r['num_fingerprints']} fingerprints",
        f"held-out perplexity {h['heldout_ppl_base']:.2f} -> {h['heldout_ppl_after']:.2f}: ratio "
        f"{fmt(h['heldout_ppl_ratio'], h['heldout_ppl_ratio_ci'], 4)} over {h['heldout_tokens']} tokens",
        f"KL(base || fingerprinted): {fmt(h['kl_base_tuned'], h['kl_base_tuned_ci'], 4)} per token; base scores "
        f"{'from the cache' if h.get('base_from_cache') else 'computed (and cached for the next run)'}",
        f"wall time {sum(phases.values())} s (" + ", ".join(f"{k} {v} s" for k, v in phases.items()) + ")",
        f"report {report}, figure {png}, model {r['model_path']}"]
    print("[demo] " + "\n[demo] ".join(lines))
    if phases:
        # one entry per kind of run: a first run (the base scored, the fine-tune trained) and a cached one
        cpu = f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}"
        out = Path("benchmarks/reports/demo_phases.json")
        try:
            kept = json.loads(out.read_text()) if out.is_file() else {}
        except json.JSONDecodeError:
            kept = {}
        kept = {k: v for k, v in kept.items() if k in ("first_run", "cached_run")}
        kind = "cached_run" if h.get("base_from_cache") else "first_run"
        kept[kind] = {"date": dt.date.today().isoformat(), "machine": cpu, "wall_seconds": sum(phases.values()),
                      "phases": phases, "base_from_cache": h.get("base_from_cache"),
                      "heldout_tokens": h["heldout_tokens"]}
        atomic_write_json(out, kept)
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "demo":
        return demo_main(argv[1:])
    if argv and argv[0] == "dp":
        return dp_main(Path(argv[1] if len(argv) > 1 else "results"))
    if argv and argv[0] == "audit":
        return audit_main(Path(argv[1] if len(argv) > 1 else "results/audit_demo"))
    results = Path(argv[0] if argv else "results")
    rows = collect(results)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(results / "sweep.csv", buf.getvalue())
    atomic_write_json(results / "sweep.json", rows)
    print(f"[privlm] {len(rows)} finished runs -> {results / 'sweep.csv'}, {results / 'sweep.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
