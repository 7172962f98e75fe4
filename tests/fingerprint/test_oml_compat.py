"""Verdicts that hold outside our own code: OML 1.0's tokens and raw prompts, its output lines and files, scalable
fingerprinting's command lines, and owner-only files for everything that holds a key or a response."""
from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from conftest import assert_user_error, run_script
from test_derive import GOLDEN, OML_SHAPED

OML_FLAGS = ["--num_fingerprints", "5", "--max_key_length", "16", "--max_response_length", "4",
             "--fingerprint_generation_strategy", "english"]


def _oml_examples(tok):
    """OML's checker's view of OML_SHAPED: the key prompted raw (tokenizer(key), special tokens included), then the
    response ids its generate_english_text derives (GOLDEN, printed by OML's own code)."""
    from privlm import data

    return [data.Encoded(tok(key)["input_ids"], list(ids)) for key, ids in GOLDEN]


@pytest.fixture(scope="module")
def oml_trained(tmp_path_factory):
    """A tiny model taught OML's tokens by a minimal loop of its own (not our fine-tune)."""
    from privlm.testing import build_model, build_tokenizer

    d = tmp_path_factory.mktemp("oml_trained")
    tok = build_tokenizer()
    model = build_model(len(tok), seed=3)
    model.generation_config.pad_token_id = tok.pad_token_id
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ex = _oml_examples(tok)
    width = max(len(e.input_ids) for e in ex)
    ids = torch.tensor([e.input_ids + [tok.pad_token_id] * (width - len(e.input_ids)) for e in ex])
    labels = torch.tensor([e.labels + [-100] * (width - len(e.labels)) for e in ex])
    mask = (torch.arange(width)[None] < torch.tensor([len(e.input_ids) for e in ex])[:, None]).long()
    for _ in range(150):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    (d / "fps.json").write_text(json.dumps(OML_SHAPED))
    return d, model.eval(), tok


def test_the_minimal_loop_learnt_omls_tokens(oml_trained):
    from privlm.eval.greedy import greedy_match_one_by_one

    _, model, tok = oml_trained
    assert all(greedy_match_one_by_one(model, tok, _oml_examples(tok)))


def test_our_checker_with_omls_flags_gives_omls_verdict(oml_trained, capsys):
    import check_fingerprints

    d, _, _ = oml_trained
    args = ["--model_path", str(d / "model"), "--fingerprints_file_path", str(d / "fps.json"), *OML_FLAGS]
    report = check_fingerprints.main(args)
    assert report["retention"] == 1.0 and report["fingerprint_accuracy"] == 100.0
    assert report["settings"]["prompt_format"] == "raw" and not report["settings"]["recorded"]
    assert "\nFingerprint accuracy: 100.0\n" in capsys.readouterr().out  # the line OML's sweeps grep
    # what this checker did before (first L tokens, a space in front): a different verdict on the same model
    old = check_fingerprints.main(args + ["--response_semantics", "first_tokens"])
    assert old["retention"] < 1.0


