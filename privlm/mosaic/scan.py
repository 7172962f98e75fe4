"""Near-duplicate scan of a tokenized corpus (the Mosaic paper's SlimPajama analysis), on Dask distributed.

Corpus format: `<prefix>.json` (dtype, separator, counts, and the list of token files) and one or more raw
little-endian uint16/uint32 token files, documents separated by the dtype's maximum value. A corpus written before
files were listed is the single file `<prefix>.bin`. The corpus is cut into shards at document boundaries (at most
`shard_tokens` tokens each, so a worker's memory is bounded by the shard, not the corpus); every shard is one Dask
task that memory-maps its file and works alone (tokenizing, suffix array with pydivsufsort, exact counts, the scan),
and shards merge exactly because sequences never cross documents. Each task writes its result file itself, so a
killed scan keeps its finished shards and the retry does not redo them; results do not depend on the number of
workers. `connect` gives a local cluster by default, or a client of an existing scheduler (dask-jobqueue, SLURM,
Kubernetes: anything that runs `dask scheduler` and `dask worker`).
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np

from .. import stats
from ..errors import UserError
from ..io import atomic_file, atomic_write_json, read_json

DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


# --------------------------------------------------------------------------------------------- token files
def _dtype_for(vocab_size: int) -> str:
    return "uint16" if vocab_size < np.iinfo(np.uint16).max else "uint32"


def _write_tokens(docs, tokenizer, path: Path, dtype: str, progress=None) -> tuple[int, int]:
    sep = np.iinfo(DTYPES[dtype]).max
    n_tok = n_doc = 0
    with atomic_file(path, "wb") as fh:
        for text in docs:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if not ids:
                continue
            np.asarray(ids + [sep], dtype=DTYPES[dtype]).tofile(fh)
            n_tok += len(ids) + 1
            n_doc += 1
            if progress:
                progress(1)
    return n_tok, n_doc


def build_token_file(docs, tokenizer, prefix: str | Path, progress=None) -> dict:
    """Tokenize an iterable of texts in this process into <prefix>.bin / <prefix>.json (written last, so a corpus
    whose .json exists is complete)."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    dtype = _dtype_for(len(tokenizer))
    n_tok, n_doc = _write_tokens(docs, tokenizer, prefix.with_suffix(".bin"), dtype, progress)
    if n_doc == 0:
        prefix.with_suffix(".bin").unlink()
        raise UserError("empty corpus: no document produced any token")
    meta = {"dtype": dtype, "separator": int(np.iinfo(DTYPES[dtype]).max), "num_tokens": n_tok, "num_docs": n_doc,
            "tokenizer": getattr(tokenizer, "name_or_path", ""),
            "files": [{"path": prefix.with_suffix(".bin").name, "num_tokens": n_tok, "num_docs": n_doc}]}
    atomic_write_json(prefix.with_suffix(".json"), meta)
    return meta


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str):
    from .. import models

    return models.load_tokenizer(name)


def tokenize_shard(texts: list[str], tokenizer_name: str, path: str) -> dict:
    """A worker's part of --build_from: one chunk of documents into one token file."""
    tok = _tokenizer(tokenizer_name)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise UserError(f"document {bad} of the chunk is {type(texts[bad]).__name__}, not text")
    n_tok, n_doc = _write_tokens(texts, tok, Path(path), _dtype_for(len(tok)))
    return {"path": Path(path).name, "num_tokens": n_tok, "num_docs": n_doc}


def build_corpus(client, docs, tokenizer_name: str, prefix: str | Path, docs_per_shard: int) -> dict:
    """Tokenize `docs` on the cluster: chunks of `docs_per_shard` documents, one token file each under
    <prefix>.shards/ (a finished chunk whose texts are unchanged is not redone), then <prefix>.json listing them."""
    prefix = Path(prefix)
    shard_dir = prefix.parent / (prefix.name + ".shards")
    shard_dir.mkdir(parents=True, exist_ok=True)
    jobs, chunk = {}, []

    def flush():
        i = len(jobs)
        jobs[i] = (list(chunk), tokenizer_name, str(shard_dir / f"{i:05d}.bin"))
        chunk.clear()

    for text in docs:
        chunk.append(text)
        if len(chunk) == docs_per_shard:
            flush()
    if chunk:
        flush()
    if not jobs:
        raise UserError("empty corpus: the source has no documents")
    keys = {i: digest([tokenizer_name, a[0]]) for i, a in jobs.items()}
    done = run_shards(client, tokenize_shard, jobs, shard_dir, "tokenize", keys, what="tokenizing")
    files = [{**done[i], "path": f"{shard_dir.name}/{done[i]['path']}"} for i in sorted(done) if done[i]["num_docs"]]
    if not files:
        raise UserError("empty corpus: no document produced any token")
    tok = _tokenizer(tokenizer_name)
    dtype = _dtype_for(len(tok))
    meta = {"dtype": dtype, "separator": int(np.iinfo(DTYPES[dtype]).max),
            "num_tokens": sum(f["num_tokens"] for f in files), "num_docs": sum(f["num_docs"] for f in files),
            "tokenizer": tokenizer_name, "files": files}
    atomic_write_json(prefix.with_suffix(".json"), meta)
    return meta


