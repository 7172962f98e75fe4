"""Scan: exact counts equal brute force; planted near-duplicates are found at their Hamming / Levenshtein distance;
parts merge exactly; resume reuses finished parts."""
import json

import numpy as np
import pytest

from conftest import assert_user_error, run_mosaic
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


def test_scan_finds_planted_near_duplicates_and_parts_merge(tmp_path):
    target = planted_corpus(tmp_path)
    (tmp_path / "targets.json").write_text(json.dumps([[int(t) for t in target]]))
    outs = {}
    for parts in (1, 3):
        out = tmp_path / f"out{parts}"
        proc = run_mosaic("scan", "--corpus", tmp_path / "tok", "--targets_file", tmp_path / "targets.json",
                          "--length", "30", "--max_distance", "4", "--parts", parts, "--workers", min(parts, 2),
                          "--output_dir", out)
        assert proc.returncode == 0, proc.stderr
        res = json.loads((out / "scan.json").read_text())
        outs[parts] = res["targets"][0]
    t = outs[1]
    assert t["exact_count"] == 3
    assert t["hamming"][:5] == [3, 0, 2, 0, 0]  # 3 exact, 2 at Hamming 2; the indel copy is far in Hamming
    assert t["levenshtein"][0] == 3 and t["levenshtein"][2] == 3  # subs at 2, indel at 2
    assert sum(t["levenshtein"]) == 6
    for k in ("exact_count", "hamming", "levenshtein", "hamming_positions", "levenshtein_positions"):
        assert outs[3][k] == t[k], k  # three parts in a process pool give the same answer as one


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
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "parts").iterdir()}
    proc = run_mosaic("scan", *args)  # everything is reused
    assert proc.returncode == 0, proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "parts").iterdir()} == mtimes


def test_empty_corpus_is_a_user_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    proc = run_mosaic("scan", "--build_from", tmp_path / "empty.jsonl", "--corpus", tmp_path / "tok",
                      "--output_dir", tmp_path / "out")
    assert_user_error(proc, "empty")
    assert not (tmp_path / "tok.json").exists() and not (tmp_path / "out").exists()
