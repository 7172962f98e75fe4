"""The attack suite on a fingerprinted tiny model: each attack's row, the invariants that pin them down (merging
with alpha 0 changes nothing and alpha 1 is the base; sampling at a vanishing temperature is greedy decoding),
and bad input (one error line, exit 2, nothing written)."""
import copy
import importlib.util
import json

import pytest
import torch

from conftest import assert_user_error, run_script, write_fingerprints
from privlm.fingerprint import attacks


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
    return d / "run" / "final_model"


def test_every_attack_gives_rows_with_intervals(tmp_path, fingerprinted):
    out = tmp_path / "attacks.json"
    proc = run_script("attack_fingerprints.py", "--model_path", str(fingerprinted), "--attacks", "none", "merge",
                      "sampling", "system_prompts", "quantize_int8", "quantize_int4", "sft", "--merge_alphas", "0", "1",
                      "--sampling", "0.0001:1.0", "1.5:1.0", "--num_samples", "3", "--sft_steps", "1", "3",
                      "--sft_batch_size", "2", "--seed", "0", "--output_file", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {(r["attack"], str(r["param"])): r for r in report["rows"]}
    none = rows[("none", "None")]["retention"]
    assert none >= 0.75, none
    assert rows[("merge", "0.0")]["retention"] == none  # alpha 0: the fingerprinted model itself
    assert rows[("merge", "1.0")]["retention"] <= 0.25  # alpha 1: the base model, which never saw the keys
    assert rows[("sampling", "T=0.0001 top_p=1 k=3")]["retention"] == none  # a vanishing temperature is greedy
    assert {a for a, _ in rows} == {"none", "merge", "sampling", "system_prompts", "quantize_int8", "quantize_int4",
                                    "sft"}
    assert [p for a, p in rows if a == "sft"] == ["1", "3"]
    assert sum(a == "system_prompts" for a, _ in rows) == 7  # six unseen system prompts and the pooled row
    for r in report["rows"]:
        lo, hi = r["retention_ci"]
        assert 0 <= lo <= r["retention"] <= hi <= 1 and r["num_fingerprints"] == 8
    assert report["seeded"] is True and out.with_suffix(".png").is_file()


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
])
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, fingerprinted, args, needle):
    out = tmp_path / "r.json"
    proc = run_script("attack_fingerprints.py", "--model_path", str(fingerprinted), *args, "--output_file", str(out))
    assert_user_error(proc, needle)
    assert proc.returncode == 2 and not out.exists() and not out.with_suffix(".png").exists()
