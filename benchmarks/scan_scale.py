"""Scan at scale on Dask: a synthetic token corpus with planted near-duplicates (the ground truth), scanned by
`python -m mosaic scan` on local clusters of 1 and 2 workers.

    python benchmarks/scan_scale.py                                  # 1B tokens, 1 and 2 workers
    python benchmarks/scan_scale.py --tokens 100000000 --workers 1 2 # quicker

The corpus: uniform random token ids 0..49,999 in documents of ~2,000 tokens (a uint16 file written in chunks, as
`mosaic scan` reads it). Each target is 100 distinct ids from 50,000..59,999 (so no random window comes near one),
planted 3 times exactly, twice at each Hamming distance in --hamming (substitutions by ids from 60,000..64,999) and
twice at each Levenshtein distance in --levenshtein (d/2 deletions and d/2 insertions). Recall: a planted copy counts
as found when the scan reports a hit at its position (Hamming) or within half a window of it (Levenshtein); exact
counts must be 3. Each run scans the whole corpus (exact counts from every shard's suffix array, then the scan) in
a fresh output folder. Last stdout line is JSON: rows of {workers, tokens, seconds, tokens_per_s,
peak_rss_mb_per_worker, stage_seconds}, planted_recall, counts_identical (scan.json the same for every worker count),
scaling_2_over_1 (seconds with 1 worker / with 2).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VOCAB, SEP = 50_000, np.iinfo(np.uint16).max


def make_corpus(prefix: Path, n: int, args, seed: int = 0) -> tuple[list[list[int]], list[dict]]:
    """The token file and its description; returns the targets and the planted copies [{target, pos, metric, d}]."""
    from privlm.io import atomic_write_json

    rng = np.random.default_rng(seed)
    L = args.length
    path = prefix.with_suffix(".bin")
    with open(path, "wb") as fh:
        chunk = 50_000_000
        for a in range(0, n, chunk):
            toks = rng.integers(0, VOCAB, min(chunk, n - a), dtype=np.uint16)
            toks[rng.random(len(toks)) < 1 / 2000] = SEP
            toks.tofile(fh)
    tokens = np.memmap(path, dtype=np.uint16, mode="r+")
    tokens[-1] = SEP
    targets = [rng.choice(np.arange(VOCAB, VOCAB + 10_000), L, replace=False).astype(np.uint16)
               for _ in range(args.targets)]
    plan = []
    for j in range(args.targets):
        plan += [(j, "exact", 0)] * 3 + [(j, "hamming", d) for d in args.hamming for _ in range(2)] + \
                [(j, "levenshtein", d) for d in args.levenshtein for _ in range(2)]
    slots = rng.choice(n // (4 * L) - 2, len(plan), replace=False) * 4 * L + L  # copies far apart
    planted = []
    for (j, kind, d), pos in zip(plan, slots.tolist()):
        t = targets[j].copy()
        if kind == "hamming":
            at = rng.choice(L, d, replace=False)
            t[at] = rng.integers(VOCAB + 10_000, VOCAB + 15_000, d)
        elif kind == "levenshtein":
            keep = np.sort(rng.choice(L, L - d // 2, replace=False))
            t = t[keep].tolist()
            for _ in range(d // 2):
                t.insert(int(rng.integers(0, len(t) + 1)), int(rng.integers(VOCAB + 10_000, VOCAB + 15_000)))
            t = np.asarray(t, dtype=np.uint16)
        tokens[pos:pos + L] = t
        planted.append({"target": j, "pos": int(pos), "metric": kind, "d": d})
    tokens.flush()
    atomic_write_json(prefix.with_suffix(".json"), {"dtype": "uint16", "separator": int(SEP), "num_tokens": n,
                                                    "files": [{"path": path.name, "num_tokens": n}]})
    return [t.tolist() for t in targets], planted


def recall(result: dict, planted: list[dict], L: int) -> float:
    found = 0
    for p in planted:
        t = result["targets"][p["target"]]
        if p["metric"] in ("exact", "hamming"):
            found += p["pos"] in set(t["hamming_positions"]) and p["pos"] in set(t["levenshtein_positions"])
        else:
            found += any(abs(q - p["pos"]) <= L // 2 for q in t["levenshtein_positions"])
    return found / len(planted)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=1_000_000_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--targets", type=int, default=8)
    ap.add_argument("--length", type=int, default=100)
    ap.add_argument("--max_distance", type=int, default=20)
    ap.add_argument("--hamming", type=int, nargs="+", default=[1, 5, 10, 20])
    ap.add_argument("--levenshtein", type=int, nargs="+", default=[2, 6, 10, 20])
    ap.add_argument("--shard_tokens", type=int, default=50_000_000)
    ap.add_argument("--dir", default=None, help="where the corpus goes (default: a temporary folder)")
    args = ap.parse_args()
    from mosaic.scan import main as scan

    work = Path(args.dir or tempfile.mkdtemp(prefix="scan_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        targets, planted = make_corpus(work / "corpus", args.tokens, args)
        print(f"[scan_scale] corpus of {args.tokens} tokens with {len(planted)} planted copies in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        (work / "targets.json").write_text(json.dumps(targets))
        rows, texts, recalls, exact_ok = [], [], [], True
        for w in args.workers:
            out = work / f"scan_w{w}"
            shutil.rmtree(out, ignore_errors=True)
            res = scan(["--corpus", str(work / "corpus"), "--targets_file", str(work / "targets.json"),
                        "--length", str(args.length), "--max_distance", str(args.max_distance),
                        "--shard_tokens", str(args.shard_tokens), "--workers", str(w), "--output_dir", str(out)])
            run = res["run"]
            rows.append({"workers": w, "tokens": args.tokens, "seconds": run["seconds"],
                         "tokens_per_s": round(args.tokens / run["seconds"]),
                         "peak_rss_mb_per_worker": round(max(run["peak_rss_mb_per_worker"].values()), 1),
                         "stage_seconds": run["stage_seconds"]})
            print(f"[scan_scale] {json.dumps(rows[-1])}", flush=True)
            texts.append((out / "scan.json").read_text())
            recalls.append(recall(res, planted, args.length))
            exact_ok &= all(t["exact_count"] == 3 for t in res["targets"])
        secs = {r["workers"]: r["seconds"] for r in rows}
        print(json.dumps({"rows": rows, "planted_recall": min(recalls), "exact_counts_right": exact_ok,
                          "counts_identical": all(t == texts[0] for t in texts), "planted_copies": len(planted),
                          "shards": res["shards"],
                          "scaling_2_over_1": round(secs[1] / secs[2], 3) if 1 in secs and 2 in secs else None}))
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
