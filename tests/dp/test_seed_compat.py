"""The seeds' own configs and command lines, unchanged but shrunk by flags or overrides: seed 001's YAML files
(sections, HF TrainingArguments keys, a DeepSpeed JSON path, ner_args) and seed 004's Type A-D commands
(--job_sess, --no_eval_at_start, --eps -1, --clip, save_to_disk datasets named labelled_*)."""
import json

import pandas as pd
import pytest

from conftest import ROOT, assert_user_error, run_script


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working directory as the seeds expect one: data/ with local exports, configs/ from the repo."""
    d = tmp_path_factory.mktemp("seedwork")
    (d / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    echr = d / "data" / "echr"
    echr.mkdir(parents=True)
    facts = [[f"The applicant, Mr John Doe {i}, was born in 19{50 + i} and lives in Town {i}.",
              f"On {i + 1} March 2001 the court in City {i} dismissed the appeal."] for i in range(12)]
    pd.DataFrame({"facts": facts[:10], "labels": [[]] * 10}).to_parquet(echr / "train.parquet")
    pd.DataFrame({"facts": facts[10:], "labels": [[]] * 2}).to_parquet(echr / "validation.parquet")
    import datasets

    rows = [{"instruction": f"Name colour {i}.", "answer": f"Colour {i} is blue."} for i in range(24)]
    datasets.DatasetDict({s: datasets.Dataset.from_list(rows[a:b]) for s, (a, b) in
                          {"train": (0, 16), "val": (16, 20), "test": (20, 24)}.items()}
                         ).save_to_disk(str(d / "data" / "labelled_real_arena180k"))
    datasets.Dataset.from_list([{"instruction": f"Write about topic number {i}."} for i in range(20)]).save_to_disk(
        str(d / "data" / "chatbot_arena_instructions_train180k"))
    (d / "utils").mkdir()
    (d / "utils" / "syn_instruct.txt").write_text("Write a poem.\nName a fruit.\n")
    (d / "utils" / "alpaca_eval_instructions.txt").write_text("What is two plus two?\nName a colour.\n")
    return d


def test_seed001_configs_run_unchanged_but_shrunk(workdir, tiny_model_dir):
    shrink = [f"model_args.architecture={tiny_model_dir}", "model_args.tokenizer_max_length=48",
              "trainer_args.num_train_epochs=1", "trainer_args.bf16=false"]
    cfg = ROOT / "configs" / "dp" / "seed001" / "echr-llama2-7b-undefended.yml"
    p = run_script("dp_finetune.py", "--config_path", str(cfg), *shrink, cwd=workdir)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "accepted and ignored" in p.stderr and "save_total_limit" in p.stderr
    assert p.stderr.count("accepted and ignored") == 1
    out = workdir / "results" / "seed001" / "echr-llama2-7b-undefended"
    m = json.loads((out / "metrics.json").read_text())
    assert m["dataset_size"] == 20, "one record per fact paragraph of the train split"
    assert m["eval"]["pii_extraction"]["n"] == 0 and m["eval"]["heldout_loss"] > 0
    assert json.loads((out / "config.json").read_text())["trainer_args"]["deepspeed"] == \
        "configs/deepspeed/zero2.json"
    # scrubbed: Flair's name maps to Presidio; the list-of-paragraphs field is scrubbed element by element
    cfg = ROOT / "configs" / "dp" / "seed001" / "echr-llama2-7b-scrubbed.yml"
    p = run_script("dp_finetune.py", "--config_path", str(cfg), *shrink, "dataset_args.deny_list=null", cwd=workdir)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "mapped to Presidio" in p.stdout
    m = json.loads((workdir / "results" / "seed001" / "echr-llama2-7b-scrubbed" / "metrics.json").read_text())
    assert m["scrub"]["entities"].get("DATE_TIME", 0) >= 10 and m["scrub"]["texts"] == 20  # every "N March 2001"
    # the DP file: ZeRO-3 DP full fine-tuning (peft none) in bf16, launched as the seed does, on 2 CPU ranks
    cfg = ROOT / "configs" / "dp" / "seed001" / "echr-llama2-7b-dp8.yml"
    p = run_script("dp_finetune.py", "--config_path", str(cfg), *shrink[:3], launcher="deepspeed", ranks=2,
                   cwd=workdir)
    assert p.returncode == 0, p.stderr[-3000:]
    out = workdir / "results" / "seed001" / "echr-llama2-7b-dp8"
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["noise_source"] == "secure" and 0 < m["privacy"]["epsilon"] <= 8.0
    assert json.loads((out / "config.json").read_text())["trainer_args"]["bf16"] is True
    assert (out / "final_model" / "model.safetensors").is_file()  # full weights gathered from the ZeRO-3 shards
    p = run_script("dp_finetune.py", "--config_path", str(cfg), "trainer_args.num_train_epochs=lots",
                   "model_args.pre_trained=maybe", cwd=workdir)
    assert_user_error(p, "num_train_epochs", "pre_trained")


def test_seed004_types_a_to_d_as_written_but_shrunk(workdir, tiny_model_dir):
    small = ["--max_steps", "2"]
    # Type A without DP, then with DP (the seed's flags; dataset, model and steps shrunk)
    a = run_script("dp_finetune.py", "--dataset_name", "chatbot_arena_instructions_train180k", "--model_name",
                   str(tiny_model_dir), "--job_sess", "debug", "--eps", "-1", "--perdevice_bs", "4", "--gpus", "1",
                   "--max_seq_len", "32", "--total_bs", "8", "--num_epochs", "3", "--prompt_style",
                   "uncond_generation", "--no_eval_at_start", *small, cwd=workdir)
    assert a.returncode == 0, a.stderr[-3000:]
    assert (workdir / "outputs" / "debug" / "final_model" / "adapter_config.json").is_file()
    a_dp = run_script("dp_finetune.py", "--dataset_name", "chatbot_arena_instructions_train180k", "--model_name",
                      str(tiny_model_dir), "--job_sess", "debug_dp", "--eps", "2.86", "--delta", "5e-7",
                      "--perdevice_bs", "4", "--gpus", "1", "--max_seq_len", "32", "--total_bs", "8", "--num_epochs",
                      "10", "--prompt_style", "uncond_generation", "--lr", "1e-3", "--clip", "0.5",
                      "--no_eval_at_start", *small, cwd=workdir)
    assert a_dp.returncode == 0, a_dp.stderr[-3000:]
    m = json.loads((workdir / "outputs" / "debug_dp" / "metrics.json").read_text())
    assert m["privacy"]["steps"] == 2 and m["privacy"]["max_grad_norm"] == 0.5 and m["noise_source"] == "secure"
    # Type B: sample from the Type A adapter
    b = run_script("sample.py", "--instruction_file", "utils/syn_instruct.txt", "--model_name", str(tiny_model_dir),
                   "--adapter_path", "outputs/debug/final_model", "--job_sess", "debug", "--max_seq_len", "8",
                   "--top_p", "0.95", "--prompt_style", "uncond_generation", "--num_samples", "3", cwd=workdir)
    assert b.returncode == 0, b.stderr[-3000:]
    assert len((workdir / "inference_outputs" / "debug" / "samples.jsonl").read_text().splitlines()) == 3
    # Type C: supervised pairs from a labelled_* DatasetDict (train / val / test), vicuna prompt, DP
    c = run_script("dp_finetune.py", "--dataset_name", "labelled_real_arena180k", "--model_name", str(tiny_model_dir),
                   "--job_sess", "debug_c", "--eps", "5.94", "--delta", "5e-7", "--perdevice_bs", "2", "--gpus", "1",
                   "--max_seq_len", "48", "--total_bs", "8", "--num_epochs", "10", "--prompt_style", "vicuna",
                   "--lr", "1e-3", "--clip", "1.0", *small, cwd=workdir)
    assert c.returncode == 0, c.stderr[-3000:]
    assert json.loads((workdir / "outputs" / "debug_c" / "metrics.json").read_text())["dataset_size"] == 16
    # Type D: answer instructions with the Type C adapter
    d = run_script("sample.py", "--instruction_file", "utils/alpaca_eval_instructions.txt", "--model_name",
                   str(tiny_model_dir), "--adapter_path", "outputs/debug_c/final_model", "--job_sess", "debug",
                   "--max_seq_len", "8", "--top_p", "0.95", "--prompt_style", "vicuna", cwd=workdir)
    assert d.returncode == 0, d.stderr[-3000:]
    rows = [json.loads(x) for x in (workdir / "inference_outputs" / "debug" / "responses.jsonl").read_text().splitlines()]
    assert [r["instruction"] for r in rows] == ["What is two plus two?", "Name a colour."]
    # --clip -1 means no clipping: accepted without DP, refused with it
    assert_user_error(run_script("dp_finetune.py", "--dataset_name", "labelled_real_arena180k", "--eps", "8",
                                 "--clip", "-1", cwd=workdir), "max_grad_norm_dp")


def test_scrubbing_covers_every_field_shape_or_refuses():
    from privlm.dp import scrub
    from privlm.errors import UserError

    recs = [{"instruction": "Mail jane@example.com today", "answer": "Call 555-123-4567",
             "facts": ["Born on 3 March 1970.", "Lives at 1.2.3.4"],
             "conversation": [{"role": "user", "content": "my mail is bob@example.org"}]}]
    out, rep = scrub.scrub(recs, ["instruction", "answer", "facts", "conversation"], ner="none")
    flat = json.dumps(out)
    for secret in ("jane@example.com", "555-123-4567", "3 March 1970", "bob@example.org"):
        assert secret not in flat, secret
    assert isinstance(out[0]["facts"], list) and out[0]["conversation"][0]["role"] == "user"
    assert recs[0]["instruction"] == "Mail jane@example.com today", "inputs are not modified"
    with pytest.raises(UserError, match="field 'answer' is a int"):
        scrub.scrub([{"answer": 3}], ["answer"], ner="none")
