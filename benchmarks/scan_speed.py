"""Scan speed: suffix array (pydivsufsort) + exact occurrence counts on a >= 50M-token corpus.

    python benchmarks/scan_speed.py                   # 50M tokens
    python benchmarks/scan_speed.py --tokens 5000000  # quicker

The corpus is synthetic but shaped like text: Zipf-distributed token ids (vocab 50k) in documents, with a few
thousand sequences repeated 1-1000 times, written as a memory-mapped token file exactly as `mosaic scan` reads it.
Last stdout line is JSON with tokens per second for the suffix array and for the whole build + counts.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_corpus(path: Path, n: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    from privlm.io import atomic_write_json

    rng = np.random.default_rng(seed)
    sep = np.iinfo(np.uint16).max
    toks = np.minimum(rng.zipf(1.2, n), 50000).astype(np.uint16)
    toks[rng.random(n) < 1 / 2000] = sep  # documents of ~2000 tokens
    repeated = [rng.integers(0, 50000, 100).astype(np.uint16) for _ in range(200)]
    for k, seq in enumerate(repeated):
        for at in rng.integers(0, n - 100, int(1 + 5 * k)):  # 1 .. ~1000 copies
            toks[at:at + 100] = seq
    toks.tofile(path.with_suffix(".bin"))
    atomic_write_json(path.with_suffix(".json"), {"dtype": "uint16", "separator": int(sep), "num_tokens": n,
                                                  "num_docs": int((toks == sep).sum())})
    return toks, repeated


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=50_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    args = ap.parse_args()
    from privlm.mosaic import scan as S

    with tempfile.TemporaryDirectory() as d:
        prefix = Path(d) / "corpus"
        _, repeated = make_corpus(prefix, args.tokens)
        tokens, _ = S.open_tokens(prefix)
        t0 = time.perf_counter()
        arr = np.asarray(tokens)
        sa = S.suffix_array(arr)
        t_sa = time.perf_counter() - t0
        rng = np.random.default_rng(1)
        starts = rng.integers(0, len(arr) - 100, args.queries - len(repeated))
        queries = [arr[i:i + 100] for i in starts] + repeated
        t1 = time.perf_counter()
        counts = [S.count(arr, sa, q) for q in queries]
        t_count = time.perf_counter() - t1
    total = t_sa + t_count
    print(json.dumps({"tokens": args.tokens, "suffix_array_seconds": round(t_sa, 2),
                      "suffix_array_tokens_per_second": round(args.tokens / t_sa),
                      "count_queries": len(queries), "count_seconds": round(t_count, 3),
                      "queries_per_second": round(len(queries) / t_count, 1),
                      "build_and_count_tokens_per_second": round(args.tokens / total),
                      "max_count": int(max(counts)), "sa_dtype": str(sa.dtype)}))


if __name__ == "__main__":
    main()
