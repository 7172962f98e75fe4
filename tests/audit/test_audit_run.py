"""`python -m privlm.audit run` end to end on the tiny model: an undefended run that memorises its canaries gives a
positive epsilon lower bound; a DP run never gives a lower bound above its accountant's epsilon (fixed seed under
--reproducible_noise: at 95% confidence this could fail by chance 5% of the time with fresh noise); a finished audit
is not redone; bad input writes nothing."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT, assert_user_error, child_env

COMMON = ["--dataset_path", "synthetic:16", "--max_seq_len", "48", "--canary_length", "16", "--peft", "none"]


def audit(*args):
    return subprocess.run([sys.executable, "-m", "privlm.audit", "run", *args], capture_output=True, text=True,
                          cwd=ROOT, env=child_env(), timeout=900)


@pytest.fixture(scope="module")
def undefended(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("audit") / "undefended"
    args = ["--model_path", str(tiny_model_dir), *COMMON, "--num_canaries", "200", "--canary_repeats", "4",
            "--num_epochs", "6", "--lr", "3e-3", "--output_dir", str(out)]
    p = audit(*args)
    assert p.returncode == 0, p.stderr[-3000:]
    return out, args, p


def test_undefended_run_leaks_a_positive_epsilon(undefended):
    out, _, p = undefended
    a = json.loads((out / "audit.json").read_text())
    assert a["epsilon_lower_bound"] > 0.5 and a["epsilon_upper_bound"] is None and a["mode"] == "undefended"
    assert a["num_canaries"] == 200 and 0 < a["num_guesses"] <= 200 and a["num_correct"] <= a["num_guesses"]
    assert a["auc_ci"][0] <= a["auc"] <= a["auc_ci"][1] and a["auc_ci"][0] > 0.5
    assert [t["fpr"] for t in a["tpr_at_fpr"]] == [0.01, 0.1] and all(t["ci"] for t in a["tpr_at_fpr"])
    assert (out / "roc.png").stat().st_size > 1000 and (out / "train" / "metrics.json").is_file()
    canaries = [json.loads(x) for x in (out / "canaries.jsonl").read_text().splitlines()]
    assert len(canaries) == 200 and a["num_members"] == sum(c["member"] for c in canaries)
    assert f"eps_lb {a['epsilon_lower_bound']:.3f}" in p.stdout


def test_a_finished_audit_is_not_retrained(undefended):
    out, args, _ = undefended
    before = json.loads((out / "audit.json").read_text())
    p = audit(*args)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "dp-sgd" not in p.stderr and "fine-tune:" not in p.stderr  # training skipped: the run is finished
    assert "audit already finished" in p.stdout and "target:" not in p.stderr  # nor scored again
    assert json.loads((out / "audit.json").read_text())["epsilon_lower_bound"] == before["epsilon_lower_bound"]


def test_dp_run_lower_bound_stays_below_its_epsilon(tmp_path, tiny_model_dir):
    out = tmp_path / "dp"
    p = audit("--model_path", str(tiny_model_dir), *COMMON, "--num_canaries", "100", "--num_epochs", "2",
              "--lr", "3e-3", "--eps", "2", "--reproducible_noise", "--output_dir", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    a = json.loads((out / "audit.json").read_text())
    assert a["noise_source"] == "seeded" and 0 < a["epsilon_upper_bound"] <= 2.0
    assert a["epsilon_lower_bound"] <= a["epsilon_upper_bound"]
    assert a["delta"] == json.loads((out / "train" / "metrics.json").read_text())["privacy"]["delta"]


def test_bad_audit_input_writes_nothing(tmp_path, tiny_model_dir):
    for extra, needle in ((["--num_canaries", "1", "--attack", "nope"], "attack"),
                          (["--eps", "8", "--delta", "0.5"], "target_delta")):
        p = audit("--model_path", str(tiny_model_dir), *COMMON, *extra, "--output_dir", str(tmp_path / "a"))
        assert_user_error(p, needle)
        assert not (tmp_path / "a").exists()
