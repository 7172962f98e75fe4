"""Near-duplicate scan of a tokenized corpus: how many near-duplicates do sequences with k exact copies have?

    python -m mosaic scan --build_from data/books/ --tokenizer default --corpus results/scan/tokens   # tokenize once
    python -m mosaic scan --corpus results/scan/tokens --parts 8 --workers 8 --length 100 \
        --target_buckets 1 10 100 --n_per_bucket 100 --min_unique 50 --max_distance 50 --output_dir results/scan
    python -m mosaic scan ... --part 3        # one part only (spread parts over machines), then once without --part

Stages, each resumable (finished parts are kept in <output_dir>/parts/): (1) sample candidate windows and count
their exact occurrences with a suffix array of every part (pydivsufsort), summed over parts; (2) pick targets per
duplicate-count bucket (|count - b| <= tolerance * b) with at least min_unique distinct tokens, or take
--targets_file (JSON list of token-id lists or strings); (3) scan every part: sliding window, bag-of-tokens prefilter,
Hamming and Levenshtein distances (rapidfuzz), non-maximum suppression; (4) merge into scan.json and scan.png.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privlm import config as C
from privlm.errors import UserError, cli
from privlm.io import atomic_write_json
from privlm.mosaic import figures
from privlm.mosaic import scan as S


@dataclass
class ScanConfig:
    corpus: str = C.field("results/scan/tokens", aliases=("--ds-path", "--ds_path"),
                          help="token corpus prefix (<prefix>.bin + <prefix>.json)")
    build_from: str | None = C.field(None, help="tokenize this text source into --corpus first: a folder of .txt, "
                                                "a jsonl/csv/parquet/txt file, `faker`, or a hub dataset")
    tokenizer: str = C.field("default", help="tokenizer for --build_from and for string targets")
    text_field: str = C.field("text")
    build_docs: int = C.field(1000, help="faker: documents to generate")
    parts: int = C.field(4, help="independent parts (split at document boundaries)")
    workers: int = C.field(0, hash=False, help="process pool size (0: min(parts, CPUs))")
    part: int | None = C.field(None, hash=False, help="process only this part of the current stage, then stop")
    length: int = C.field(100, help="target length in tokens")
    target_buckets: list[int] = C.field(default_factory=lambda: [1, 10, 100], aliases=("--target-buckets",))
    bucket_tolerance: float = C.field(0.5, aliases=("--target-bucket-tolerance",))
    n_per_bucket: int = C.field(100, aliases=("--n-per-bucket",))
    num_candidates: int = C.field(5000, help="random windows whose exact counts are computed to fill the buckets")
    min_unique: int = C.field(50, aliases=("--uniq-token-min",))
    max_distance: int = C.field(50)
    nms_window: int | None = C.field(None, help="NMS radius in tokens (default: length)")
    targets_file: str | None = C.field(None, help="JSON list of targets (token-id lists or strings) instead of sampling")
    seed: int = C.field(0)
    output_dir: str = C.field("results/scan", hash=False)

    def validate(self):
        p = [f"{k}: must be >= 1" for k in ("parts", "length", "n_per_bucket", "num_candidates") if getattr(self, k) < 1]
        p += [f"{k}: must be >= 0" for k in ("workers", "min_unique", "max_distance") if getattr(self, k) < 0]
        if self.part is not None and not 0 <= self.part < self.parts:
            p.append(f"part: must be in [0, {self.parts})")
        if self.max_distance >= self.length:
            p.append("max_distance: must be smaller than length")
        if not self.target_buckets or min(self.target_buckets) < 1:
            p.append("target_buckets: counts must be >= 1")
        return p


@cli
def main(argv=None) -> dict | None:
    cfg = C.parse(ScanConfig, argv, __doc__)
    out = Path(cfg.output_dir)
    workers = cfg.workers or min(cfg.parts, os.cpu_count() or 1)
    if cfg.build_from:
        from privlm import models
        from privlm.mosaic.inject import load_books

        docs = load_books(cfg.build_from, cfg.build_docs if cfg.build_from == "faker" else 10**12, cfg.seed,
                          400, cfg.text_field)
        meta = S.build_token_file(docs, models.load_tokenizer(cfg.tokenizer), cfg.corpus)
        print(f"[mosaic] tokenized {meta['num_docs']} documents into {meta['num_tokens']} tokens: {cfg.corpus}.bin")
    tokens, meta = S.open_tokens(cfg.corpus)
    sep = meta["separator"]
    bounds = S.part_bounds(tokens, sep, cfg.parts)
    base = {"corpus": meta, "size": int(len(tokens)), "bounds": bounds}
    targets_path, targets_key = out / "targets.json", S.digest([base, C.hashed_dict(cfg)])
    saved = json.loads(targets_path.read_text()) if targets_path.is_file() else {}

    # (1)-(2) targets and their exact counts
    if cfg.targets_file:
        queries = S.load_targets(cfg.targets_file, cfg.tokenizer)
    elif saved.get("key") == targets_key:
        queries, targets = None, saved["targets"]
    else:
        rng = np.random.default_rng(cfg.seed)
        queries = S.sample_windows(tokens, sep, cfg.length, cfg.num_candidates, cfg.min_unique, rng)
        if not queries:
            raise UserError(f"no window of {cfg.length} tokens with {cfg.min_unique} distinct tokens in the corpus")
    if queries is not None:
        key = S.digest([base, queries])
        counts = S.run_parts(S.count_part, {i: (cfg.corpus, b, queries) for i, b in enumerate(bounds)}, out / "parts",
                           "count", key, workers, cfg.part)
        if len(counts) < len(bounds):
            print(f"[mosaic] counted part(s) {sorted(counts)}; run again without --part when all parts are done")
            return None
        total = np.sum([counts[i] for i in range(len(bounds))], axis=0).tolist()
        targets = S.select_targets(queries, total, None if cfg.targets_file else cfg.target_buckets,
                                   cfg.bucket_tolerance, cfg.n_per_bucket)
        atomic_write_json(targets_path, {"key": targets_key, "targets": targets}, None)

    # (3) scan every part
    toks = [t["tokens"] for t in targets]
    key = S.digest([base, toks, cfg.max_distance, cfg.nms_window])
    res = S.run_parts(S.scan_part, {i: (cfg.corpus, b, toks, cfg.max_distance, cfg.nms_window)
                                  for i, b in enumerate(bounds)}, out / "parts", "scan", key, workers, cfg.part)
    if len(res) < len(bounds):
        print(f"[mosaic] scanned part(s) {sorted(res)}; run again without --part when all parts are done")
        return None

    # (4) merge: parts hold disjoint documents, so hits concatenate
    result = {"corpus": cfg.corpus, "num_tokens": int(len(tokens)), "parts": len(bounds), "length": cfg.length,
              "max_distance": cfg.max_distance, **S.merge(targets, [res[i] for i in range(len(bounds))],
                                                          cfg.max_distance)}
    summary = result["summary"]
    atomic_write_json(out / "scan.json", result, None)
    figures.scan_png(summary, out / "scan.png")
    for b, s in summary.items():
        h, lv = s["mean_cumulative_hamming"], s["mean_cumulative_levenshtein"]
        mid = min(cfg.max_distance, cfg.length // 10)
        print(f"[mosaic] bucket {b} ({s['targets']} targets): mean copies at distance 0: {h[0]:.1f}; "
              f"within {mid}: Hamming {h[mid]:.1f}, Levenshtein {lv[mid]:.1f}; within {cfg.max_distance}: "
              f"Hamming {h[-1]:.1f}, Levenshtein {lv[-1]:.1f}")
    print(f"[mosaic] wrote {out / 'scan.json'} and {out / 'scan.png'}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
