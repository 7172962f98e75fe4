"""Bad input to the entry scripts: one clear error line, non-zero exit, nothing written, no traceback."""
import json

import pytest

from conftest import assert_user_error, run_script, write_fingerprints


@pytest.fixture
def fp_file(tmp_path):
    return write_fingerprints(tmp_path / "fp.json", 8)


def finetune(tmp_path, tiny_model_dir, fp, *extra):
    return run_script("finetune_multigpu.py", "--model_path", str(tiny_model_dir), "--fingerprints_file_path", str(fp),
                      "--num_fingerprints", "4", "--results_dir", str(tmp_path / "results"), *extra)


@pytest.mark.parametrize("content,needle", [
    ("[{\"key\": \"a\", ", "not valid JSON"),
    ("[]", "holds no fingerprints"),
    ("[{\"key\": \"a\"}, {\"key\": \"b\", \"response\": \"c\"}]", "has no \"response\""),
])
def test_finetune_rejects_bad_fingerprint_files(tmp_path, tiny_model_dir, content, needle):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    proc = finetune(tmp_path, tiny_model_dir, bad)
    assert_user_error(proc, needle, str(bad))
    assert not (tmp_path / "results").exists()


def test_finetune_rejects_too_many_fingerprints_missing_model_unknown_flag(tmp_path, tiny_model_dir, fp_file):
    assert_user_error(finetune(tmp_path, tiny_model_dir, fp_file, "--num_fingerprints", "9"), "fewer than the 9")
    assert_user_error(finetune(tmp_path, tmp_path / "no_such_model", fp_file), "model path not found")
    assert_user_error(finetune(tmp_path, tiny_model_dir, fp_file, "--learning_rat", "1e-4"), "--learning_rat")
    proc = finetune(tmp_path, tiny_model_dir, fp_file, "--deepspeed_stage", "5", "--num_train_epochs", "0")
    assert_user_error(proc, "deepspeed_stage", "num_train_epochs")  # every bad key in one line
    assert not (tmp_path / "results").exists()


def test_check_rejects_bad_input(tmp_path, tiny_model_dir, fp_file):
    out = tmp_path / "report.json"
    proc = run_script("check_fingerprints.py", "--model_path", str(tiny_model_dir), "--output_file", str(out))
    assert_user_error(proc, "--fingerprints_file_path is required")
    proc = run_script("check_fingerprints.py", "--model_path", str(tiny_model_dir), "--fingerprints_file_path",
                      str(fp_file), "--num_fingerprints", "50", "--output_file", str(out))
    assert_user_error(proc, "fewer than the 50")
    assert not out.exists()


def test_generate_refuses_to_overwrite_and_rejects_bad_keys(tmp_path, tiny_model_dir):
    out = tmp_path / "fps.json"
    out.write_text("keep me")
    args = ["--model_used_for_key_generation", str(tiny_model_dir), "--num_fingerprints", "4", "--key_length", "6",
            "--response_length", "3", "--key_response_strategy", "random_word", "--output_file_path", str(out)]
    assert_user_error(run_script("generate_finetuning_data.py", *args), "already exists", "--overwrite")
    assert out.read_text() == "keep me"
    proc = run_script("generate_finetuning_data.py", *args, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    fps = json.loads(out.read_text())
    assert len(fps) == 4 and len({f["key"] for f in fps}) == 4
    assert out.stat().st_mode & 0o777 == 0o600  # the keys are the owner's secret
    keys = tmp_path / "keys.json"
    keys.write_text('{"not": "a list"}')
    out2 = tmp_path / "fps2.json"
    proc = run_script("generate_finetuning_data.py", *args[:-1], str(out2), "--keys_file", str(keys))
    assert_user_error(proc, "keys file")
    assert not out2.exists()
    proc = run_script("generate_finetuning_data.py", "--key_response_strategy", "nonsense", "--output_file_path",
                      str(out2))
    assert_user_error(proc, "key_response_strategy")
