"""Near-duplicate scan of a tokenized corpus (the Mosaic paper's SlimPajama analysis, on one machine or many).

Corpus format: `<prefix>.bin` (raw little-endian uint16 or uint32 tokens, documents separated by the dtype's
maximum value) and `<prefix>.json` (dtype, counts). The corpus is split into parts at document boundaries; each
part is processed independently (suffix array with pydivsufsort, then exact counts; or the scan), so parts can run
in a process pool or on different machines, and their results merge exactly: sequences never cross documents.
"""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io import atomic_write_json, read_json

DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


# --------------------------------------------------------------------------------------------- token files
def build_token_file(docs, tokenizer, prefix: str | Path, progress=None) -> dict:
    """Tokenize an iterable of texts into <prefix>.bin / <prefix>.json (written last, so a corpus whose .json
    exists is complete)."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    dtype = "uint16" if len(tokenizer) < np.iinfo(np.uint16).max else "uint32"
    sep = np.iinfo(DTYPES[dtype]).max
    tmp = prefix.with_suffix(".bin.tmp")
    n_tok = n_doc = 0
    with open(tmp, "wb") as fh:
        for text in docs:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if not ids:
                continue
            np.asarray(ids + [sep], dtype=DTYPES[dtype]).tofile(fh)
            n_tok += len(ids) + 1
            n_doc += 1
            if progress:
                progress(1)
    if n_doc == 0:
        tmp.unlink()
        raise UserError("empty corpus: no document produced any token")
    tmp.replace(prefix.with_suffix(".bin"))
    meta = {"dtype": dtype, "separator": int(sep), "num_tokens": n_tok, "num_docs": n_doc,
            "tokenizer": getattr(tokenizer, "name_or_path", "")}
    atomic_write_json(prefix.with_suffix(".json"), meta)
    return meta


def open_tokens(prefix: str | Path) -> tuple[np.ndarray, dict]:
    prefix = Path(str(prefix).removesuffix(".bin").removesuffix(".json"))
    meta_p, bin_p = prefix.with_suffix(".json"), prefix.with_suffix(".bin")
    if not meta_p.is_file() or not bin_p.is_file():
        raise UserError(f"token corpus not found: {prefix}.bin/.json (build it with `python -m mosaic scan --build_from TEXTS`)")
    try:
        meta = json.loads(meta_p.read_text())
        dtype = DTYPES[meta["dtype"]]
    except (ValueError, KeyError):
        raise UserError(f"{meta_p}: not a token corpus description") from None
    if bin_p.stat().st_size == 0:
        raise UserError(f"empty corpus: {bin_p}")
    return np.memmap(bin_p, dtype=dtype, mode="r"), meta


def part_bounds(tokens: np.ndarray, sep: int, parts: int) -> list[tuple[int, int]]:
    """Split at document separators into `parts` pieces of about equal size."""
    n = len(tokens)
    bounds, start = [], 0
    for k in range(1, parts):
        cut = int(n * k / parts)
        if cut <= start:
            continue
        nxt = np.flatnonzero(tokens[cut:] == sep)
        if not len(nxt):
            break
        end = cut + int(nxt[0]) + 1
        if end >= n:
            break
        bounds.append((start, end))
        start = end
    bounds.append((start, n))
    return bounds


# --------------------------------------------------------------------------------------------- exact counts
def suffix_array(tokens: np.ndarray) -> np.ndarray:
    from pydivsufsort import divsufsort

    return divsufsort(np.ascontiguousarray(tokens))


def _cmp(tokens: np.ndarray, start: int, q: np.ndarray) -> int:
    seg = tokens[start:start + len(q)]
    diff = np.flatnonzero(seg != q[:len(seg)])
    if diff.size:
        i = diff[0]
        return -1 if seg[i] < q[i] else 1
    return 0 if len(seg) == len(q) else -1


def count(tokens: np.ndarray, sa: np.ndarray, query) -> int:
    """Occurrences of `query` in `tokens` by binary search over the suffix array."""
    q = np.asarray(query, dtype=tokens.dtype)
    lo, hi = 0, len(sa)
    while lo < hi:  # first suffix >= q
        mid = (lo + hi) // 2
        if _cmp(tokens, sa[mid], q) < 0:
            lo = mid + 1
        else:
            hi = mid
    first, hi = lo, len(sa)
    while lo < hi:  # first suffix > q (not starting with q)
        mid = (lo + hi) // 2
        if _cmp(tokens, sa[mid], q) <= 0:
            lo = mid + 1
        else:
            hi = mid
    return lo - first


def count_part(prefix: str, bounds: tuple[int, int], queries: list[list[int]]) -> list[int]:
    tokens, _ = open_tokens(prefix)
    part = np.asarray(tokens[bounds[0]:bounds[1]])
    sa = suffix_array(part)
    return [count(part, sa, q) for q in queries]


# --------------------------------------------------------------------------------------------- targets
def sample_windows(tokens: np.ndarray, sep: int, length: int, n: int, min_unique: int, rng) -> list[list[int]]:
    """Random windows of `length` tokens inside one document with at least `min_unique` distinct tokens."""
    out, seen, tries = [], set(), 0
    while len(out) < n and tries < 50 * n + 1000:
        tries += 1
        i = int(rng.integers(0, max(1, len(tokens) - length)))
        w = np.asarray(tokens[i:i + length])
        if len(w) < length or (w == sep).any() or len(np.unique(w)) < min_unique:
            continue
        key = w.tobytes()
        if key not in seen:
            seen.add(key)
            out.append(w.tolist())
    return out


def bucket_of(count_: int, buckets: list[int], tolerance: float) -> int | None:
    for b in buckets:
        if abs(count_ - b) <= tolerance * b:
            return b
    return None


# --------------------------------------------------------------------------------------------- scan
def nms(hits: list[tuple[int, int]], window: int) -> list[tuple[int, int]]:
    """Greedy non-maximum suppression: best (lowest distance, then leftmost) hits first; drop hits within +-window of
    a kept one. O(n log n): distances are few small integers, so level by level a hit is checked against the kept
    positions of the better levels by binary search (kept sorted) and against the last hit kept on its own level
    (positions ascending); the old all-pairs loop took 40 s per target at 4000 copies."""
    if not hits:
        return []
    arr = np.asarray(hits, dtype=np.int64).reshape(-1, 2)
    kept = np.empty(0, dtype=np.int64)
    out: list[tuple[int, int]] = []
    for d in np.unique(arr[:, 0]):
        pos = np.unique(arr[arr[:, 0] == d, 1])
        if len(kept):
            i = np.searchsorted(kept, pos)
            left = np.where(i > 0, kept[np.maximum(i - 1, 0)], np.iinfo(np.int64).min // 2)
            right = np.where(i < len(kept), kept[np.minimum(i, len(kept) - 1)], np.iinfo(np.int64).max // 2)
            pos = pos[(pos - left > window) & (right - pos > window)]
        level, last = [], None
        for p in pos.tolist():
            if last is None or p - last > window:
                level.append(p)
                last = p
        out += [(int(d), p) for p in level]
        kept = np.sort(np.concatenate([kept, np.asarray(level, dtype=np.int64)]))
    return out


def scan_part(prefix: str, bounds: tuple[int, int], targets: list[list[int]], max_distance: int,
              nms_window: int | None = None) -> list[dict]:
    """For each target: positions of near-duplicate windows (same length) within max_distance in Hamming and in
    Levenshtein distance, after NMS. A bag-of-tokens prefilter skips windows that cannot be that close: both
    distances are at least L minus the number of window tokens that occur in the target."""
    from numpy.lib.stride_tricks import sliding_window_view
    from rapidfuzz.distance import Levenshtein

    tokens, _ = open_tokens(prefix)
    part = np.asarray(tokens[bounds[0]:bounds[1]])
    out = []
    for tgt in targets:
        L = len(tgt)
        t = np.asarray(tgt, dtype=part.dtype)
        if len(part) < L:
            out.append({"hamming": [], "levenshtein": []})
            continue
        inside = np.isin(part, np.unique(t)).astype(np.int32)
        csum = np.concatenate([[0], np.cumsum(inside)])
        present = csum[L:] - csum[:-L]
        cand = np.flatnonzero(present + max_distance >= L)
        windows = sliding_window_view(part, L)
        ham = (windows[cand] != t).sum(1) if len(cand) else np.zeros(0, dtype=int)
        hh = [(int(d), int(p)) for d, p in zip(ham, cand) if d <= max_distance]
        tl = t.tolist()
        lev = []
        for p in cand:
            d = Levenshtein.distance(windows[p].tolist(), tl, score_cutoff=max_distance)
            if d <= max_distance:
                lev.append((int(d), int(p)))
        w = nms_window if nms_window is not None else L
        out.append({"hamming": [[d, p + bounds[0]] for d, p in nms(hh, w)],
                    "levenshtein": [[d, p + bounds[0]] for d, p in nms(lev, w)]})
    return out


def histogram(hits: list[list[int]], max_distance: int) -> list[int]:
    h = [0] * (max_distance + 1)
    for d, _ in hits:
        h[d] += 1
    return h


# ------------------------------------------------------------------------------------------------- driving parts
def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def run_parts(fn, jobs: dict[int, tuple], out_dir: Path, stage: str, key: str, workers: int, only: int | None):
    """Run fn(*args) for every part whose result file is missing or stale; return {part: result}."""
    from tqdm.auto import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    done, todo = {}, {}
    for i, args in jobs.items():
        f = out_dir / f"{stage}_{i}.json"
        if f.is_file():
            saved = json.loads(f.read_text())
            if saved.get("key") == key:
                done[i] = saved["result"]
                continue
        if only is None or only == i:
            todo[i] = args
    if todo:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=mp.get_context("spawn")) as pool:
            futs = {pool.submit(fn, *args): i for i, args in todo.items()}
            for fut in tqdm(as_completed(futs), total=len(futs), desc=f"{stage} parts", dynamic_ncols=True):
                i = futs[fut]
                done[i] = fut.result()
                atomic_write_json(out_dir / f"{stage}_{i}.json", {"key": key, "part": i, "result": done[i]}, None)
    return done


def load_targets(path: str, tokenizer_name: str) -> list[list[int]]:
    raw = read_json(path, "targets file")
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{path}: expected a non-empty JSON list of token-id lists or strings")
    if all(isinstance(t, str) for t in raw):
        from .. import models

        tok = models.load_tokenizer(tokenizer_name)
        return [tok(t, add_special_tokens=False)["input_ids"] for t in raw]
    if all(isinstance(t, list) and t and all(isinstance(x, int) for x in t) for t in raw):
        return raw
    raise UserError(f"{path}: expected a JSON list of token-id lists or strings")


def select_targets(queries: list[list[int]], counts: list[int], buckets: list[int] | None, tolerance: float,
                   n_per_bucket: int) -> list[dict]:
    """Targets per exact-count bucket (|count - b| <= tolerance * b), or every query when buckets is None."""
    targets = []
    for b in ([None] if buckets is None else buckets):
        chosen = [(q, c) for q, c in zip(queries, counts)
                  if b is None or bucket_of(c, [b], tolerance) == b][:n_per_bucket]
        if b is not None and len(chosen) < n_per_bucket:
            print(f"[mosaic] bucket {b}: only {len(chosen)} of {n_per_bucket} targets among "
                  f"{len(queries)} candidates (raise --num_candidates)")
        targets += [{"bucket": b if b is not None else c, "exact_count": c, "tokens": q} for q, c in chosen]
    if not targets:
        raise UserError("no target fell into any bucket; check --target_buckets against the corpus")
    return targets


def merge(targets: list[dict], part_results: list[list[dict]], max_distance: int) -> dict:
    """Per-target distance histograms and per-bucket mean cumulative counts from the parts' hits."""
    per_target, summary = [], {}
    for j, t in enumerate(targets):
        entry = {"id": j, "bucket": t["bucket"], "exact_count": t["exact_count"], "tokens": t["tokens"]}
        for metric in ("hamming", "levenshtein"):
            hits = [h for res in part_results for h in res[j][metric]]
            entry[metric] = histogram(hits, max_distance)
            entry[f"{metric}_positions"] = sorted(p for _, p in hits)
        per_target.append(entry)
    for b in sorted({t["bucket"] for t in per_target}):
        rows = [t for t in per_target if t["bucket"] == b]
        summary[str(b)] = {"targets": len(rows), **{
            f"mean_cumulative_{m}": np.mean([np.cumsum(r[m]) for r in rows], axis=0).round(3).tolist()
            for m in ("hamming", "levenshtein")}}
    return {"summary": summary, "targets": per_target}