def open_corpus(prefix: str | Path) -> dict:
    """The corpus description with every file's absolute path and size checked; one error line if it is missing."""
    prefix = Path(str(prefix).removesuffix(".bin").removesuffix(".json"))
    meta_p = prefix.with_suffix(".json")
    if not meta_p.is_file():
        raise UserError(f"token corpus not found: {meta_p} (build it with `python -m mosaic scan --build_from TEXTS`)")
    try:
        meta = json.loads(meta_p.read_text())
        dtype = DTYPES[meta["dtype"]]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{meta_p}: not a token corpus description") from None
    files = meta.get("files") or [{"path": prefix.with_suffix(".bin").name}]
    out = []
    for f in files:
        p = prefix.parent / f["path"]
        if not p.is_file():
            raise UserError(f"token corpus {meta_p}: file {p} is missing")
        n = p.stat().st_size // np.dtype(dtype).itemsize
        if n == 0:
            raise UserError(f"empty corpus: {p}")
        out.append({"path": str(p), "num_tokens": int(n)})
    return {**meta, "files": out, "num_tokens": sum(f["num_tokens"] for f in out)}


def open_tokens(prefix: str | Path) -> tuple[np.ndarray, dict]:
    """A one-file corpus memory-mapped whole (tests, benchmarks)."""
    meta = open_corpus(prefix)
    if len(meta["files"]) != 1:
        raise UserError(f"{prefix}: a corpus of {len(meta['files'])} files; use its shards")
    return np.memmap(meta["files"][0]["path"], dtype=DTYPES[meta["dtype"]], mode="r"), meta


def _file_tokens(path: str, dtype: str) -> np.ndarray:
    return np.memmap(path, dtype=DTYPES[dtype], mode="r")


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


def shard_plan(meta: dict, shard_tokens: int) -> list[dict]:
    """Shards {file, start, end, offset} of at most about `shard_tokens` tokens, cut at document boundaries;
    `offset` is the shard's first position in the whole corpus (files concatenated in order)."""
    shards, offset = [], 0
    for f in meta["files"]:
        n = f["num_tokens"]
        pieces = max(1, -(-n // shard_tokens))
        tokens = _file_tokens(f["path"], meta["dtype"]) if pieces > 1 else None
        for a, b in (part_bounds(tokens, meta["separator"], pieces) if pieces > 1 else [(0, n)]):
            shards.append({"file": f["path"], "start": int(a), "end": int(b), "offset": offset + int(a)})
        offset += n
    return shards


def shard_tokens_of(shard: dict, dtype: str) -> np.ndarray:
    """The shard read into this worker's memory (what bounds a worker's memory: one shard, not the corpus)."""
    return np.array(_file_tokens(shard["file"], dtype)[shard["start"]:shard["end"]])


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


def count_shard(shard: dict, dtype: str, queries: list[list[int]]) -> list[int]:
    part = shard_tokens_of(shard, dtype)
    sa = suffix_array(part)
    return [count(part, sa, q) for q in queries]


def window_groups(tokens: np.ndarray, sa: np.ndarray, lcp: np.ndarray, length: int, sep: int):
    """Every distinct window of `length` tokens inside one document, with its number of (possibly overlapping)
    occurrences: consecutive suffixes whose LCP is >= length start with the same window. Returns (position of its
    first occurrence, count) arrays, windows that hold a separator or run off the end left out."""
    n = len(tokens)
    if n < length:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, lcp[:-1] < length])
    sizes = np.diff(np.r_[starts, len(sa)])
    first = np.minimum.reduceat(sa.astype(np.int64), starts)
    csep = np.r_[0, np.cumsum(tokens == sep, dtype=np.int64)]
    rep = sa[starts].astype(np.int64)  # every member shares the first `length` tokens: one check per group
    ok = rep <= n - length
    ok[ok] = csep[rep[ok] + length] - csep[rep[ok]] == 0
    return first[ok], sizes[ok]


