"""Collect finished runs into one table: `python -m privlm.report results` writes results/sweep.{csv,json}."""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from .io import atomic_write_json, atomic_write_text

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
                     "pii_extracted": pii.get("extracted"), "pii_strings": pii.get("n"),
                     "pii_token_accuracy": pii.get("token_accuracy"),
                     "pii_by_type": pii.get("by_type"), "train_seconds": m.get("train_seconds"),
                     "scrubbed_entities": (m.get("scrub") or {}).get("entities")})
    order = {"undefended": 0, "scrubbed": 1, "dp": 2}
    return sorted(rows, key=lambda r: order.get(r["mode"], 3))


def format_dp_table(rows: list[dict]) -> str:
    lines = [f"{'mode':<12}{'epsilon':>9}{'held-out loss':>15}{'PII extracted':>16}{'PII token acc':>15}"
             f"{'train s':>9}"]
    for r in rows:
        eps = "inf" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        # runs without ground-truth PII (ECHR, Enron) have nothing to extract: "-", not 0
        pii = f"{r['pii_extracted']}/{r['pii_strings']}" if r.get("pii_strings") else "-"
        tok = f"{r['pii_token_accuracy']:.4f}" if r.get("pii_token_accuracy") is not None else "-"
        lines.append(f"{r['mode']:<12}{eps:>9}{r['heldout_loss']:>15.4f}{pii:>12}{'':4}{tok:>15}"
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
    axes[0].bar(names, [r["pii_extraction_rate"] or 0 for r in rows], color=["C3", "C1", "C2"][: len(rows)])
    axes[0].set_title("PII extraction rate (greedy, from prefix)")
    axes[1].bar(names, [r["pii_token_accuracy"] or 0 for r in rows], color=["C3", "C1", "C2"][: len(rows)])
    axes[1].set_title("PII token accuracy (teacher-forced)")
    axes[2].bar(names, [r["heldout_loss"] for r in rows], color=["C3", "C1", "C2"][: len(rows)])
    axes[2].set_title("held-out loss")
    fig.tight_layout()
    save(fig, results / "dp_table.png")
    print(f"[privlm] {results / 'dp_table.json'}, {results / 'dp_table.png'}")
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "dp":
        return dp_main(Path(argv[1] if len(argv) > 1 else "results"))
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
