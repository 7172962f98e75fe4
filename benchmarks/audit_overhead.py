"""What an audit costs beyond the training run it audits, for every finished audit under a folder.

    python benchmarks/audit_overhead.py [results/audit_demo] [--repeats 20]

White-box: the canaries' own work per DP step (adding C u_i for the sampled members, reading the released sum along
every u_i) is timed on the audited run's trainable weights (rebuilt from its config, LoRA included), times its
steps; black-box: scoring every canary on the trained model (the audit's attack) is timed afresh. Both plus the
bounds, over the run's training seconds (train/metrics.json). Planted black-box canaries also make the training set
larger (N counts them): that is part of the training run measured, not of the overhead. Writes
benchmarks/reports/audit_overhead.json; last stdout line is the JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def trainable_params(run_cfg: dict):
    """The audited run's trainable weights (the base model plus its LoRA adapter, as dp_finetune builds them)."""
    from privlm import models
    from privlm.dp.finetune import full_dp, lora

    m = run_cfg["model"]
    model = models.load_model(m["model_path"], dtype="float32")
    if m.get("peft", "lora") == "lora":
        class A:  # the ModelArgs fields lora() reads
            lora_r, lora_alpha, lora_dropout, target_modules = (m["lora_r"], m["lora_alpha"], m["lora_dropout"],
                                                                m["target_modules"])
        model = lora(A)(model)
    else:
        model = full_dp(model)
    return [p.detach().clone().float() for p in model.parameters() if p.requires_grad]


def whitebox_cost(audit: dict, canaries: list[dict], run_cfg: dict, repeats: int) -> float:
    from privlm.audit.whitebox import GradientCanaries
    from privlm.dp.randomness import NoiseSource

    params = trainable_params(run_cfg)
    wb = GradientCanaries([c["member"] for c in canaries], canaries[0]["gradient"], canaries[0]["seed"])
    wb.bind(params, audit["sample_rate"], 1.0, audit["noise_multiplier"] or 0.0)
    source = NoiseSource(False, 0)
    t0 = time.perf_counter()
    for i in range(repeats):
        wb.add_(params, source, i)
        wb.observe(params, 1)
    return (time.perf_counter() - t0) / repeats * audit["steps"]


def blackbox_cost(audit: dict, canaries: list[dict], run_cfg: dict) -> float:
    from privlm import models
    from privlm.dp.finetune import DPFinetuneConfig, load_trained
    from privlm import config as C
    from privlm.mia.scoring import score_texts

    import tempfile

    saved = {k: v for k, v in run_cfg.items() if k != "run_hash"}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(saved, f)
    cfg = C.parse(DPFinetuneConfig, ["--config", f.name])
    Path(f.name).unlink()
    tok = models.load_tokenizer(cfg.model.model_path)
    t0 = time.perf_counter()
    model = load_trained(cfg, Path(audit["training_run"]) / "final_model")
    texts = [c["text"] for c in canaries]
    score_texts(model, tok, texts, [audit["attack"]],
                reference=audit.get("reference_model") or cfg.model.model_path, dtype=cfg.model.dtype)
    return time.perf_counter() - t0


def main():
    from privlm.audit import bound
    from privlm.io import atomic_write_json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", default="results/audit_demo")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "reports" / "audit_overhead.json"))
    a = ap.parse_args()
    rows = []
    for f in sorted(Path(a.folder).glob("*/audit.json")):
        audit, d = json.loads(f.read_text()), f.parent
        canaries = [json.loads(x) for x in (d / "canaries.jsonl").read_text().splitlines() if x.strip()]
        run_cfg = json.loads((d / "train" / "config.json").read_text())
        train = json.loads((d / "train" / "metrics.json").read_text())["train_seconds"]
        white = audit.get("threat_model") == "whitebox"
        cost = whitebox_cost(audit, canaries, run_cfg, a.repeats) if white else blackbox_cost(audit, canaries,
                                                                                                run_cfg)
        sc = json.loads((d / "scores.json").read_text())
        t0 = time.perf_counter()
        bound.bounds(sc["scores"], sc["members"], [audit["delta"], bound.REFERENCE_DELTA], audit["confidence"])
        cost += time.perf_counter() - t0
        rows.append({"audit": d.name, "threat_model": audit.get("threat_model", "blackbox"),
                     "train_seconds": train, "audit_seconds": round(cost, 2),
                     "audit_over_training": round(cost / train, 4)})
        print(f"{d.name:<14}{rows[-1]['threat_model']:>10}  training {train:8.1f} s  audit {cost:7.2f} s  "
              f"= {cost / train:.1%}", flush=True)
    import datetime
    import platform

    out = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
           "rows": rows, "max_audit_over_training": max((r["audit_over_training"] for r in rows), default=None)}
    atomic_write_json(a.out, out)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
