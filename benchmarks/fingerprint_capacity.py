"""How many fingerprints a model holds, and what they cost: retention, held-out perplexity (ratio to the base,
on ~58k tokens of human-written English, privlm.eval.heldout) and mean KL(base || tuned), and retention after a
thief's further fine-tuning, per number of fingerprints, with the fine-tuning script's current defaults.

    python benchmarks/fingerprint_capacity.py --num_fingerprints 32 128 512 1024 [--strategy inverse_nucleus english]
    python benchmarks/fingerprint_capacity.py --num_fingerprints 128 --label no_mixing \
        --finetune_args="--benign_proportion 0" --output_dir results/capacity_ablation

Each N trains finetune_multigpu.py under `deepspeed --num_gpus G` (two CPU ranks without GPUs) into
<output_dir>/runs/<label>_<strategy>_<N>/; a row is written to <output_dir>/rows/ when it is done, so a killed
benchmark resumes where it stopped, and the base model's held-out scores are kept in <output_dir>/base_scores.json
for later invocations (ablations) on the same model, text, device and precision. Each row records the fingerprints
file's sha256 (rows of another file are refused, not mixed in), the device and the precision it was measured in.
Fingerprints come from --fingerprints_file_path, or are generated once per strategy (as many as the largest N).
Last stdout line is JSON {"rows": [{"strategy", "num_fingerprints", "retention", "retention_ci", "heldout_ppl_base",
"heldout_ppl_after", "heldout_ppl_ratio", "kl_base_tuned", "train_seconds", ...}]}; the figure goes to
<output_dir>/capacity.png.
"""
from __future__ import annotations

import argparse
import json
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from privlm import config as C  # noqa: E402
from privlm import fingerprint, models, plots  # noqa: E402
from privlm.errors import UserError, cli  # noqa: E402
from privlm.eval import heldout  # noqa: E402
from privlm.fingerprint import attacks  # noqa: E402
from privlm.fingerprint.verify import run_settings  # noqa: E402
from privlm.io import atomic_write_json, read_json  # noqa: E402


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num_fingerprints", type=int, nargs="+", default=[32, 128, 512, 1024])
    p.add_argument("--strategy", nargs="+", default=["inverse_nucleus"],
                   choices=sorted(fingerprint.STRATEGIES) + sorted(fingerprint.ALIASES))
    p.add_argument("--fingerprints_file_path", help="one file for every N (one strategy only)")
    p.add_argument("--model_path", default="default")
    p.add_argument("--output_dir", default="results/capacity")
    p.add_argument("--label", default="defaults", help="names this setting's rows (ablations)")
    p.add_argument("--finetune_args", default="", help="extra finetune_multigpu.py flags, one string: "
                                                        "--finetune_args=\"--bf16 --benign_proportion 0\"")
    p.add_argument("--num_gpus", type=int, default=None, help="ranks (default: the GPUs, else 2 CPU ranks)")
    p.add_argument("--sft_steps", type=int, default=32, help="persistence: retention after this many steps of a "
                                                             "thief's fine-tuning (0: skip)")
    p.add_argument("--kl_windows", type=int, default=64, help="windows of 256 tokens for the KL (perplexity "
                                                              "uses every window)")
    p.add_argument("--heldout_text", default=str(heldout.HELDOUT_ENGLISH), help="held-out text (default: ~58k "
                                                                              "tokens of English)")
    p.add_argument("--key_length", type=int, default=16)
    p.add_argument("--response_length", type=int, default=1)
    a = p.parse_args(argv)
    bad = [f"--num_fingerprints {n}: must be >= 1" for n in a.num_fingerprints if n < 1]
    if a.fingerprints_file_path and len(a.strategy) > 1:
        bad.append("--fingerprints_file_path: give one --strategy with it")
    if not Path(a.heldout_text).is_file():
        bad.append(f"--heldout_text: {a.heldout_text} not found")
    if bad:
        raise UserError("; ".join(bad))
    return a


def fingerprints_file(a, strategy: str, out: Path) -> Path:
    need = max(a.num_fingerprints)
    if a.fingerprints_file_path:
        path = Path(a.fingerprints_file_path)
    else:
        path = out / f"fingerprints_{strategy}.json"
        if not path.is_file():
            out.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, str(ROOT / "generate_finetuning_data.py"), "--key_response_strategy",
                            strategy, "--num_fingerprints", str(need), "--key_length", str(a.key_length),
                            "--response_length", str(a.response_length), "--model_used_for_key_generation",
                            a.model_path, "--output_file_path", str(path)], check=True)
    have = len(fingerprint.load(str(path)))
    if have < need:
        raise UserError(f"fingerprints file {path} has {have} fingerprints, fewer than --num_fingerprints {need}")
    return path


