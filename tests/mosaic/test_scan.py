"""Scan: exact counts and LCP windows equal brute force; planted near-duplicates are found at their Hamming /
Levenshtein distance; shards merge exactly on any number of Dask workers, local or an existing cluster; resume
reuses finished shards; a failing shard or an unreachable scheduler is one error line."""
import json
import subprocess
import sys
import time
from collections import Counter

from pathlib import Path

import numpy as np
import pytest

from conftest import assert_user_error, child_env, run_mosaic
from privlm.mosaic import scan as S


class IdTok:
    """A tokenizer whose text is space-separated token ids (exact control over the corpus)."""

    def __len__(self):
        return 1000

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [int(t) for t in text.split()]}


def brute_count(tokens, q):
    L = len(q)
    return sum(1 for i in range(len(tokens) - L + 1) if list(tokens[i:i + L]) == list(q))


def test_exact_counts_equal_brute_force():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 4, 3000).astype(np.uint16)  # small alphabet: many repeats
    sa = S.suffix_array(tokens)
    for L in (1, 3, 6):
        for _ in range(15):
            i = int(rng.integers(0, len(tokens) - L))
            q = tokens[i:i + L]
            assert S.count(tokens, sa, q) == brute_count(tokens, q)
    assert S.count(tokens, sa, [9, 9]) == 0


@pytest.mark.parametrize("seed", range(3))
def test_lcp_window_groups_equal_brute_force_counts(seed):
    rng = np.random.default_rng(seed)
    sep = np.iinfo(np.uint16).max
    tokens = rng.integers(0, 3, 2000).astype(np.uint16)  # three letters: windows of 4 repeat a lot
    tokens[rng.random(2000) < 0.03] = sep  # documents
    tokens[-1] = sep
    from pydivsufsort import kasai

    sa = S.suffix_array(tokens)
    for L in (2, 4, 7):
        pos, cnt = S.window_groups(tokens, sa, kasai(tokens, sa), L, sep)
        brute = Counter(tuple(tokens[i:i + L]) for i in range(len(tokens) - L + 1) if sep not in tokens[i:i + L])
        got = {tuple(tokens[p:p + L]): int(c) for p, c in zip(pos, cnt)}
        assert got == dict(brute)
        first = {}
        for i in range(len(tokens) - L + 1):
            first.setdefault(tuple(tokens[i:i + L]), i)
        assert all(first[tuple(tokens[p:p + L])] == p for p in pos)  # each group reports its first occurrence


def quadratic_nms(hits, window):
    """The definition: best (lowest distance, then leftmost) first, drop a hit within +-window of any kept one."""
    kept = []
    for d, p in sorted(hits):
        if all(abs(p - q) > window for _, q in kept):
            kept.append((d, p))
    return kept


