"""Batched fingerprint checking vs one-at-a-time greedy generation (how the seed checks), on the same fingerprints.

    python benchmarks/check_throughput.py [--model_path default] [--num_fingerprints 128] [--batch_size 64]

Half of the fingerprints are the model's own greedy continuations (so they count as retained) and half are random
words (not retained), so both verdicts occur. The check is one teacher-forced pass per batch (greedy decoding
reproduces a response exactly when every forced argmax is the next response token); three figures, side by side:
  speedup                        one-at-a-time `generate` time / check time (verdicts must be identical)
  check_over_forward_throughput  time of one plain forward pass over the same padded batches (full logits, as a
                                 user would call the model) / check time: 1.0 is the physical limit of a check
  speedup_decoding_misses        the same check that also decodes the misses further (what the listing does)
Last stdout line is JSON; --report writes it to a file too (benchmarks/reports/check_throughput.json).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from privlm import data, fingerprint, models  # noqa: E402
from privlm.eval.greedy import batches, greedy_match, greedy_match_one_by_one  # noqa: E402
from privlm.testing import timed  # noqa: E402


def build_examples(model, tok, n: int, key_len: int, resp_len: int, seed: int) -> list[data.Encoded]:
    rng = random.Random(seed)
    words = fingerprint.WORDS_FILE.read_text().split()
    keys = [" ".join(rng.choice(words) for _ in range(key_len)) for _ in range(n)]
    examples = [data.encode(tok, k, " ".join(rng.choice(words) for _ in range(resp_len)), data.BARE, False,
                            key_len, resp_len) for k in keys]
    half = examples[: n // 2]  # make these the model's own greedy continuation, EOS excluded
    prompts = [e.prompt for e in half]
    batch = data.left_padded(prompts, tok.pad_token_id)
    with torch.no_grad():
        gen = model.generate(**batch, do_sample=False, max_new_tokens=resp_len + 1,
                             pad_token_id=tok.pad_token_id, eos_token_id=None)
    for e, row in zip(half, gen[:, batch["input_ids"].shape[1]:].tolist()):
        e.response = row
    return examples


@torch.no_grad()
def plain_forward(model, tok, ex, batch_size):
    """One forward pass over every fingerprint's prompt + response tokens, in the check's own batches."""
    dev = next(model.parameters()).device
    for _, ids, mask, pos, _, _ in batches(ex, batch_size, tok.pad_token_id):
        model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_path", default="default")
    ap.add_argument("--num_fingerprints", type=int, default=128)
    ap.add_argument("--key_length", type=int, default=16)
    ap.add_argument("--response_length", type=int, default=8)
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of the check and the forward pass (best kept)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="auto: fp32 on a CPU, the checkpoint's dtype (bf16) on a GPU")
    ap.add_argument("--report", help="also write the JSON here")
    ap.add_argument("--tiny", action="store_true", help="the tiny random model (a smoke run, seconds)")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    if args.tiny:
        from privlm.testing import build_model, build_tokenizer

        tok = build_tokenizer()
        model = build_model(len(tok)).to(models.device()).eval()
        args.model_path = "tiny"
    else:
        tok = models.load_tokenizer(args.model_path)
        model = models.load_model(args.model_path, device=models.device()).eval()
    ex = build_examples(model, tok, args.num_fingerprints, args.key_length, args.response_length, args.seed)
    if args.dtype != "auto":
        model = model.to(getattr(torch, args.dtype))
    greedy_match(model, tok, ex[:4], batch_size=4, progress=False)  # warm-up
    plain_forward(model, tok, ex[:4], 4)

    check = lambda decode: [v.match for v in greedy_match(model, tok, ex, batch_size=args.batch_size,  # noqa: E731
                                                            progress=False, decode_misses=decode)]
    # interleaved repeats, best of each: the ratios compare the same machine state
    t_check = t_forward = t_decode = float("inf")
    for _ in range(args.repeats):
        batched, t = timed(lambda: check(False))
        t_check = min(t_check, t)
        t_forward = min(t_forward, timed(lambda: plain_forward(model, tok, ex, args.batch_size))[1])
        decoded, t = timed(lambda: check(True))
        t_decode = min(t_decode, t)
    single, t_single = timed(lambda: greedy_match_one_by_one(model, tok, ex))
    dev = models.device()
    out = {
        "speedup": round(t_single / t_check, 2), "check_over_forward_throughput": round(t_forward / t_check, 3),
        "speedup_decoding_misses": round(t_single / t_decode, 2),
        "identical_verdicts": batched == single == decoded,
        "check_seconds": round(t_check, 3), "forward_seconds": round(t_forward, 3),
        "check_decoding_misses_seconds": round(t_decode, 3), "one_by_one_seconds": round(t_single, 3),
        "num_fingerprints": len(ex), "retained": sum(batched), "batch_size": args.batch_size,
        "key_length": args.key_length, "response_length": args.response_length, "repeats": args.repeats,
        "model": args.model_path, "device": torch.cuda.get_device_name() if dev == "cuda" else dev,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
        "goals": {"speedup": ">= 30", "check_over_forward_throughput": ">= 0.9", "identical_verdicts": True}}
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))

if __name__ == "__main__":
    main()
