"""Batched fingerprint checking vs one-at-a-time greedy generation (how the seed checks), on the same fingerprints.

    python benchmarks/check_throughput.py [--model_path default] [--num_fingerprints 128] [--batch_size 64]

Half of the fingerprints are the model's own greedy continuations (so they count as retained) and half are random
words (not retained), so both verdicts and both code paths are exercised. Last stdout line is JSON:
{"speedup": float, "identical_verdicts": bool, ...}.
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
from privlm.eval.greedy import greedy_match, greedy_match_one_by_one  # noqa: E402


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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_path", default="default")
    ap.add_argument("--num_fingerprints", type=int, default=128)
    ap.add_argument("--key_length", type=int, default=16)
    ap.add_argument("--response_length", type=int, default=8)
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    tok = models.load_tokenizer(args.model_path)
    model = models.load_model(args.model_path, device=models.device()).eval()
    ex = build_examples(model, tok, args.num_fingerprints, args.key_length, args.response_length, args.seed)
    greedy_match(model, tok, ex[:4], batch_size=4, progress=False)  # warm-up

    t = time.perf_counter()
    batched = [v.match for v in greedy_match(model, tok, ex, batch_size=args.batch_size, progress=False)]
    t_batched = time.perf_counter() - t
    t = time.perf_counter()
    single = greedy_match_one_by_one(model, tok, ex)
    t_single = time.perf_counter() - t
    print(json.dumps({
        "speedup": round(t_single / t_batched, 2), "identical_verdicts": batched == single,
        "batched_seconds": round(t_batched, 3), "one_by_one_seconds": round(t_single, 3),
        "num_fingerprints": len(ex), "retained": sum(batched), "batch_size": args.batch_size,
        "model": args.model_path, "device": models.device(), "dtype": str(next(model.parameters()).dtype),
        "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
