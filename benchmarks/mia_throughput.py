"""MIA throughput: every attack on the same samples vs plain forward passes over them.

    python benchmarks/mia_throughput.py               # default model as target and reference, 64 samples x ~128 tokens
    python benchmarks/mia_throughput.py --tiny        # a tiny random model (seconds)

All token-level attacks (loss, zlib, min_k, min_k_pct, min_kpp) read one forward pass of the target; ratio also
needs one of the reference model. So the plain baseline is one forward pass of each model (2 passes), and
attacks_over_forward_throughput = baseline time / time of all attacks except lowercase (scores included).
Lowercase needs a third pass over different (lowercased) text; it is counted separately and honestly in
all_with_lowercase_over_forward (same 2-pass baseline, so about 2/3 is the best possible). Last stdout line is JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def texts(n: int, words: int) -> list[str]:
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(0)
    out = []
    for _ in range(n):
        t = ""
        while len(t.split()) < words:
            t += fake.paragraph(nb_sentences=5) + " "
        out.append(" ".join(t.split()[:words]))
    return out


def plain_forward(model, tok, samples, batch_size):
    """The same padded, length-sorted batches the attacks use, through the model, logits left unscored."""
    from privlm.eval.batching import encode_texts, forward_batches

    for _ in forward_batches(model, tok, encode_texts(tok, samples), batch_size):
        pass


def best_of(fn, repeats: int) -> float:
    from privlm.testing import timed

    return min(timed(fn)[1] for _ in range(repeats))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--words", type=int, default=90, help="words per sample (~128 tokens)")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_grad_enabled(False)

    from privlm import models
    from privlm.mia import ATTACKS
    from privlm.mia.scoring import Stats, token_stats

    if args.tiny:
        from privlm.testing import build_model, build_tokenizer

        tok = build_tokenizer()
        target = build_model(len(tok), 0).to(models.device()).eval()
        reference = build_model(len(tok), 1).to(models.device()).eval()
        ref_tok = tok
    else:
        tok = ref_tok = models.load_tokenizer(args.model)
        dtype = "auto" if torch.cuda.is_available() else "float32"  # bf16 on a GPU
        target = models.load_model(args.model, dtype=dtype, device=models.device()).eval()
        reference = models.load_model(args.model, dtype=dtype, device=models.device()).eval()
    samples = texts(args.samples, args.words)
    names = [n for n in ATTACKS if n != "lowercase"]

    def baseline():
        plain_forward(target, tok, samples, args.batch_size)
        plain_forward(reference, ref_tok, samples, args.batch_size)

    def attacks():
        st = Stats(samples, token_stats(target, tok, samples, args.batch_size, moments=True))
        st.reference = token_stats(reference, ref_tok, samples, args.batch_size, moments=False)
        return st, {n: ATTACKS[n].score(st) for n in names}

    def lowercase():
        token_stats(target, tok, [s.lower() for s in samples], args.batch_size, moments=False)

    baseline(), attacks()  # warm-up
    t_base = best_of(baseline, args.repeats)
    t_att = best_of(attacks, args.repeats)
    t_low = best_of(lowercase, args.repeats)
    n_tok = sum(len(tok(s)["input_ids"]) for s in samples)
    res = {"attacks_over_forward_throughput": round(t_base / t_att, 4),
           "all_with_lowercase_over_forward": round(t_base / (t_att + t_low), 4),
           "attacks_timed": names, "lowercase_excluded_from_main_figure": True,
           "baseline": "one plain forward pass of the target and one of the reference model",
           "baseline_seconds": round(t_base, 3), "attacks_seconds": round(t_att, 3), "lowercase_seconds": round(t_low, 3),
           "samples": args.samples, "tokens": n_tok, "batch_size": args.batch_size,
           "model": "tiny" if args.tiny else args.model,
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
           "dtype": str(next(target.parameters()).dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
           "date": time.strftime("%Y-%m-%d"),
           "goals": {"attacks_over_forward_throughput": ">= 0.95"}}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
