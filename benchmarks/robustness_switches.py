"""What each robustness ingredient of the fingerprint fine-tune buys: the demo's fine-tune with one switch at a time,
each model attacked the same way (held-out system prompts, a merge with the base, the perplexity filter, output
suppression), retention with its 95% Wilson interval and the ownership p-value per row.

    python benchmarks/robustness_switches.py [--variants baseline merge_aware augmentation random_word_keys]
        [--output_file benchmarks/reports/robustness_switches.json]

Every variant is a real two-rank DeepSpeed run of finetune_multigpu.py (configs/fingerprint/demo_finetune.yml plus
the variant's flags) and a run of attack_fingerprints.py; runs are content-hashed, so a rerun (or a resumed kill)
reuses what is done. Last stdout line is JSON: {"rows": [{"variant", "attack", "param", "retention", ...}]}.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from privlm.io import atomic_write_json  # noqa: E402

DEMO_FP = "generated_data/demo_fingerprints.json"
# name -> (finetune flags, fingerprints file or None for the demo's, generate flags for that file)
VARIANTS = {
    "baseline": ([], None, None),
    "merge_aware": (["--merge_aware_alphas", "0.5"], None, None),
    "augmentation": (["--use_augmentation_prompts", "true"], None, None),
    "random_word_keys": ([], "generated_data/robustness_random_word.json",
                         ["--key_response_strategy", "random_word", "--num_fingerprints", "32", "--key_length", "16",
                          "--response_length", "32"]),
}
ATTACKS = ["none", "system_prompts", "merge", "perplexity_filter", "output_suppression"]


def sh(cmd: list[str], log: Path) -> None:
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        sys.exit(f"error: {cmd[0]} {cmd[1] if len(cmd) > 1 else ''} failed (exit {rc}); see {log}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--merge_alphas", nargs="+", default=["0.5"])
    p.add_argument("--heldout_tokens", default="8192", help="held-out tokens for the thief's perplexity cost")
    p.add_argument("--work_dir", default="results/robustness")
    p.add_argument("--output_file", default="benchmarks/reports/robustness_switches.json")
    a = p.parse_args(argv)
    py, ds = sys.executable, str(Path(sys.executable).with_name("deepspeed"))
    work = ROOT / a.work_dir
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    if not (ROOT / DEMO_FP).is_file():
        sh([py, "generate_finetuning_data.py", "--config", "configs/fingerprint/demo_generate.yml"], log)
    rows, timing = [], {}
    for name in a.variants:
        flags, fp, gen = VARIANTS[name]
        t0 = time.time()
        if fp and not (ROOT / fp).is_file():
            sh([py, "generate_finetuning_data.py", "--config", "configs/fingerprint/demo_generate.yml", *gen,
                "--output_file_path", fp], log)
        link = work / name
        sh([ds, "--num_gpus", "2", "finetune_multigpu.py", "--config", "configs/fingerprint/demo_finetune.yml",
            "--fingerprints_file_path", fp or DEMO_FP, "--run_link", str(link), *flags], log)
        t1 = time.time()
        report = work / f"{name}_attacks.json"
        if not report.is_file():
            sh([py, "attack_fingerprints.py", "--model_path", str(link / "final_model"), "--attacks", *ATTACKS,
                "--merge_alphas", *a.merge_alphas, "--heldout_tokens", a.heldout_tokens,
                "--output_file", str(report)], log)
        for r in json.loads(report.read_text())["rows"]:
            rows.append({"variant": name, "flags": " ".join(flags) or "(demo)", **{
                k: r.get(k) for k in ("attack", "param", "retention", "retention_ci", "matched", "num_fingerprints",
                                      "ownership_p_value", "thief_ppl_ratio", "thief_ppl_ratio_ci",
                                      "thief_rejected_share", "thief_rejected_share_ci", "thief_altered_share",
                                      "thief_altered_share_ci")}})
        timing[name] = {"finetune_s": round(t1 - t0, 1), "attacks_s": round(time.time() - t1, 1)}
        mine = [r for r in rows if r["variant"] == name]
        print(f"[robustness] {name}: " + ", ".join(f"{r['attack']} {r['param'] or ''} {r['retention']:.3f}"
                                                   for r in mine), flush=True)
    out = {"date": time.strftime("%Y-%m-%d"), "config": "configs/fingerprint/demo_finetune.yml",
           "attacks": ATTACKS, "merge_alphas": a.merge_alphas, "timing": timing, "rows": rows}
    atomic_write_json(ROOT / a.output_file, out)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
