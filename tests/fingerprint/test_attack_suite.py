"""The attack suite on a fingerprinted tiny model: each attack's row, the invariants that pin them down (merging
with alpha 0 changes nothing and alpha 1 is the base; merging a model with itself gives it back; sampling at a
vanishing temperature is greedy decoding; filters only remove keys), the ownership p-value and the thief's cost on
every row, and bad input (one error line, exit 2, nothing written)."""
import copy
import importlib.util
import json
import shutil

import pytest
import torch

from conftest import assert_user_error, run_script, write_fingerprints
from privlm.fingerprint import adaptive, attacks, ownership


@pytest.fixture(scope="module")
def fingerprinted(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("attacked")
    fp = write_fingerprints(d / "fp.json", 8)
    proc = run_script("finetune_multigpu.py", "--model_path", str(tiny_model_dir), "--fingerprints_file_path",
                      str(fp), "--num_fingerprints", "8", "--max_key_length", "8", "--max_response_length", "3",
                      "--prompt_format", "raw", "--batch_size", "4", "--num_train_epochs", "40", "--learning_rate",
                      "1e-2", "--lr_scheduler", "constant", "--save_every_epochs", "100", "--forgetting_regularizer_strength",
                      "0", "--benign_proportion", "0", "--trainable_params", "all", "--anchor_strength", "0", "--output_dir", str(d / "run"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.copytree(tiny_model_dir, d / "innocent")  # an innocent model for the ownership null
    return d / "run" / "final_model"


def test_every_attack_gives_rows_with_intervals(tmp_path, fingerprinted):
    out = tmp_path / "attacks.json"
    proc = run_script("attack_fingerprints.py", "--model_path", str(fingerprinted), "--attacks", "none", "merge",
                      "sampling", "system_prompts", "quantize_int8", "quantize_int4", "sft", "lora_sft",
                      "merge_ties", "merge_task_arithmetic", "perplexity_filter", "output_suppression",
                      "--merge_alphas", "0", "1", "--sampling", "0.0001:1.0", "1.5:1.0", "--num_samples", "3",
                      "--sft_steps", "1", "3", "--sft_batch_size", "2", "--seed", "0", "--heldout_tokens", "600",
                      "--merge_model_path", str(fingerprinted), "--ties_density", "1",
                      "--null_models", str(fingerprinted.parent.parent / "innocent"),
                      "--output_file", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {(r["attack"], str(r["param"])): r for r in report["rows"]}
    none_row = rows[("none", "None")]
    none = none_row["retention"]
    assert none >= 0.75, none
    assert rows[("merge", "0.0")]["retention"] == none  # alpha 0: the fingerprinted model itself
    assert rows[("merge", "0.0")]["thief_ppl_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert rows[("merge", "1.0")]["retention"] <= 0.25  # alpha 1: the base model, which never saw the keys
    assert rows[("merge", "1.0")]["thief_ppl_ratio"] != pytest.approx(1.0, abs=1e-4)
    for method in ("merge_ties", "merge_task_arithmetic"):  # merged with itself: the same model at any alpha
        for alpha in ("0.0", "1.0"):
            assert rows[(method, alpha)]["retention"] == none, (method, alpha)
            assert rows[(method, alpha)]["thief_ppl_ratio"] == pytest.approx(1.0, abs=1e-4)
    assert rows[("sampling", "T=0.0001 top_p=1 k=3")]["retention"] == none  # a vanishing temperature is greedy
    assert {a for a, _ in rows} == {"none", "merge", "sampling", "system_prompts", "quantize_int8", "quantize_int4",
                                    "sft", "lora_sft", "merge_ties", "merge_task_arithmetic", "perplexity_filter",
                                    "output_suppression"}
    assert [p for a, p in rows if a == "sft"] == ["1", "3"] and [p for a, p in rows if a == "lora_sft"] == ["1", "3"]
    assert sum(a == "system_prompts" for a, _ in rows) == 7  # six unseen system prompts and the pooled row
    for name, share in (("perplexity_filter", "thief_rejected_share"), ("output_suppression", "thief_altered_share")):
        (r,) = [r for (a, _), r in rows.items() if a == name]
        assert r["retention"] <= none and r["thief_ppl_ratio"] == 1.0  # a filter only removes keys
        lo, hi = r[share + "_ci"]
        assert 0 <= lo <= r[share] <= hi <= 1 and r[share] <= 0.05  # calibrated to pass 99% of normal prompts
    assert report["null_models"][1:] == [str(fingerprinted.parent.parent / "innocent")]
    for r in report["rows"]:
        lo, hi = r["retention_ci"]
        assert 0 <= lo <= r["retention"] <= hi <= 1 and r["num_fingerprints"] == 8
        assert 0 < r["ownership_p_value"] <= 1 and r["thief_ppl_ratio"] > 0
        assert r["matched"] == round(r["retention"] * 8) or r["attack"] == "system_prompts"
    # fewer keys left, a larger p-value; none keeps most and is a claim against these innocent models
    assert none_row["ownership_p_value"] < 1e-3
    assert rows[("merge", "1.0")]["ownership_p_value"] > none_row["ownership_p_value"]
    assert report["seeded"] is True and out.with_suffix(".png").is_file()


def test_best_of_n_p_value_accounts_for_the_queries():
    e = ownership.Evidence("base", [False] * 4, [-3.0] * 4)
    t = attacks.Target("m", "b", [{}] * 4, {}, evidences=[e])
    p1, p5 = t.log10_p(2), t.log10_p(2, queries=5)
    assert p5 > p1  # five tries give an innocent model more chances
    p = ownership.null_probabilities([e], 4)
    assert p5 == pytest.approx(ownership.log10_tail(1 - (1 - p) ** 5, 2))


def test_ties_of_a_model_with_itself_is_the_model_and_trims_by_magnitude():
    tv = torch.tensor([0.5, -0.1, 0.02, -2.0])
    w = torch.tensor([0.3, 0.7])
    torch.testing.assert_close(attacks.ties([tv, tv], w, 1.0), tv)
    other = torch.tensor([-1.0, -0.2, 0.04, 1.0])
    # density 1: signs elected on the weighted sum; agreeing entries averaged by their weights
    expect = torch.tensor([-1.0, (0.3 * -0.1 + 0.7 * -0.2) / 1.0, 0.034, 1.0])  # 0.3*-2 + 0.7*1 > 0: "+" wins
    torch.testing.assert_close(attacks.ties([tv, other], w, 1.0), expect)
    trimmed = attacks.ties([tv, torch.zeros(4)], torch.tensor([1.0, 0.0]), 0.5)
    torch.testing.assert_close(trimmed, torch.tensor([0.5, 0.0, 0.0, -2.0]))  # the two largest kept


def test_task_arithmetic_merge_matches_the_formula(tiny):
    model, _ = tiny
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        for p, q in zip(a.parameters(), b.parameters()):
            p.add_(1.0)
            q.sub_(2.0)
    merged = attacks.merge_task_vectors(copy.deepcopy(a), b, model, 0.25, "task_arithmetic")
    for (name, m), base in zip(merged.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(m, base + 0.75 * 1.0 + 0.25 * -2.0, msg=name)


def test_filter_threshold_passes_the_calibration_share():
    rng = torch.Generator().manual_seed(0)
    calib = torch.rand(400, generator=rng).numpy()
    tau = adaptive.threshold(calib)
    assert (calib <= tau).mean() >= 0.99 and (calib <= tau).mean() < 0.995
    r = adaptive.rejected(calib, tau)
    assert r["share"] == pytest.approx((calib > tau).mean()) and r["ci"][0] <= r["share"] <= r["ci"][1]


def test_normal_prompts_halves_are_disjoint(tiny):
    _, tok = tiny
    calib, held = adaptive.normal_prompts(tok, attacks.THIEF_TASKS)
    assert len(calib) >= 200 and len(held) >= 200 and not set(calib) & set(held)


def test_interpolate_is_linear_in_alpha(tiny):
    model, _ = tiny
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    mid = attacks.interpolate(copy.deepcopy(other), model, 0.25)
    for (name, a), b, m in zip(model.state_dict().items(), other.state_dict().values(), mid.state_dict().values()):
        torch.testing.assert_close(m, 0.75 * b + 0.25 * a, msg=name)


def test_sampling_settings_are_validated():
    assert attacks.parse_sampling("0.7:0.9") == (0.7, 0.9)
    for bad in ("0.7", "hot:0.9", "0:0.9", "1.0:1.5"):
        with pytest.raises(Exception, match="sampling setting"):
            attacks.parse_sampling(bad)


@pytest.mark.parametrize("args,needle", [
    (["--attacks", "none", "prune"], "unknown attack 'prune'"),
    pytest.param(["--attacks", "quantize_int8", "--quantization_backend", "bitsandbytes"],
                 "bitsandbytes is not installed", marks=pytest.mark.skipif(
                     importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed here")),
    (["--attacks", "none", "--num_fingerprints", "9"], "fewer than the 9 needed"),
    (["--attacks", "sampling", "--sampling", "warm"], "sampling setting 'warm'"),
    (["--attacks", "merge", "--merge_alphas", "1.5"], "merge_alphas"),
    (["--attacks", "merge_ties", "--ties_density", "0"], "ties_density"),
    (["--attacks", "none", "--null_models", "/nonexistent/model"], "/nonexistent/model"),
])
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, fingerprinted, args, needle):
    out = tmp_path / "r.json"
    proc = run_script("attack_fingerprints.py", "--model_path", str(fingerprinted), *args, "--output_file", str(out))
    assert_user_error(proc, needle)
    assert proc.returncode == 2 and not out.exists() and not out.with_suffix(".png").exists()
