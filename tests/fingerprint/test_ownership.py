"""Ownership a third party can check: the Poisson-binomial tail, the null estimated from innocent models, the
false-positive rate measured on them, and the command line that reports it (privlm.fingerprint.ownership)."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from conftest import assert_user_error, run_script, teach_tiny
from privlm.fingerprint import ownership as own


def test_the_tail_equals_enumeration_and_the_binomial():
    from scipy.stats import binom

    p = np.random.default_rng(0).uniform(0, 0.6, 9)
    for k in range(len(p) + 1):
        brute = sum(np.prod([p[i] if s[i] else 1 - p[i] for i in range(len(p))])
                    for s in itertools.product([0, 1], repeat=len(p)) if sum(s) >= k)
        assert 10 ** own.log10_tail(p, k) == pytest.approx(brute, rel=1e-9)
    assert own.log10_tail([0.3] * 200, 90) == pytest.approx(math.log10(binom.sf(89, 200, 0.3)), rel=1e-9)
    # far below what a float holds, still exact in log space: 1024 keys at 1% each
    assert own.log10_tail([0.01] * 1024, 1024) == pytest.approx(-2048.0, abs=1e-6)
    assert own.log10_tail([0.2, 0.9], 0) == 0.0 and own.log10_tail([0.2, 0.9], 3) == -math.inf


def test_the_pooled_bound_is_clopper_pearsons_one_sided_upper_limit():
    e = [own.Evidence("a", [False] * 160, [-50.0] * 160)]
    assert own.pooled_upper(e) == pytest.approx(1 - 0.05 ** (1 / 160), rel=1e-9)
    assert own.pooled_upper([]) == 1.0


def test_an_innocent_match_or_a_likely_sample_makes_a_key_worthless():
    n = 32
    base = own.Evidence("base", [i == 0 for i in range(n)], [-40.0] * n)
    other = own.Evidence("other", [False] * n, [math.log(0.5) if i == 1 else -40.0 for i in range(n)])
    p = own.null_probabilities([base, other], n)
    assert p[0] == 1.0 and p[1] == pytest.approx(0.5)
    assert np.all(p[2:] == own.pooled_upper([base, other]))


def test_a_fingerprinted_suspect_is_claimed_and_innocent_models_are_not():
    n, rng = 64, np.random.default_rng(1)
    innocents = [own.Evidence(f"m{j}", list(rng.random(n) < 0.01), list(rng.uniform(-60, -20, n))) for j in range(5)]
    o = own.assess([True] * n, innocents, alpha=1e-6)
    assert o["claim"] and o["matched"] == n and o["log10_p_value"] < -9
    assert o["false_positive_rate"] == 0.0 and not any(r["claim"] for r in o["null_checks"])
    assert o["null_models"] == [f"m{j}" for j in range(5)] and len(o["null_match_probability"]["per_key"]) == n
    # a suspect that matches no more than innocent models do is not claimed
    weak = own.assess([i < 2 for i in range(n)], innocents, alpha=1e-6)
    assert not weak["claim"] and weak["p_value"] > 1e-6
    assert "ownership claimed" in own.line(o) and "no claim" in own.line(weak)


def _trained_tiny(tmp_path, n: int = 12):
    """A tiny model taught n fingerprints (first tokens, raw keys) by a minimal loop, and its fingerprints file."""
    from conftest import write_fingerprints
    from privlm.testing import build_model, build_tokenizer

    fps_path = write_fingerprints(tmp_path / "fps.json", n, seed=7)
    fps = json.loads(fps_path.read_text())
    teach_tiny(tmp_path / "suspect", fps, seed=3, steps=150)
    tok = build_tokenizer()
    innocents = []
    for seed in (11, 12, 13):
        m = build_model(len(tok), seed=seed)
        m.generation_config.pad_token_id = tok.pad_token_id
        m.save_pretrained(tmp_path / f"innocent{seed}")
        tok.save_pretrained(tmp_path / f"innocent{seed}")
        innocents.append(str(tmp_path / f"innocent{seed}"))
    return fps_path, tmp_path / "suspect", innocents


FLAGS = ["--max_key_length", "16", "--max_response_length", "4", "--response_semantics", "first_tokens",
         "--prompt_templates", "bare"]


def test_check_fingerprints_ownership_claims_the_suspect_and_refuses_another_tokenizer(tmp_path, tiny_model_dir,
                                                                                       capsys):
    import check_fingerprints
    from privlm.io import read_json

    fps, suspect, innocents = _trained_tiny(tmp_path)
    out = tmp_path / "check.json"
    report = check_fingerprints.main(["--model_path", str(suspect), "--fingerprints_file_path", str(fps), *FLAGS,
                                      "--ownership", "--base_model_path", str(tiny_model_dir), "--null_models",
                                      *innocents, "--ownership_alpha", "1e-3", "--output_file", str(out)])
    o = report["ownership"]
    assert report["retention"] == 1.0 and o["matched"] == o["n"] == 12
    assert o["claim"] and o["p_value"] < 1e-3 and o["false_positive_rate"] == 0.0
    assert o["null_models"] == [str(tiny_model_dir), *innocents]
    assert "Ownership: 12/12 keys matched" in capsys.readouterr().out
    assert read_json(out)["ownership"]["log10_p_value"] == pytest.approx(o["log10_p_value"])

    # an innocent model as the suspect, the others as its null: no claim
    innocent = check_fingerprints.main(["--model_path", innocents[0], "--fingerprints_file_path", str(fps), *FLAGS,
                                        "--ownership", "--base_model_path", str(tiny_model_dir), "--null_models",
                                        *innocents[1:], "--ownership_alpha", "1e-3"])
    assert not innocent["ownership"]["claim"]

    # a null model with another tokenizer: one line, no report
    from transformers import AutoTokenizer

    other = tmp_path / "other_tok"
    import shutil

    shutil.copytree(innocents[1], other)
    t = AutoTokenizer.from_pretrained(other)
    t.add_tokens(["zzqx"])
    t.save_pretrained(other)
    bad = tmp_path / "bad.json"
    proc = run_script("check_fingerprints.py", "--model_path", str(suspect), "--fingerprints_file_path", str(fps),
                      *FLAGS, "--ownership", "--null_models", str(other), "--output_file", str(bad))
    assert_user_error(proc, "another tokenizer")
    assert not bad.exists()
