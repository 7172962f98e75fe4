"""The DP front door: every privacy setting checked against the data before any model is loaded, and the plan's
step count equal to the steps the training loop takes."""
import json

import pytest

from conftest import assert_user_error, run_script
from privlm.dp import accountant
from privlm.dp.plan import PrivacyArgs, make_private
from privlm.errors import UserError


def test_plan_calibrates_sigma_for_the_loop_steps():
    plan = make_private(PrivacyArgs(target_epsilon=8), dataset_size=48, batch_size=16, epochs=7)
    assert plan.sample_rate == pytest.approx(1 / 3) and plan.steps_per_epoch == 3 and plan.steps == 21
    assert plan.delta == pytest.approx(1 / 96)
    eps = accountant.epsilon(plan.noise_multiplier, plan.sample_rate, plan.steps, plan.delta)
    assert 7.9 < eps <= 8.0, "sigma spends the whole budget over exactly the planned steps"
    half = make_private(PrivacyArgs(target_epsilon=8), dataset_size=48, batch_size=16, epochs=7, max_steps=10)
    assert half.steps == 10 and half.noise_multiplier < plan.noise_multiplier
    given = make_private(PrivacyArgs(noise_multiplier=1.0), dataset_size=100, batch_size=10, epochs=1)
    assert given.noise_multiplier == 1.0 and given.target_epsilon is None


@pytest.mark.parametrize("kwargs,needle", [
    (dict(privacy=PrivacyArgs(target_epsilon=8, target_delta=0.05)), "must be < 1/N"),
    (dict(grad_accum=4), "gradient_accumulation_steps"),
    (dict(max_grad_norm=1.0), "max_grad_norm"),
    (dict(privacy=PrivacyArgs(target_epsilon=8, max_grad_norm_dp=0)), "max_grad_norm_dp"),
])
def test_plan_refuses_bad_settings(kwargs, needle):
    args = dict(privacy=PrivacyArgs(target_epsilon=8), dataset_size=48, batch_size=16, epochs=1)
    args.update(kwargs)
    with pytest.raises(UserError, match=needle):
        make_private(args.pop("privacy"), **args)


def test_bad_privacy_fails_fast_before_any_model_or_scrubbing(tmp_path):
    """The model path does not exist: if anything were loaded first, that would be the error."""
    for extra, needle in ((["--delta", "0.5"], "target_delta"),
                          (["--eps", "0"], "target_epsilon"), (["--clip", "-1"], "max_grad_norm_dp")):
        p = run_script("dp_finetune.py", "--model_path", str(tmp_path / "no_model"), "--dataset_path", "synthetic:16",
                       "--dataset_mode", "scrubbed", "--eps", "8", *extra, "--results_dir", str(tmp_path / "r"))
        assert_user_error(p, needle)
        assert "model path not found" not in p.stderr and "scrubbed" not in p.stdout
        assert not (tmp_path / "r").exists()


def test_privacy_report_goes_through_the_same_budget_code():
    p = run_script("dp_finetune.py", "--privacy_report", "--noise_multiplier", "1.0", "--sample_rate", "0.01",
                   "--steps", "1000", "--delta", "1e-5")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["epsilon"] == pytest.approx(accountant.epsilon(1.0, 0.01, 1000, 1e-5), rel=1e-6)
    p = run_script("dp_finetune.py", "--privacy_report", "--target_epsilon", "8", "--sample_rate", "0.01",
                   "--steps", "1000", "--delta", "1e-5")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["target_epsilon"] == 8 and 0.5 < out["noise_multiplier"] < 1.0