def train(a, strategy: str, n: int, fps: Path, run_dir: Path) -> dict:
    import torch

    gpus = a.num_gpus or torch.cuda.device_count() or 2
    with socket.socket() as sock:  # a free rendezvous port: DeepSpeed's default 29500 may still be held
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(gpus), "--master_port", str(port),
           str(ROOT / "finetune_multigpu.py"),
           "--model_path", a.model_path, "--fingerprints_file_path", str(fps), "--num_fingerprints", str(n),
           "--fingerprint_generation_strategy", strategy, "--max_key_length", str(a.key_length),
           "--max_response_length", str(a.response_length), "--output_dir", str(run_dir),
           *shlex.split(a.finetune_args)]
    print("[capacity] " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    wall_file = run_dir / "capacity_wall_seconds.json"  # a run trained before a kill keeps its own wall time
    t0 = time.time()
    subprocess.run(cmd, check=True)
    metrics = read_json(run_dir / "metrics.json", "run metrics")
    if not wall_file.is_file():  # a run resumed mid-training adds the training its killed process had done
        wall = time.time() - t0 + (metrics.get("resumed_after_seconds") or 0)
        atomic_write_json(wall_file, {"wall_seconds": round(wall, 1)})
    return {"train_seconds": metrics.get("train_seconds"), "wall_seconds": read_json(wall_file, "wall time")["wall_seconds"],
            "optimizer_steps": metrics.get("optimizer_steps"), "world_size": metrics.get("world_size")}


def base_scores(a, out: Path, base, wins) -> dict:
    """The base model's held-out scores, kept in <output_dir>/base_scores.json for the same model, text, windows,
    device and precision: every invocation (each ablation) would otherwise score the base again (about 6 min in
    fp32 on a 2-core CPU)."""
    import numpy as np

    key = {"model": models.identity(a.model_path), "heldout_sha256": C.file_digest(a.heldout_text),
           "windows": len(wins), "tokens": sum(len(w) - 1 for w in wins), **models.where(base)}
    path = out / "base_scores.json"
    if path.is_file():
        kept = read_json(path, "base scores")
        if kept.get("key") == json.loads(json.dumps(key)):
            return {k: np.array(kept[k], dtype=float) for k in ("nll", "count")}
    scores = heldout.score(base, wins, progress="held-out (base)")
    atomic_write_json(path, {"key": key, **{k: v.tolist() for k, v in scores.items()}})
    return scores


def measure(a, final: Path, base, base_scores, wins) -> dict:
    s = run_settings(str(final))
    target = attacks.Target(str(final), s["base_model"], fingerprint.load(s["fingerprints_file_path"],
                                                                          s["num_fingerprints"]), s, base=base)
    tuned = target.load()
    r = target.retention(tuned)
    row = {"retention": r["retention"], "retention_ci": r["retention_ci"], **models.where(tuned)}
    row.update(heldout.summary(heldout.score(tuned, wins, base=base, kl_windows=a.kl_windows,
                                             progress="held-out (tuned)"), base_scores))
    if a.sft_steps:
        sft = attacks.attack_sft(target, attacks.AttackSettings(sft_steps=[a.sft_steps], seed=0), model=tuned)[0]
        row.update(sft_steps=a.sft_steps, retention_after_sft=sft["retention"],
                   retention_after_sft_ci=sft["retention_ci"])
    return row


@cli
def main(argv=None):
    a = parse(argv)
    out = Path(a.output_dir)
    files = {s: fingerprints_file(a, s, out) for s in dict.fromkeys(fingerprint.ALIASES.get(s, s) for s in a.strategy)}
    (out / "rows").mkdir(parents=True, exist_ok=True)
    digests = {s: C.file_digest(f) for s, f in files.items()}  # rows from another file are not these rows
    base = tok = scores = wins = None
    rows = []
    for strategy, fps in files.items():
        for n in a.num_fingerprints:
            row_file = out / "rows" / f"{a.label}_{strategy}_{n}.json"
            if row_file.is_file():
                row = read_json(row_file, "capacity row")
                if row.get("fingerprints_sha256", digests[strategy]) != digests[strategy]:
                    raise UserError(f"{row_file} was measured on another fingerprints file than {fps}: move it "
                                    f"away or use another --output_dir")
                rows.append(row)
                print(f"[capacity] {row_file} done before; kept", flush=True)
                continue
            run_dir = out / "runs" / f"{a.label}_{strategy}_{n}"
            row = {"label": a.label, "strategy": strategy, "num_fingerprints": n, "finetune_args": a.finetune_args,
                   "fingerprints_sha256": digests[strategy], **train(a, strategy, n, fps, run_dir)}
            if base is None:
                tok = models.load_tokenizer(a.model_path)
                base = models.load_model(a.model_path, device=models.device()).eval()
                wins = heldout.windows(tok, Path(a.heldout_text).read_text())
                scores = base_scores(a, out, base, wins)
            row.update(measure(a, run_dir / "final_model", base, scores, wins))
            atomic_write_json(row_file, row)
            rows.append(row)
            print(f"[capacity] {a.label} {strategy} N={n}: retention {row['retention']:.3f} "
                  f"{row['retention_ci']}, ppl ratio {row['heldout_ppl_ratio']:.4f} {row['heldout_ppl_ratio_ci']}, "
                  f"KL {row['kl_base_tuned']:.4f}, train {row['train_seconds']} s", flush=True)
    png = plots.save(plots.capacity_figure(rows), out / "capacity.png")
    print(f"[capacity] figure: {png}")
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main(sys.argv[1:])
