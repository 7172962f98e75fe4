"""The whole Mosaic pipeline on a tiny model through `python -m mosaic`, and bad input at each step."""
import json
from pathlib import Path

import pytest
import torch

from conftest import assert_user_error, run_mosaic


@pytest.fixture(scope="module")
def canaries(tiny_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("mosaic")
    out = d / "canaries.json"
    proc = run_mosaic("canaries", "--model", tiny_model_dir, "--length", "12", "--num_members", "8",
                      "--num_nonmembers", "6", "--batch_size", "32", "--max_jaccard", "0.5", "--output", out)
    assert proc.returncode == 0, proc.stderr
    return out


def test_canaries_have_exactly_l_tokens_and_low_overlap(canaries, tiny, tiny_model_dir):
    _, tok = tiny
    data = json.loads(canaries.read_text())
    assert data["target_tokenizer"] == str(tiny_model_dir)  # what `variations` re-encodes with
    everyone = data["members"] + data["nonmembers"]
    assert len(data["members"]) == 8 and len(data["nonmembers"]) == 6
    sets = []
    for c in everyone:
        assert len(c["token_ids"]) == 12 and tok(c["text"], add_special_tokens=False)["input_ids"] == c["token_ids"]
        s = set(c["token_ids"])
        assert all(len(s & o) / len(s | o) <= 0.5 for o in sets)
        sets.append(s)


def test_pipeline_variations_inject_train_mia(canaries, tiny_model_dir, tmp_path):
    var = tmp_path / "var.json"
    proc = run_mosaic("variations", "--canaries", canaries, "--candidate-gen-strategy", "random",
                      "--num-injection-points", "3", "--num-variations", "4", "--output", var)
    assert proc.returncode == 0, proc.stderr
    corpus = tmp_path / "corpus"
    proc = run_mosaic("inject", "--canaries", canaries, "--groups", "exact:1", "exact:3", f"fuzzy:{var}",
                      "--canaries_per_group", "2", "--book_words", "40", "--num_books", "8", "--output_dir", corpus)
    assert proc.returncode == 0, proc.stderr
    info = json.loads((corpus / "injection.json").read_text())
    books = [json.loads(line)["text"] for line in (corpus / "corpus.jsonl").read_text().splitlines()]
    assert len(books) == 8 and [g["label"] for g in info["groups"]] == ["exact_1", "exact_3", "random_R3"]
    members = {c["id"]: c["text"] for c in json.loads(canaries.read_text())["members"]}
    variations = {c["id"]: [v["text"] for v in c["variations"]] for c in json.loads(var.read_text())["canaries"]}
    for p in info["placements"]:
        n = {"exact_1": 1, "exact_3": 3, "random_R3": 5}[p["group"]]
        assert len(p["copies"]) == n
        texts = [books[p["book"]][c["start"]:c["end"]] for c in p["copies"]]
        expect = [members[p["canary_id"]]] * n if p["group"].startswith("exact") else \
            [members[p["canary_id"]]] + variations[p["canary_id"]]
        assert texts == expect

    proc = run_mosaic("train", "--model", tiny_model_dir, "--corpus", corpus, "--canaries", canaries,
                      "--block_size", "32", "--batch_size", "2", "--learning_rate", "1e-3", "--eval_every", "2",
                      "--deepspeed_stage", "0", "--results_dir", tmp_path / "models", "--run_link", tmp_path / "target")
    assert proc.returncode == 0, proc.stderr
    log = [json.loads(line) for line in (tmp_path / "target" / "auc_log.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 0 and len(log) >= 2 and {"auc/exact_1", "auc/random_R3"} <= set(log[-1])
    assert (tmp_path / "target" / "final_model" / "model.safetensors").is_file()

    out = tmp_path / "mia.json"
    proc = run_mosaic("mia", "--model", tmp_path / "target" / "final_model", "--reference", tiny_model_dir,
                      "--canaries", canaries, "--injection", corpus / "injection.json", "--output", out)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert set(res["attacks"]) == {"loss", "ratio", "zlib", "lowercase", "min_k", "min_k_pct", "min_kpp"}
    for e in res["attacks"].values():
        assert 0 <= e["all"]["auc"] <= 1 and set(e["groups"]) == {"exact_1", "exact_3", "random_R3"}
        assert {"tpr@0.001fpr", "tpr@0.01fpr", "tpr@0.1fpr"} <= set(e["all"])
        for r in [e["all"], *e["groups"].values()]:  # every AUC and TPR with its 95% interval
            assert r["auc_ci"][0] <= r["auc"] <= r["auc_ci"][1] and all(t["ci"] for t in r["tpr_at_fpr"])
    rows = {g["name"]: g for g in res["groups"]}  # one row per group of the rho attack, non-members included
    assert res["groups_attack"] == "ratio" and res["pooled"] is True
    assert {k: (r["kind"], r["repetitions"]) for k, r in rows.items()} == {
        "exact_1": ("exact", 1), "exact_3": ("exact", 3), "random_R3": ("fuzzy", 1 + len(variations[0])),
        "nonmembers": ("nonmember", 0)}
    assert rows["exact_3"]["auc"] == res["attacks"]["ratio"]["groups"]["exact_3"]["auc"]
    assert rows["exact_3"]["auc_ci"][0] <= rows["exact_3"]["auc"] <= rows["exact_3"]["auc_ci"][1]
    variants = json.loads((tmp_path / "mia_variants.json").read_text())
    assert variants["random_R3"]["copies"] == 1 + len(variations[0])
    exact = json.loads((tmp_path / "mia_exact.json").read_text())
    assert set(exact) == {"1", "3"} and exact["3"] == res["attacks"]["ratio"]["groups"]["exact_3"]["auc"]
    assert (tmp_path / "mia.roc.png").stat().st_size > 0
    proc = run_mosaic("rho", "--exact", tmp_path / "mia_exact.json", "--variants", tmp_path / "mia_variants.json",
                      "--output", tmp_path / "rho.json")
    assert proc.returncode == 0, proc.stderr
    rho = json.loads((tmp_path / "rho.json").read_text())["random_R3"]
    assert rho["copies"] == 1 + len(variations[0]) and isinstance(rho["extrapolated"], bool)
    boot = json.loads((tmp_path / "mia_bootstrap.json").read_text())  # the replicates rho_ci comes from
    assert set(boot["exact"]) == {"1", "3"} and len(boot["variants"]["random_R3"]) == 1000
    assert rho["auc_ci"][0] <= rho["auc"] <= rho["auc_ci"][1]
    assert rho["rho"] is None or rho["rho_ci"] is None or rho["rho_ci"][0] <= rho["rho_ci"][1]
    proc = run_mosaic("plot", "--mia", out, "--rho", tmp_path / "rho.json", "--output_dir", tmp_path / "fig")
    assert proc.returncode == 0 and (tmp_path / "fig" / "roc.png").is_file() and (tmp_path / "fig" / "rho.png").is_file()


def test_bad_input_is_one_error_line_and_writes_nothing(canaries, tiny_model_dir, tmp_path):
    out = tmp_path / "x.json"
    assert_user_error(run_mosaic("canaries", "--model", tiny_model_dir, "--length", "300", "--output", out),
                      "longer than the model context")
    assert_user_error(run_mosaic("variations", "--canaries", canaries, "--candidate-gen-strategy", "synonyms",
                                 "--output", out), "candidate_gen_strategy")
    bad = tmp_path / "bad.json"
    bad.write_text('{"members": [')
    assert_user_error(run_mosaic("variations", "--canaries", bad, "--output", out), str(bad))
    assert_user_error(run_mosaic("mia", "--canaries", bad, "--model", tiny_model_dir, "--output", out), str(bad))
    assert_user_error(run_mosaic("mia", "--attacks", "loss", "telepathy", "--output", out), "telepathy")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert_user_error(run_mosaic("inject", "--canaries", canaries, "--corpus", empty, "--output_dir",
                                 tmp_path / "corpus"), "empty.jsonl")
    assert_user_error(run_mosaic("inject", "--canaries", canaries, "--groups", "exact:0", "twice",
                                 "--output_dir", tmp_path / "corpus"), "exact:0", "twice")
    assert not out.exists() and not (tmp_path / "corpus").exists()
    proc = run_mosaic("nonsense")
    assert proc.returncode == 2 and "unknown step" in proc.stderr


def test_train_resumes_mid_epoch_after_a_kill_and_ends_where_an_unbroken_run_ends(canaries, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from conftest import kill_after_first_checkpoint

    corpus = tmp_path / "corpus"
    proc = run_mosaic("inject", "--canaries", canaries, "--groups", "exact:2", "--canaries_per_group", "4",
                      "--book_words", "60", "--output_dir", corpus)
    assert proc.returncode == 0, proc.stderr
    common = ["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--canaries", str(canaries),
              "--block_size", "16", "--batch_size", "2", "--learning_rate", "1e-3", "--eval_every", "0",
              "--deepspeed_stage", "0", "--save_every_steps", "3", "--lr_scheduler", "constant"]
    broken = tmp_path / "broken"
    kill_after_first_checkpoint("mosaic/__main__.py", common + ["--results_dir", str(broken)], broken,
                                "*/checkpoints/latest")
    assert not list(broken.glob("*/final_model"))
    proc = run_mosaic(*common, "--results_dir", broken)
    assert proc.returncode == 0, proc.stderr
    (run,) = broken.glob("*/final_model")
    log = [json.loads(line) for line in (run.parent / "log.txt").read_text().splitlines()]
    assert any(r.get("event") == "resume" and r["step_in_epoch"] >= 3 for r in log)
    proc = run_mosaic(*common, "--results_dir", tmp_path / "whole")
    assert proc.returncode == 0, proc.stderr
    (whole,) = (tmp_path / "whole").glob("*/final_model")
    a, b = load_file(run / "model.safetensors"), load_file(whole / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_sweep_trains_one_target_per_setting_and_seed_and_resumes(canaries, tiny_model_dir, tmp_path):
    var = tmp_path / "var.json"
    proc = run_mosaic("variations", "--canaries", canaries, "--candidate-gen-strategy", "random",
                      "--num-injection-points", "3", "--num-variations", "2", "--output", var)
    assert proc.returncode == 0, proc.stderr
    common = ["--canaries", canaries, "--canaries_per_group", "4", "--book_words", "30", "--reference", tiny_model_dir,
              "--train_args", f"--model {tiny_model_dir} --block_size 32 --batch_size 2 --learning_rate 1e-3 "
                              "--eval_every 0 --deepspeed_stage 0", "--output_dir", tmp_path / "sweep"]
    proc = run_mosaic("sweep", "--settings", "exact:1", "exact:3", f"fuzzy:{var}", "--seeds", "0", *common)
    assert proc.returncode == 0, proc.stderr
    res = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert res["pooled"] is False and [r["name"] for r in res["settings"]] == ["exact_1", "exact_3", "random_R3"]
    for r in res["settings"]:  # one model each: its own run folder, its injection holds only its group
        d = Path(r["seeds"][0]["run"]).parent
        groups = json.loads((d / "corpus" / "injection.json").read_text())["groups"]
        assert [g["label"] for g in groups] == [r["name"]] and (d / "target" / "final_model").is_dir()
        mia = json.loads((d / "mia.json").read_text())
        assert mia["pooled"] is False and r["seeds"][0]["auc"] == r["auc_mean"] == next(
            g["auc"] for g in mia["groups"] if g["name"] == r["name"])
    assert {r["name"]: r["copies"] for r in res["settings"]} == {"exact_1": 1, "exact_3": 3, "random_R3": 3}
    assert json.loads((tmp_path / "sweep" / "sweep_variants.json").read_text())["random_R3"]["copies"] == 3
    rho = json.loads((tmp_path / "sweep" / "rho.json").read_text())["random_R3"]
    assert rho["copies"] == 3 and "rho_ci" in rho
    done = (tmp_path / "sweep" / "exact_1_s0" / "mia.json").stat().st_mtime_ns
    proc = run_mosaic("sweep", "--settings", "exact:1", "--seeds", "0", "1", *common)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "sweep" / "exact_1_s0" / "mia.json").stat().st_mtime_ns == done  # seed 0 not redone
    r = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["settings"][0]
    aucs = [s["auc"] for s in r["seeds"]]
    assert len(aucs) == 2 and r["auc_mean"] == pytest.approx(sum(aucs) / 2)
    assert r["auc_mean_ci"] is not None and r["auc_mean_ci"][0] <= r["auc_mean"] <= r["auc_mean_ci"][1]


def test_sweep_refuses_bad_settings_in_one_line(canaries, tmp_path):
    proc = run_mosaic("sweep", "--settings", "exact:0", "--seeds", "1", "1", "--canaries", canaries,
                      "--output_dir", tmp_path / "s")
    assert_user_error(proc, "settings:", "seeds:")
    assert not (tmp_path / "s").exists()
