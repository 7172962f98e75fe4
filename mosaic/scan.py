"""Near-duplicate scan of a tokenized corpus on Dask: how many near-duplicates do sequences with k exact copies have?

    python -m mosaic scan --build_from data/books/ --tokenizer default --corpus results/scan/tokens   # tokenize once
    python -m mosaic scan --corpus results/scan/tokens --workers 2 --length 100 --target_buckets 1 10 100 \
        --n_per_bucket 100 --min_unique 50 --max_distance 50 --output_dir results/scan
    python -m mosaic scan --corpus results/scan/tokens --scheduler tcp://10.0.0.5:8786 ...   # an existing cluster
    python -m mosaic scan --corpus results/scan/tokens --scheduler scheduler.json ...        # its scheduler file

The work runs on Dask distributed: a local cluster of --workers one-thread processes by default, or the cluster
behind --scheduler (an address, or the file `dask scheduler --scheduler-file` writes; dask-jobqueue, SLURM and
Kubernetes clusters start the same scheduler). The corpus is cut into shards of at most --shard_tokens tokens at
document boundaries (--parts N: N shards instead); every stage runs one task per shard and each task writes its own
result under <output_dir>/parts/, so a killed scan keeps its finished shards and the retry does not redo them.
Stages: (0) --build_from: workers tokenize chunks of --docs_per_shard documents into token files; (1) targets: the
suffix and LCP arrays of --enumerate_shards shards (1 by default, as the paper takes them from one of its 20 chunks;
0: all) enumerate their windows by exact-duplicate count, at most --num_candidates per bucket and shard, then every
shard counts them exactly and targets are
the windows whose total count is within --bucket_tolerance x bucket (or --targets_file: JSON list of token-id lists
or strings); (2) every shard scans for every target (broadcast to the workers): sliding window, bag-of-tokens
prefilter, Hamming and Levenshtein distances (rapidfuzz), non-maximum suppression; (3) merge into scan.json (per
bucket: mean cumulative near-duplicate counts and fuzzy duplicates per exact duplicate at each distance, with 95%
bootstrap intervals over targets) and scan.png; scan_run.json has the wall time and each worker's peak memory.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from privlm import config as C
from privlm.errors import UserError, cli
from privlm.io import atomic_write_json
from privlm.mosaic import figures
from privlm.mosaic import scan as S


@dataclass
class ScanConfig:
    corpus: str = C.field("results/scan/tokens", aliases=("--ds-path", "--ds_path"),
                          help="token corpus prefix (<prefix>.json and its token files)")
    build_from: str | None = C.field(None, help="tokenize this text source into --corpus first: a folder of .txt, "
                                                "a jsonl/csv/parquet/txt file, `faker`, or a hub dataset")
    tokenizer: str = C.field("default", help="tokenizer for --build_from and for string targets")
    text_field: str = C.field("text")
    build_docs: int = C.field(1000, help="faker: documents to generate")
    docs_per_shard: int = C.field(2000, help="--build_from: documents per tokenization task and token file")
    shard_tokens: int = C.field(50_000_000, help="most tokens per shard (a worker holds one shard at a time)")
    parts: int = C.field(0, help="cut the corpus into this many shards instead (0: by --shard_tokens)")
    workers: int = C.field(0, hash=False, help="local cluster: worker processes (0: the machine's CPUs)")
    scheduler: str | None = C.field(None, hash=False, aliases=("--scheduler_file", "--scheduler-file"),
                                    help="an existing Dask cluster: scheduler address or scheduler file")
    length: int = C.field(100, help="target length in tokens")
    target_buckets: list[int] = C.field(default_factory=lambda: [1, 10, 100], aliases=("--target-buckets",))
    bucket_tolerance: float = C.field(0.01, aliases=("--target-bucket-tolerance",),
                                      help="a target's exact count is within tolerance x bucket (the paper's 0.01)")
    n_per_bucket: int = C.field(100, aliases=("--n-per-bucket",))
    num_candidates: int = C.field(1000, help="windows per bucket (and enumerated shard) whose counts are taken")
    enumerate_shards: int = C.field(1, help="shards, spread over the corpus, whose suffix + LCP arrays enumerate "
                                            "candidate windows (the paper: 1 of 20); 0: all")
    min_unique: int = C.field(50, aliases=("--uniq-token-min",))
    max_distance: int = C.field(50)
    nms_window: int | None = C.field(None, help="NMS radius in tokens (default: length)")
    targets_file: str | None = C.field(None, help="JSON list of targets (token-id lists or strings) instead of sampling")
    seed: int = C.field(0)
    output_dir: str = C.field("results/scan", hash=False)

    def validate(self):
        p = [f"{k}: must be >= 1" for k in ("length", "n_per_bucket", "num_candidates", "shard_tokens",
                                           "docs_per_shard") if getattr(self, k) < 1]
        p += [f"{k}: must be >= 0" for k in ("parts", "workers", "min_unique", "max_distance", "enumerate_shards")
              if getattr(self, k) < 0]
        if self.max_distance >= self.length:
            p.append("max_distance: must be smaller than length")
        if not self.target_buckets or min(self.target_buckets) < 1:
            p.append("target_buckets: counts must be >= 1")
        if not 0 <= self.bucket_tolerance < 1:
            p.append("bucket_tolerance: must be in [0, 1)")
        return p


@cli
def main(argv=None) -> dict:
    cfg = C.parse(ScanConfig, argv, __doc__)
    out = Path(cfg.output_dir)
    t0 = time.perf_counter()
    client = S.connect(cfg.scheduler, cfg.workers or os.cpu_count() or 1)
    try:
        stages: dict[str, float] = {}
        result = scan(cfg, client, out, stages)
        run = {"seconds": round(time.perf_counter() - t0, 3), "stage_seconds": stages, "num_tokens": result["num_tokens"],
               "shards": result["shards"], "workers": len(client.scheduler_info()["workers"]),
               "scheduler": cfg.scheduler or "local", "peak_rss_mb_per_worker": S.worker_peak_rss_mb(client)}
    finally:
        S.disconnect(client)
    atomic_write_json(out / "scan_run.json", run)
    result["run"] = run
    return result


def scan(cfg: ScanConfig, client, out: Path, stages: dict) -> dict:
    """The stages on `client`; `stages` gets each one's wall time (seconds)."""
    clock = time.perf_counter()

    def lap(name):
        nonlocal clock
        stages[name] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()

    if cfg.build_from:
        from privlm.mosaic.inject import load_books

        docs = load_books(cfg.build_from, cfg.build_docs if cfg.build_from == "faker" else 10**12, cfg.seed,
                          400, cfg.text_field)
        meta = S.build_corpus(client, docs, cfg.tokenizer, cfg.corpus, cfg.docs_per_shard)
        print(f"[mosaic] tokenized {meta['num_docs']} documents into {meta['num_tokens']} tokens in "
              f"{len(meta['files'])} file(s): {cfg.corpus}.json")
        lap("tokenize")
    meta = S.open_corpus(cfg.corpus)
    shard_tokens = -(-meta["num_tokens"] // cfg.parts) if cfg.parts else cfg.shard_tokens
    shards = S.shard_plan(meta, shard_tokens)
    dtype, sep = meta["dtype"], meta["separator"]
    base = {"corpus": {k: meta[k] for k in ("dtype", "num_tokens")}, "files": [f["num_tokens"] for f in meta["files"]],
            "shards": [(s["offset"], s["end"] - s["start"]) for s in shards]}
    parts_dir = out / "parts"
    print(f"[mosaic] {meta['num_tokens']} tokens in {len(shards)} shard(s); "
          f"{len(client.scheduler_info()['workers'])} Dask worker(s)")

    # (1) targets and their exact counts over every shard
    targets_path, targets_key = out / "targets.json", S.digest([base, C.hashed_dict(cfg)])
    saved = json.loads(targets_path.read_text()) if targets_path.is_file() else {}
    if saved.get("key") == targets_key:
        targets = saved["targets"]
    else:
        if cfg.targets_file:
            queries = S.load_targets(cfg.targets_file, cfg.tokenizer)
        else:
            picks = S.spread(len(shards), cfg.enumerate_shards)
            ranges = {i: S.candidate_ranges(cfg.target_buckets, cfg.bucket_tolerance,
                                            (shards[i]["end"] - shards[i]["start"]) / meta["num_tokens"]) for i in picks}
            jobs = {i: (shards[i], dtype, sep, cfg.length, ranges[i], cfg.num_candidates, cfg.min_unique, cfg.seed + i)
                    for i in picks}
            keys = {i: S.digest([base, i, cfg.length, ranges[i], cfg.num_candidates, cfg.min_unique, cfg.seed])
                    for i in picks}
            found = S.run_shards(client, S.enumerate_shard, jobs, parts_dir, "enumerate", keys,
                                 what="enumerating windows by exact count")
            queries = [q for i in picks for per_range in found[i] for q in per_range]
            queries = list({tuple(q): q for q in queries}.values())  # a window can fit two ranges or shards
            if not queries:
                raise UserError(f"no window of {cfg.length} tokens with {cfg.min_unique} distinct tokens and a count "
                                f"in the buckets' ranges in the enumerated shard(s)")
            lap("enumerate")
        [qf] = client.scatter([queries], broadcast=True)  # one object on every worker
        counts = S.run_shards(client, S.count_shard, {i: (s, dtype, qf) for i, s in enumerate(shards)}, parts_dir,
                              "count", S.digest([base, queries]), what="exact counts")
        total = [sum(counts[i][j] for i in range(len(shards))) for j in range(len(queries))]
        targets = S.select_targets(queries, total, None if cfg.targets_file else cfg.target_buckets,
                                   cfg.bucket_tolerance, cfg.n_per_bucket)
        atomic_write_json(targets_path, {"key": targets_key, "targets": targets}, None)
        lap("count")

    # (2) every shard scans for every target
    toks = [t["tokens"] for t in targets]
    [tf] = client.scatter([toks], broadcast=True)
    res = S.run_shards(client, S.scan_shard, {i: (s, dtype, tf, cfg.max_distance, cfg.nms_window)
                                              for i, s in enumerate(shards)}, parts_dir, "scan",
                       S.digest([base, toks, cfg.max_distance, cfg.nms_window]), what="scan")
    lap("scan")

    # (3) merge: shards hold disjoint documents, so hits concatenate
    result = {"corpus": cfg.corpus, "num_tokens": int(meta["num_tokens"]), "shards": len(shards),
              "length": cfg.length, "max_distance": cfg.max_distance, "bucket_tolerance": cfg.bucket_tolerance,
              **S.merge(targets, [res[i] for i in range(len(shards))], cfg.max_distance)}
    atomic_write_json(out / "scan.json", result, None)
    figures.scan_png(result["summary"], out / "scan.png")
    mid = min(cfg.max_distance, cfg.length // 10)
    for b, s in result["summary"].items():
        h, lv = s["mean_cumulative_hamming"], s["mean_cumulative_levenshtein"]
        f, fci = s["fuzzy_per_exact_levenshtein"][mid], s["fuzzy_per_exact_levenshtein_ci"][mid]
        print(f"[mosaic] bucket {b} ({s['targets']} targets): mean copies at distance 0: {h[0]:.1f}; "
              f"within {mid}: Hamming {h[mid]:.1f}, Levenshtein {lv[mid]:.1f}; within {cfg.max_distance}: "
              f"Hamming {h[-1]:.1f}, Levenshtein {lv[-1]:.1f}; fuzzy per exact duplicate within Levenshtein {mid}: "
              + (f"{f:.3f} [{fci[0]:.3f}, {fci[1]:.3f}]" if fci else f"{f:.3f}"))
    print(f"[mosaic] wrote {out / 'scan.json'} and {out / 'scan.png'}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
