"""sample.py: Type B (unconditional samples) and Type D (answers to instructions) from base model + adapter."""
import json

import pytest

from conftest import assert_user_error, run_script


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    from privlm.models import load_model

    d = tmp_path_factory.mktemp("adapter")
    get_peft_model(load_model(str(tiny_model_dir)), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(d)
    return d


def test_type_b_and_d(tmp_path, tiny_model_dir, adapter_dir):
    out_b = tmp_path / "b.jsonl"
    p = run_script("sample.py", "--model_name", str(tiny_model_dir), "--adapter_path", str(adapter_dir),
                   "--num_samples", "5", "--batch_size", "2", "--max_seq_len", "6", "--output_file", str(out_b))
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [json.loads(line) for line in out_b.read_text().splitlines()]
    assert len(rows) == 5 and all(set(r) == {"text"} for r in rows)
    instr = tmp_path / "instr.txt"
    instr.write_text("Name a color.\n\nWhat is two plus two?\n")
    out_d = tmp_path / "d.jsonl"
    p = run_script("sample.py", "--model_name", str(tiny_model_dir), "--adapter_path", str(adapter_dir),
                   "--prompt_style", "vicuna", "--instruction_file", str(instr), "--max_seq_len", "6",
                   "--output_file", str(out_d))
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [json.loads(line) for line in out_d.read_text().splitlines()]
    assert [r["instruction"] for r in rows] == ["Name a color.", "What is two plus two?"]
    assert_user_error(run_script("sample.py", "--model_name", str(tiny_model_dir), "--output_file", str(out_d)),
                      "already exists")


def test_bad_input(tmp_path, tiny_model_dir):
    out = tmp_path / "x.jsonl"
    assert_user_error(run_script("sample.py", "--prompt_style", "vicuna", "--top_p", "2", "--output_file", str(out)),
                      "instruction_file", "top_p")
    assert_user_error(run_script("sample.py", "--model_name", str(tiny_model_dir), "--adapter_path", str(tmp_path),
                                 "--output_file", str(out)), "no LoRA adapter")
    assert not out.exists()
