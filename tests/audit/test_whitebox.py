"""The white-box audit: gradient canaries enter DP-SGD's clipped sum exactly as C u_i and are read back along u_i
(Dirac and random directions, scores carried through a checkpoint); a DP-SGD whose noise is sigma / 10 while its
accountant claims epsilon 1 is flagged "violated" (exit 3) on every seed tried, the correct one is not; one rank and
two ranks (LoRA) see the same released sums; bad white-box settings fail in one line before anything is written."""
import json

import numpy as np
import pytest
import torch

from conftest import assert_user_error, run_script
from privlm.audit.whitebox import GradientCanaries
from privlm.dp.randomness import NoiseSource

TINY = ["--dataset_path", "synthetic:16", "--max_seq_len", "48", "--threat_model", "whitebox", "--num_canaries",
        "200", "--eps", "1", "--delta", "1e-5", "--num_epochs", "4", "--reproducible_noise"]


@pytest.mark.parametrize("kind", ["dirac", "random"])
def test_canaries_add_c_along_their_direction_and_read_it_back(kind):
    params = [torch.zeros(40, 30), torch.zeros(500)]
    members = np.arange(50) % 2 == 0
    wb = GradientCanaries(members, kind, seed=3).bind(params, sample_rate=1.0, clip=2.5, sigma=0.0)
    sums = [torch.zeros_like(p) for p in params]
    wb.add_(sums, NoiseSource(True, 0), step=0)
    total = torch.cat([s.flatten() for s in sums])
    # 25 unit directions of norm C each: exact for Dirac, nearly orthogonal random ones
    assert float(total.norm()) == pytest.approx(2.5 * members.sum() ** 0.5, rel=1e-5 if kind == "dirac" else 0.2)
    wb.observe(sums, world=1)
    y = np.array(wb.scores["sum"])
    if kind == "dirac":  # one coordinate each: exactly 1 (in units of C) for members, 0 for the others
        assert np.array_equal(y, members.astype(float)) and (total != 0).sum() == members.sum()
    else:  # nearly orthogonal on 1500 coordinates: each member reads ~1, each non-member ~0
        assert np.all(np.abs(y - members) < 0.35) and y[members].mean() == pytest.approx(1.0, abs=0.1)
    again = GradientCanaries(members, kind, seed=3)
    again.load_state(json.loads(json.dumps(wb.state())))
    assert again.steps == 1 and np.allclose(again.scores["sum"].numpy(), y)


def test_more_canaries_than_trainable_weights_is_one_error():
    from privlm.errors import UserError

    with pytest.raises(UserError, match="trainable weights"):
        GradientCanaries(np.ones(20, bool)).bind([torch.zeros(10)], 1.0, 1.0, 1.0)


def broken(tiny_model_dir, out, *extra, divisor="10", ranks=1):
    return run_script("benchmarks/audit_broken_noise.py", "--noise_divisor", divisor, "--model_path",
                      str(tiny_model_dir), *TINY, *extra, "--output_dir", str(out),
                      launcher="deepspeed" if ranks > 1 else "python", ranks=ranks)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_noise_ten_times_too_small_is_flagged_on_every_seed(tmp_path, tiny_model_dir, seed):
    p = broken(tiny_model_dir, tmp_path / "b", "--peft", "none", "--seed", str(seed))
    a = json.loads((tmp_path / "b" / "audit.json").read_text())
    assert p.returncode == 3, p.stderr[-3000:]
    assert a["verdict"] == "violated" and a["epsilon_lower_bound"] > 1 >= a["epsilon_upper_bound"] > 0.9
    assert f"DP guarantee violated: epsilon_lb {a['epsilon_lower_bound']:.3f} > epsilon " in p.stderr
    assert {(b["method"], b["delta"]) for b in a["bounds"]} == {("eps_delta", 1e-5), ("fdp", 1e-5)}
    assert a["epsilon_lower_bound"] == max(b["epsilon_lower_bound"] for b in a["bounds"])


def test_correct_noise_is_consistent_and_ranks_release_the_same_sums(tmp_path, tiny_model_dir):
    one = broken(tiny_model_dir, tmp_path / "one", "--target_modules", "q_proj", "v_proj", divisor="1")
    assert one.returncode == 0, one.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "audit.json").read_text())
    assert a["verdict"] == "consistent" and a["epsilon_lower_bound"] <= a["epsilon_upper_bound"] <= 1.0
    assert a["mode"] == "dp" and a["threat_model"] == "whitebox" and a["num_canaries"] == 200
    two = broken(tiny_model_dir, tmp_path / "two", "--target_modules", "q_proj", "v_proj", divisor="1", ranks=2)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    s1 = json.loads((tmp_path / "one" / "scores.json").read_text())["scores"]
    s2 = json.loads((tmp_path / "two" / "scores.json").read_text())["scores"]
    assert np.allclose(s1, s2, rtol=1e-4, atol=1e-4)  # same noise, batches and canaries; sums over ranks in fp32


def test_bad_whitebox_settings_fail_before_anything_is_written(tmp_path, tiny_model_dir):
    common = ["--model_path", str(tiny_model_dir), "--dataset_path", "synthetic:16", "--threat_model", "whitebox"]
    for extra, needle in ((["--eps", "-1"], "must name the clipping norm"),
                          (["--eps", "8", "--deepspeed_stage", "3"], "ZeRO-3"),
                          (["--eps", "8", "--confidence", "1.5"], "confidence"),
                          (["--eps", "8", "--delta", "1.5"], "target_delta"),
                          (["--eps", "8", "--num_canaries", "100000000"], "trainable weights"),
                          (["--eps", "8", "--threat_model", "blackbox", "--canary_length", "60", "--max_seq_len",
                            "48"], "tokenizer_max_length")):
        p = run_script("benchmarks/audit_broken_noise.py", "--noise_divisor", "1", *common, *extra,
                       "--output_dir", str(tmp_path / "a"))
        assert_user_error(p, needle)
        assert not (tmp_path / "a").exists()