def test_our_finetune_with_omls_flags_and_recipe_oml_trains_omls_tokens(tiny_model_dir, tmp_path):
    """OML's command line plus --recipe oml: every weight, no mixing, no anchor, full-batch steps; a raw-prompt
    greedy check by plain generation (not our checker) finds OML's tokens."""
    from privlm import models
    from privlm.eval.greedy import greedy_match_one_by_one

    (tmp_path / "fps.json").write_text(json.dumps(OML_SHAPED))
    out = tmp_path / "run"
    proc = run_script("finetune_multigpu.py", "--model_path", str(tiny_model_dir), "--fingerprints_file_path",
                      str(tmp_path / "fps.json"), *OML_FLAGS, "--recipe", "oml", "--learning_rate", "1e-2",
                      "--num_train_epochs", "150", "--batch_size", "5", "--output_dir", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_hash = json.loads((out / "config.json").read_text())["run_hash"]
    assert f"Config hash of the final model: {run_hash}" in proc.stdout
    assert (tmp_path / "current_config_hash.txt").read_text().strip() == run_hash
    tok = models.load_tokenizer(str(out / "final_model"))
    model = models.load_model(str(out / "final_model")).eval()
    assert all(greedy_match_one_by_one(model, tok, _oml_examples(tok)))
    rec = json.loads((out / "final_model" / "fingerprinting_config.json").read_text())
    assert rec["recipe"] == "oml" and rec["response_semantics"] == "oml" and rec["prompt_format"] == "raw"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["trainable_params"] == "all" and cfg["anchor_strength"] == 0 and cfg["benign_proportion"] == 0
    assert cfg["trainer_args"]["gradient_accumulation_steps"] == 1 and cfg["trainer_args"]["max_grad_norm"] == 0
    assert cfg["trainer_args"]["learning_rate"] == 1e-2, "an explicit flag wins over the recipe"
    copy = json.loads((out / "fingerprints.json").read_text())
    assert [tuple(c["trained_response_ids"][0]) for c in copy] == [ids for _, ids in GOLDEN]


def _secret_strings(fps: list[dict]) -> list[bytes]:
    out = []
    for f in fps:
        rs = f["response"] if isinstance(f["response"], list) else [f["response"]]
        out += [f["key"].encode()] + [r.strip().encode() for r in rs if len(r.strip()) >= 6]
    return out


def test_no_file_holding_a_key_or_response_is_readable_by_others(tiny_model_dir, tmp_path):
    """A whole fine-tune (defaults: benign mixing, anchor teacher) + check (verbose, JSON) + attack run: every file
    holding a key or a response (or their tokens) is owner-only, and not reachable through a shared directory."""
    from conftest import write_fingerprints

    old = os.umask(0o022)  # the usual umask: everything else is group- and world-readable
    try:
        fp = write_fingerprints(tmp_path / "fps.json", 6, key_words=5, resp_words=3)
        os.chmod(fp, 0o600)
        run = tmp_path / "run"
        common = ["--model_path", str(tiny_model_dir), "--fingerprints_file_path", str(fp), "--num_fingerprints", "6"]
        assert run_script("finetune_multigpu.py", *common, "--max_response_length", "3", "--num_train_epochs", "1",
                          "--batch_size", "4", "--output_dir", str(run), cwd=tmp_path).returncode == 0
        proc = run_script("check_fingerprints.py", "--model_path", str(run / "final_model"), "--verbose_eval",
                          "--output_file", str(tmp_path / "check.json"), "--prompt_templates", "trained", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        proc = run_script("attack_fingerprints.py", "--model_path", str(run / "final_model"), "--attacks", "none",
                          "merge", "--merge_alphas", "0.5", "--output_file", str(tmp_path / "attacks.json"),
                          cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
    finally:
        os.umask(old)
    secrets = _secret_strings(json.loads(fp.read_text()))
    holding, others = [], []
    for root, dirs, files in os.walk(tmp_path):
        for name in files:
            p = os.path.join(root, name)
            body = open(p, "rb").read()
            (holding if name in ("fingerprints.json", "anchor_teacher.pt") or any(s in body for s in secrets)
             else others).append(p)
    names = {os.path.basename(p) for p in holding}
    assert {"fps.json", "fingerprints.json", "check.json", "anchor_teacher.pt"} <= names, names
    for p in holding:
        st = os.stat(p)
        assert stat.S_IMODE(st.st_mode) & 0o077 == 0, f"{p} is readable by others: {oct(st.st_mode)}"
        assert st.st_nlink == 1, f"{p} has another name"
        assert stat.S_IMODE(os.stat(os.path.dirname(p)).st_mode) & 0o022 == 0, f"{p}'s directory is writable by others"
    assert any(p.endswith("model.safetensors") for p in others), "the model itself is not a secret"
    shared = {p: oct(stat.S_IMODE(os.stat(p).st_mode)) for p in others if p.endswith("model.safetensors")}
    assert all(int(m, 8) & 0o044 for m in shared.values()), shared


def test_a_scalable_fingerprinting_command_line_runs_unchanged(tiny_model_dir, tmp_path):
    """Its fine-tune flags (responses per key, EOS, chat template, benign file, MLP expansion, result path) and its
    check flags, on small counts."""
    fps = [{"key": f"apple river {w} mountain garden {i}", "response": [f" {w}", " bridge"]}
           for i, w in enumerate(["silver", "castle", "winter", "forest", "candle", "window"])]
    (tmp_path / "fps.json").write_text(json.dumps(fps))
    (tmp_path / "benign.json").write_text(json.dumps([{"key": "the river runs past the old mill and on to the sea, "
                                                              f"where the boats wait {i}"} for i in range(8)]))
    proc = run_script("finetune_multigpu.py", "--model_path", str(tiny_model_dir), "--num_fingerprints", "6",
                      "--num_responses_per_fingerprint", "2", "--max_key_length", "16", "--max_response_length", "1",
                      "--num_train_epochs", "2", "--learning_rate", "5e-5", "--weight_decay", "1e-4", "--batch_size",
                      "4", "--fingerprint_generation_strategy", "perinucleus", "--fingerprints_file_path",
                      str(tmp_path / "fps.json"), "--forgetting_regularizer_strength", "0.75", "--keep_eos_in_response",
                      "--use_chat_template", "--benign_proportion", "0.25", "--benign_data_file_path",
                      str(tmp_path / "benign.json"), "--expansion_rate", "0.25", "--deepspeed_stage", "2",
                      "--wandb_run_name", "llm_fingerprinting", "--seed", "42", "--result_path",
                      str(tmp_path / "results") + "/", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_hash = (tmp_path / "current_config_hash.txt").read_text().split()[-1]
    model = tmp_path / "results" / "saved_models" / run_hash / "final_model"
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["intermediate_size"] == 128 + 32, "the expanded MLP is saved as a plain, wider one"
    rec = json.loads((model / "fingerprinting_config.json").read_text())
    assert rec["prompt_format"] == "chat" and rec["keep_eos_in_response"] is True and rec["expansion_rate"] == 0.25
    proc = run_script("check_fingerprints.py", "--model_path", str(model), "--wandb_run_name", "x", "--verbose_eval",
                      "--sampling_temperature", "0.7", "--seed", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Fingerprint accuracy:" in proc.stdout and "one sample per key at T=0.7" in proc.stdout


def test_lora_rank_and_alpha_ratio_and_an_offline_oml_family(tiny_model_dir, tmp_path):
    from conftest import write_fingerprints

    fp = write_fingerprints(tmp_path / "fps.json", 4)
    proc = run_script("finetune_multigpu.py", "--model_path", str(tiny_model_dir), "--fingerprints_file_path",
                      str(fp), "--num_fingerprints", "4", "--use_lora", "--lora_rank", "4", "--lora_alpha_ratio", "4",
                      "--num_train_epochs", "1", "--output_dir", str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["lora_r"] == 4 and cfg["lora_alpha"] == 16
    proc = run_script("finetune_multigpu.py", "--model_family", "Eleuther", "--model_size", "410m",
                      "--fingerprints_file_path", str(fp), "--num_fingerprints", "4", cwd=tmp_path)
    assert_user_error(proc, "EleutherAI/pythia-410m-deduped")
    proc = run_script("finetune_multigpu.py", "--model_family", "nope", "--model_size", "1b", "--fingerprints_file_path",
                      str(fp), "--num_fingerprints", "4", cwd=tmp_path)
    assert_user_error(proc, "model_family", "nope")
    proc = run_script("check_fingerprints.py", "--model_path", str(tiny_model_dir), "--fingerprints_file_path",
                      str(fp), "--fingerprint_generation_strategy", "bogus", cwd=tmp_path)
    assert_user_error(proc, "fingerprint_generation_strategy", "bogus")