@pytest.mark.parametrize("seed", range(6))
def test_fast_nms_equals_the_all_pairs_definition(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    hits = list(zip(rng.integers(0, 5, n).tolist(), rng.integers(0, 3000, n).tolist()))
    for window in (0, 7, 24):
        assert sorted(S.nms(hits, window)) == sorted(quadratic_nms(hits, window))
    assert S.nms([], 5) == []


def planted_corpus(tmp_path, seed=0):
    """Random documents; target T planted exactly 3 times, with 2 substitutions twice, with 1 deletion + 1 insertion once."""
    rng = np.random.default_rng(seed)
    L = 30
    target = list(rng.choice(np.arange(500, 600), L, replace=False))
    docs = [list(rng.integers(0, 400, 300)) for _ in range(12)]

    def plant(doc, seq):
        at = int(rng.integers(0, len(docs[doc]) - 1))
        docs[doc][at:at] = list(seq)

    for d in (0, 5, 9):
        plant(d, target)
    for d in (2, 7):
        sub = list(target)
        sub[4], sub[20] = 700, 701
        plant(d, sub)
    indel = target[:10] + target[11:] + [702]  # delete one token, append one: Levenshtein 2, Hamming large
    plant(11, indel)
    S.build_token_file([" ".join(map(str, d)) for d in docs], IdTok(), tmp_path / "tok")
    return target


def test_scan_finds_planted_near_duplicates_and_shards_merge(tmp_path):
    target = planted_corpus(tmp_path)
    (tmp_path / "targets.json").write_text(json.dumps([[int(t) for t in target]]))
    outs = {}
    for parts, workers in ((1, 1), (3, 2)):
        out = tmp_path / f"out{parts}"
        proc = run_mosaic("scan", "--corpus", tmp_path / "tok", "--targets_file", tmp_path / "targets.json",
                          "--length", "30", "--max_distance", "4", "--parts", parts, "--workers", workers,
                          "--output_dir", out)
        assert proc.returncode == 0, proc.stderr
        res = json.loads((out / "scan.json").read_text())
        assert res["shards"] == parts
        run = json.loads((out / "scan_run.json").read_text())
        assert run["workers"] == workers and len(run["peak_rss_mb_per_worker"]) == workers
        outs[parts] = res["targets"][0]
    t = outs[1]
    assert t["exact_count"] == 3
    assert t["hamming"][:5] == [3, 0, 2, 0, 0]  # 3 exact, 2 at Hamming 2; the indel copy is far in Hamming
    assert t["levenshtein"][0] == 3 and t["levenshtein"][2] == 3  # subs at 2, indel at 2
    assert sum(t["levenshtein"]) == 6
    for k in ("exact_count", "hamming", "levenshtein", "hamming_positions", "levenshtein_positions"):
        assert outs[3][k] == t[k], k  # three shards on two Dask workers give the same answer as one on one
    s = res["summary"]["3"]  # one target, 3 exact copies: near-duplicates at distance 1..d per exact copy
    assert s["fuzzy_per_exact_hamming"][2] == pytest.approx(2 / 3, abs=1e-4) and s["fuzzy_per_exact_levenshtein"][2] == 1.0
    assert s["fuzzy_per_exact_hamming"][0] == 0 and s["fuzzy_per_exact_hamming_ci"][2] is None  # one target


def test_external_dask_cluster_gives_the_local_clusters_scan(tmp_path):
    """`dask scheduler` and two `dask worker` processes, as on a real cluster: the same scan.json as locally."""
    target = planted_corpus(tmp_path, seed=1)
    (tmp_path / "targets.json").write_text(json.dumps([[int(t) for t in target]]))
    sched_file = tmp_path / "scheduler.json"
    bindir = Path(sys.executable).parent
    env = child_env()
    procs = [subprocess.Popen([bindir / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", sched_file], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(120):
            if sched_file.is_file() and sched_file.stat().st_size:
                break
            time.sleep(0.5)
        procs += [subprocess.Popen([bindir / "dask", "worker", "--scheduler-file", sched_file, "--nthreads", "1",
                                    "--no-dashboard", "--host", "127.0.0.1"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
        common = ["--corpus", tmp_path / "tok", "--targets_file", tmp_path / "targets.json", "--length", "30",
                  "--max_distance", "4", "--parts", "3"]
        from distributed import Client

        with Client(scheduler_file=str(sched_file), timeout="60s") as c:
            c.wait_for_workers(2, timeout=120)
        proc = run_mosaic("scan", *common, "--scheduler", sched_file, "--output_dir", tmp_path / "ext")
        assert proc.returncode == 0, proc.stderr
        assert json.loads((tmp_path / "ext" / "scan_run.json").read_text())["workers"] == 2
        proc = run_mosaic("scan", *common, "--workers", "2", "--output_dir", tmp_path / "local")
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "ext" / "scan.json").read_text() == (tmp_path / "local" / "scan.json").read_text()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def test_unreachable_scheduler_is_one_error_line(tmp_path):
    planted_corpus(tmp_path)
    for sched, needle in (("tcp://127.0.0.1:9", "cannot reach the Dask scheduler"),
                          (tmp_path / "nope.json", "scheduler file not found")):
        proc = run_mosaic("scan", "--corpus", tmp_path / "tok", "--scheduler", sched, "--output_dir", tmp_path / "o")
        assert_user_error(proc, needle)
        assert not (tmp_path / "o" / "scan.json").exists()


def test_a_shard_that_fails_to_tokenize_names_itself_and_keeps_the_finished_ones(tmp_path, tiny_model_dir):
    from privlm import models

    tok_name = str(tiny_model_dir)
    client = S.connect(None, 1)
    try:
        docs = ["apple tree", "river stone", "cloud", None, "bright window"]  # the 4th: in the second shard of 3
        with pytest.raises(S.UserError, match="tokenizing shard 1: document 0 of the chunk is NoneType"):
            S.build_corpus(client, docs, tok_name, tmp_path / "tok", docs_per_shard=3)
        assert (tmp_path / "tok.shards" / "tokenize_0.json").is_file() and not (tmp_path / "tok.json").exists()
        done = (tmp_path / "tok.shards" / "tokenize_0.json").stat().st_mtime_ns
        docs[3] = "green field"
        meta = S.build_corpus(client, docs, tok_name, tmp_path / "tok", docs_per_shard=3)
        assert (tmp_path / "tok.shards" / "tokenize_0.json").stat().st_mtime_ns == done  # not redone
        assert meta["num_docs"] == 5 and len(meta["files"]) == 2 and S.open_corpus(tmp_path / "tok")["num_tokens"]
        tok = models.load_tokenizer(tok_name)
        sep = meta["separator"]
        want = [t for d in docs for t in tok(d, add_special_tokens=False)["input_ids"] + [sep]]
        got = np.concatenate([np.fromfile(tmp_path / f["path"], dtype=np.uint16) for f in meta["files"]])
        assert got.tolist() == want
    finally:
        S.disconnect(client)


def test_scan_samples_targets_by_bucket_and_resumes(tmp_path):
    rng = np.random.default_rng(3)
    rep = list(rng.integers(0, 300, 20))
    docs = [list(rng.integers(0, 300, 200)) + (rep if i < 10 else []) for i in range(20)]
    S.build_token_file([" ".join(map(str, d)) for d in docs], IdTok(), tmp_path / "tok")
    args = ["--corpus", tmp_path / "tok", "--length", "20", "--target_buckets", "1", "10", "--bucket_tolerance", "0.2",
            "--n_per_bucket", "2", "--num_candidates", "800", "--min_unique", "10", "--max_distance", "3",
            "--parts", "2", "--workers", "1", "--output_dir", tmp_path / "out"]
    proc = run_mosaic("scan", *args)
    assert proc.returncode == 0, proc.stderr
    res = json.loads((tmp_path / "out" / "scan.json").read_text())
    buckets = {t["bucket"]: t for t in res["targets"]}
    assert set(buckets) == {1, 10} and buckets[10]["exact_count"] == 10 and buckets[10]["hamming"][0] == 10
    assert (tmp_path / "out" / "scan.png").stat().st_size > 0
    for b, s in res["summary"].items():  # every mean and ratio with its interval over the bucket's targets
        for key in ("mean_cumulative_hamming", "mean_cumulative_levenshtein", "fuzzy_per_exact_levenshtein"):
            cis = s[f"{key}_ci"]
            assert len(cis) == len(s[key]) and all(ci is None or ci[0] - 1e-9 <= v <= ci[1] + 1e-9
                                                   for v, ci in zip(s[key], cis)), (b, key)
            assert any(ci is not None for ci in cis) == (s["targets"] > 1)  # one target: no interval
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "parts").iterdir()}
    assert {"enumerate_0.json", "count_0.json", "count_1.json", "scan_0.json", "scan_1.json"} <= set(mtimes)
    proc = run_mosaic("scan", *args)  # everything is reused
    assert proc.returncode == 0, proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "parts").iterdir()} == mtimes


def test_empty_corpus_is_a_user_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    proc = run_mosaic("scan", "--build_from", tmp_path / "empty.jsonl", "--corpus", tmp_path / "tok",
                      "--output_dir", tmp_path / "out")
    assert_user_error(proc, "empty")
    assert not (tmp_path / "tok.json").exists() and not (tmp_path / "out").exists()


def test_windows_repeated_outside_the_first_shard_need_more_enumerated_shards(tmp_path):
    """The paper enumerates one chunk; a sequence repeated only in the corpus' second half is found with
    --enumerate_shards 0 (all shards) and missed with the default 1."""
    rng = np.random.default_rng(5)
    rep = list(rng.integers(300, 400, 20))
    docs = [list(rng.integers(0, 300, 200)) + (rep if i >= 10 else []) for i in range(20)]
    S.build_token_file([" ".join(map(str, d)) for d in docs], IdTok(), tmp_path / "tok")
    args = ["--corpus", tmp_path / "tok", "--length", "20", "--target_buckets", "10", "--n_per_bucket", "1",
            "--min_unique", "5", "--max_distance", "2", "--parts", "2", "--workers", "1"]
    assert_user_error(run_mosaic("scan", *args, "--output_dir", tmp_path / "one"), "enumerated shard")
    proc = run_mosaic("scan", *args, "--enumerate_shards", "0", "--output_dir", tmp_path / "all")
    assert proc.returncode == 0, proc.stderr
    t = json.loads((tmp_path / "all" / "scan.json").read_text())["targets"][0]
    assert t["exact_count"] == 10 and t["tokens"] == [int(x) for x in rep]


@pytest.mark.parametrize("fraction", [1.0, 0.5, 1 / 3, 0.05])
def test_candidate_ranges_cover_spread_and_concentrated_copies(fraction):
    """A window of a bucket can hold its shard's share of the copies (spread) or all of them (one document): both
    local counts fall in one of the bucket's ranges; with the whole corpus in the shard, only the bucket itself."""
    for b in (1, 8, 16, 1000):
        ranges = S.candidate_ranges([b], 0.01, fraction)
        inside = lambda c: any(lo <= c <= hi for lo, hi in ranges)  # noqa: E731
        assert inside(b)  # concentrated: every copy in this shard
        assert inside(max(1, round(b * fraction)))  # spread: the shard's share
        assert not inside(b + max(1, round(0.02 * b)))  # above the bucket's tolerance: never a candidate
        if fraction == 1.0:
            assert ranges == [(b, b)] if b < 100 else ranges == [(990, 1010)]