def enumerate_shard(shard: dict, dtype: str, sep: int, length: int, ranges: list[tuple[int, int]],
                    n_per_range: int, min_unique: int, seed: int) -> list[list[list[int]]]:
    """Per (lo, hi) count range: up to n_per_range windows of this shard whose exact count in it lies in
    [lo, hi] and that hold at least min_unique distinct tokens, drawn at random among all such windows."""
    from pydivsufsort import kasai

    part = shard_tokens_of(shard, dtype)
    sa = suffix_array(part)
    pos, cnt = window_groups(part, sa, kasai(part, sa), length, sep)
    rng = np.random.default_rng(seed)
    out = []
    for lo, hi in ranges:
        idx = np.flatnonzero((cnt >= lo) & (cnt <= hi))
        chosen = []
        for i in rng.permutation(idx):  # random order; stop once enough pass the diversity filter
            w = part[pos[i]:pos[i] + length]
            if len(np.unique(w)) >= min_unique:
                chosen.append(w.tolist())
                if len(chosen) == n_per_range:
                    break
        out.append(chosen)
    return out


# --------------------------------------------------------------------------------------------- targets
def bucket_of(count_: int, buckets: list[int], tolerance: float) -> int | None:
    for b in buckets:
        if abs(count_ - b) <= tolerance * b:
            return b
    return None


def candidate_ranges(buckets: list[int], tolerance: float, fraction: float) -> list[tuple[int, int]]:
    """Count ranges in the enumerated shard for windows whose whole-corpus count may fall in the buckets. The shard
    holds `fraction` of the corpus; with the whole corpus in it the ranges are the buckets themselves. Else two per
    bucket, each drawn from separately: windows whose copies spread over the corpus (0.5x-2x the shard's expected
    share, as the paper used counts 5/50/500 in one of 20 chunks for buckets 100/1000/10000), and windows whose
    copies sit together in this shard (above that, up to the bucket's whole count). Counts are then re-taken over
    every shard, so a candidate outside its bucket only costs a count."""
    out = []
    for b in buckets:
        hi = int(np.floor(b * (1 + tolerance)))
        if fraction >= 1:
            out.append((max(1, int(np.ceil(b * (1 - tolerance)))), hi))
            continue
        lo, mid = max(1, int(np.floor(b * fraction * 0.5))), max(1, int(np.ceil(b * fraction * 2)))
        out.append((lo, min(mid, hi)))
        if mid < hi:
            out.append((mid + 1, hi))
    return out


def spread(n: int, k: int) -> list[int]:
    """k of n shard indices spread evenly over the corpus, the first included (k = 0 or k >= n: all)."""
    if k <= 0 or k >= n:
        return list(range(n))
    return sorted({int(round(i * (n - 1) / (k - 1))) for i in range(k)}) if k > 1 else [0]


def load_targets(path: str, tokenizer_name: str) -> list[list[int]]:
    raw = read_json(path, "targets file")
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{path}: expected a non-empty JSON list of token-id lists or strings")
    if all(isinstance(t, str) for t in raw):
        tok = _tokenizer(tokenizer_name)
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
            print(f"[mosaic] bucket {b}: {len(chosen)} of {n_per_bucket} targets (the enumerated shard has no more "
                  f"windows whose count is within {tolerance:g} x {b})")
        targets += [{"bucket": b if b is not None else c, "exact_count": c, "tokens": q} for q, c in chosen]
    if not targets:
        raise UserError("no target fell into any bucket; check --target_buckets against the corpus")
    return targets


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


def scan_tokens(part: np.ndarray, targets: list[list[int]], max_distance: int, nms_window: int | None = None,
                offset: int = 0) -> list[dict]:
    """For each target: positions (plus `offset`) of near-duplicate windows (same length) within max_distance in
    Hamming and in Levenshtein distance, after NMS. A bag-of-tokens prefilter skips windows that cannot be that
    close: both distances are at least L minus the number of window tokens that occur in the target (one table
    look-up per token, then a running sum)."""
    from numpy.lib.stride_tricks import sliding_window_view
    from rapidfuzz.distance import Levenshtein

    lut = np.zeros(int(np.iinfo(part.dtype).max) + 1, dtype=np.uint8)
    out = []
    for tgt in targets:
        L = len(tgt)
        t = np.asarray(tgt, dtype=part.dtype)
        if len(part) < L:
            out.append({"hamming": [], "levenshtein": []})
            continue
        lut[t] = 1
        csum = np.r_[0, np.cumsum(lut[part], dtype=np.int32)]
        lut[t] = 0
        cand = np.flatnonzero(csum[L:] - csum[:-L] + max_distance >= L)
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
        out.append({"hamming": [[d, p + offset] for d, p in nms(hh, w)],
                    "levenshtein": [[d, p + offset] for d, p in nms(lev, w)]})
    return out


def scan_shard(shard: dict, dtype: str, targets: list[list[int]], max_distance: int,
               nms_window: int | None = None) -> list[dict]:
    return scan_tokens(shard_tokens_of(shard, dtype), targets, max_distance, nms_window, shard["offset"])


