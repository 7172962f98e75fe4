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


def collect(results: Path) -> list[dict]:
    rows = []
    for run in sorted((results / "saved_models").glob("*/")):
        cfg_file, final = run / "config.json", run / "final_model"
        if not cfg_file.is_file() or not final.is_dir():
            continue
        cfg = json.loads(cfg_file.read_text())
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


def main(argv: list[str]) -> int:
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
