"""DP-SGD step cost: non-DP step vs our DP step vs Opacus's DP step (hooks), same LoRA model, same batch.

    python benchmarks/dp_overhead.py                 # default model, LoRA r=8 on q/k/v/o, batch 8 x 64 tokens
    python benchmarks/dp_overhead.py --tiny          # a tiny random model (seconds)

Peak memory and first-step gradients come from each variant alone in its own process. Times come from one process
holding three copies of the model, the variants taking turns step by step (the order rotating), after warm-up,
so that the machine's drift falls on all three alike; the median step of each is reported. Noise is 0 so the
gradients of our step and Opacus's can be compared. Last stdout line is JSON:
{"dp_over_nondp_time", "opacus_overhead_over_ours", "dp_over_nondp_peak_memory", "max_abs_grad_diff_vs_opacus", ...}
with opacus_overhead_over_ours = (Opacus DP time - non-DP time) / (our DP time - non-DP time).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build(args):
    from peft import LoraConfig, get_peft_model

    from privlm.testing import benchmark_batch, benchmark_model

    torch.manual_seed(0)
    base = benchmark_model(args.model_path, args.tiny)
    model = get_peft_model(base, LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    for n, p in model.named_parameters():
        if "lora_B" in n:  # PEFT starts B at zero; give A's gradients something to carry
            torch.nn.init.normal_(p, std=0.02)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(dev)
    vocab = model.get_input_embeddings().weight.shape[0]
    return (model, *benchmark_batch(vocab, args.batch_size, args.seq_len, low=10, device=dev))


def make_step(args, variant: str):
    """(step function, params, optimizer) of one variant on its own copy of the model."""
    from privlm.dp.clipping import per_example_loss
    from privlm.dp.ghost import GhostClipping

    model, ids, mask, labels = build(args)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    B, C = ids.shape[0], args.clip

    if variant == "nondp":
        def step():
            loss = per_example_loss(model(input_ids=ids, attention_mask=mask).logits, labels).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    elif variant == "ours":  # the DP step's own clipping engine (privlm.dp.ghost, as DPStep uses it)
        pe = GhostClipping(model)
        pe.enabled = True

        def step():
            loss = per_example_loss(model(input_ids=ids, attention_mask=mask).logits, labels)
            sums, _ = pe.clipped_sum(loss, C)
            for p in params:
                p.grad = sums[p] / B  # noise 0 for the comparison; DPStep adds it on one rank
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        from opacus import PrivacyEngine

        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids.cpu()), batch_size=B)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, opt, _ = PrivacyEngine().make_private(module=model, optimizer=opt, data_loader=loader,
                                                         noise_multiplier=0.0, max_grad_norm=C,
                                                         poisson_sampling=False, grad_sample_mode="hooks")

        def step():
            loss = per_example_loss(model(input_ids=ids, attention_mask=mask).logits, labels).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return step, params, opt


def first_step_grads(step, params, opt) -> dict:
    """Gradients of the first step, before the optimizer moves anything."""
    grads, orig = {}, opt.step

    def wrapped(*a, **k):
        if hasattr(opt, "pre_step"):  # Opacus: clip + noise happen in pre_step
            opt.pre_step()
            for i, p in enumerate(params):
                grads[i] = p.grad.detach().cpu().clone()
            return opt.original_optimizer.step()
        for i, p in enumerate(params):
            grads[i] = p.grad.detach().cpu().clone()
        return orig(*a, **k)

    opt.step = wrapped
    step()
    opt.step = orig
    return grads


def run_variant(args) -> dict:
    """One variant alone in this process: its first-step gradients and its peak memory over a few steps."""
    step, params, opt = make_step(args, args.variant)
    grads = first_step_grads(step, params, opt)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    torch.save({str(k): v for k, v in grads.items()}, args.grads_out)
    return {"peak_bytes": peak}


def interleaved_times(args) -> dict:
    """Median step time of each variant, the three taking turns (order rotated each round) in one process, so
    that the machine's drift over minutes falls on all of them alike."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    steps = {v: make_step(args, v)[0] for v in VARIANTS}
    for _ in range(args.warmup):
        for f in steps.values():
            f()
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for k in range(args.steps):
        order = VARIANTS[k % 3:] + VARIANTS[:k % 3]
        for v in order:
            sync()
            t = time.perf_counter()
            steps[v]()
            sync()
            times[v].append(time.perf_counter() - t)
    return {v: sorted(ts)[len(ts) // 2] for v, ts in times.items()}


VARIANTS = ["nondp", "ours", "opacus"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_path", default="default")
    ap.add_argument("--tiny", action="store_true", help="tiny random model instead of the default model")
    ap.add_argument("--lora_r", type=int, default=8)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--seq_len", type=int, default=64)
    ap.add_argument("--clip", type=float, default=1e-3, help="small enough that every example is clipped")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=9, help="timed steps of each variant (taking turns)")
    ap.add_argument("--variant", choices=["nondp", "ours", "opacus"], help=argparse.SUPPRESS)
    ap.add_argument("--grads_out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    res, grads = {}, {}
    with tempfile.TemporaryDirectory() as d:
        for v in VARIANTS:
            cmd = [sys.executable, __file__, "--variant", v, "--grads_out", f"{d}/{v}.pt"] + [
                a for a in sys.argv[1:]]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"variant {v} failed:\n{out.stderr[-3000:]}")
            res[v] = json.loads(out.stdout.strip().splitlines()[-1])
            grads[v] = torch.load(f"{d}/{v}.pt", weights_only=True)
    t = interleaved_times(args)
    for v in VARIANTS:
        print(f"{v:7s} step {t[v]:.3f} s, peak {res[v]['peak_bytes'] / 2**20:.0f} MiB", flush=True)
    diff = max((grads["ours"][k] - grads["opacus"][k]).abs().max().item() for k in grads["ours"])
    print(json.dumps({
        "dp_over_nondp_time": round(t["ours"] / t["nondp"], 4),
        # our overhead is floored at 1% of the non-DP step: at or below zero the ratio would be meaningless
        "opacus_overhead_over_ours": round((t["opacus"] - t["nondp"]) / max(t["ours"] - t["nondp"], 0.01 * t["nondp"]),
                                           3),
        "dp_over_nondp_peak_memory": round(res["ours"]["peak_bytes"] / res["nondp"]["peak_bytes"], 4),
        "max_abs_grad_diff_vs_opacus": diff,
        "opacus_over_nondp_time": round(t["opacus"] / t["nondp"], 4),
        "seconds": t, "peak_mib": {k: round(v["peak_bytes"] / 2**20, 1) for k, v in res.items()},
        "model": "tiny" if args.tiny else args.model_path, "lora_r": args.lora_r,
        "batch": [args.batch_size, args.seq_len], "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