def histogram(hits: list[list[int]], max_distance: int) -> list[int]:
    h = [0] * (max_distance + 1)
    for d, _ in hits:
        h[d] += 1
    return h


# ------------------------------------------------------------------------------------------------- Dask
def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def connect(scheduler: str | None, workers: int):
    """A Dask client: of the scheduler at `scheduler` (an address such as tcp://host:8786, or a scheduler file as
    `dask scheduler --scheduler-file` writes), else of a local cluster of `workers` one-thread processes."""
    import logging

    from distributed import Client, LocalCluster

    if scheduler:
        kw = {"address": scheduler} if "://" in scheduler or not scheduler.endswith(".json") else \
            {"scheduler_file": scheduler}
        if "scheduler_file" in kw and not Path(scheduler).is_file():
            raise UserError(f"Dask scheduler file not found: {scheduler}")
        try:
            return Client(timeout="10s", **kw)
        except (OSError, TimeoutError, ValueError) as e:
            raise UserError(f"cannot reach the Dask scheduler at {scheduler}: {type(e).__name__}: {e}") from None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.CRITICAL)  # a failed task is our one error line
    return Client(cluster)


def disconnect(client):
    """Close the client, and the local cluster if it started one (an existing cluster keeps running)."""
    cluster = client.cluster
    client.close()
    if cluster is not None:
        cluster.close()


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: per process, unlike ru_maxrss, which a child inherits)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker_peak_rss_mb(client) -> dict[str, float]:
    return client.run(_peak_rss_mb)


def _cached_run(fn, path: str, key: str, *args):
    """Run one shard on a worker and write its result there (so it survives the client)."""
    result = fn(*args)
    atomic_write_json(Path(path), {"key": key, "result": result}, None)
    return result


def run_shards(client, fn, jobs: dict[int, tuple], out_dir: Path, stage: str, key, what: str | None = None) -> dict:
    """fn(*args) for every shard whose result file in out_dir is missing or stale (`key`: one for all shards, or a
    dict of per-shard keys), on the cluster, with Dask's progress bar; returns {shard: result}. A shard that fails is
    one error line naming it; the shards that finished stay cached for the retry."""
    from distributed import progress

    out_dir.mkdir(parents=True, exist_ok=True)
    done, futures = {}, {}
    for i, args in jobs.items():
        k = key[i] if isinstance(key, dict) else key
        f = out_dir / f"{stage}_{i}.json"
        if f.is_file():
            try:
                saved = json.loads(f.read_text())
            except ValueError:
                saved = {}
            if saved.get("key") == k:
                done[i] = saved["result"]
                continue
        futures[i] = client.submit(_cached_run, fn, str(f), k, *args, pure=False)
    if futures:
        print(f"[mosaic] {what or stage}: {len(futures)} shard(s) on the cluster ({len(done)} cached)", flush=True)
        progress(list(futures.values()))
        print(flush=True)
        for i, fut in futures.items():
            try:
                done[i] = fut.result()
            except UserError as e:
                raise UserError(f"{what or stage} shard {i}: {e}") from None
            except Exception as e:  # noqa: BLE001 - a worker's failure is reported as that shard's, in one line
                raise UserError(f"{what or stage} shard {i} failed: {type(e).__name__}: {e}") from None
    return done


# --------------------------------------------------------------------------------------------- merge
def _ratio_of_sums(num, den, axis=-1):
    return np.sum(num, axis=axis) / np.sum(den, axis=axis)


def merge(targets: list[dict], part_results: list[list[dict]], max_distance: int) -> dict:
    """Per-target distance histograms; per bucket the mean cumulative counts and the fuzzy duplicates per exact
    duplicate at each distance (near-duplicates at distance 1..d over the exact copies, summed over the bucket's
    targets), each with a bootstrap 95% interval over targets (None with one target)."""
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
        s = {"targets": len(rows)}
        exact = np.array([max(r["exact_count"], 1) for r in rows], dtype=float)
        for m in ("hamming", "levenshtein"):
            cum = np.array([np.cumsum(r[m]) for r in rows], dtype=float)
            fuzzy = cum - cum[:, :1]
            s[f"mean_cumulative_{m}"] = cum.mean(0).round(3).tolist()
            s[f"mean_cumulative_{m}_ci"] = [stats.mean_ci(cum[:, d]) for d in range(max_distance + 1)]
            s[f"fuzzy_per_exact_{m}"] = (fuzzy.sum(0) / exact.sum()).round(4).tolist()
            s[f"fuzzy_per_exact_{m}_ci"] = [None] + [
                stats.bootstrap(_ratio_of_sums, fuzzy[:, d], exact, paired=True)
                if len(rows) > 1 else None for d in range(1, max_distance + 1)]
        summary[str(b)] = s
    return {"summary": summary, "targets": per_target}
