"""The DeepSpeed training loop: real two-rank launches on CPU, the forgetting regularizer under ZeRO-2/3,
resume after a kill, skipping finished runs, and the run hash."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import kill_after_first_checkpoint, run_script, write_fingerprints


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    sd = load_file(str(model_dir / "model.safetensors"))
    return {k: v.float() for k, v in sd.items() if k != "lm_head.weight"}  # tied to the embedding


def run_dir_of(results: Path) -> Path:
    (d,) = [p for p in (results / "saved_models").iterdir() if p.is_dir()]
    return d


def train_args(model_dir, fp, results, *extra):
    return ["--model_path", str(model_dir), "--fingerprints_file_path", str(fp), "--num_fingerprints", "8",
            "--max_key_length", "8", "--max_response_length", "3", "--batch_size", "2", "--learning_rate", "5e-3",
            "--lr_scheduler", "constant", "--prompt_format", "raw", "--benign_proportion", "0",
            "--trainable_params", "all", "--anchor_strength", "0",
            "--results_dir", str(results), *extra]


@pytest.mark.parametrize("stage", [2, 3])
def test_regularizer_lands_in_saved_weights_two_ranks(tmp_path, tiny_model_dir, stage):
    """lambda=1 after the last epoch gives back the base weights; lambda=0.5 gives the midpoint of base and the
    un-regularized run. Both under real two-rank ZeRO, where the optimizer's fp32 master weights would overwrite
    an averaging applied to the model's weights alone."""
    fp = write_fingerprints(tmp_path / "fp.json", 8)
    base = weights(tiny_model_dir)
    final = {}
    for lam in ("0.0", "1.0", "0.5"):
        results = tmp_path / f"lam{lam}"
        proc = run_script("finetune_multigpu.py", *train_args(tiny_model_dir, fp, results, "--num_train_epochs", "1",
                          "--deepspeed_stage", str(stage), "--forgetting_regularizer_strength", lam),
                          launcher="deepspeed", ranks=2)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        rd = run_dir_of(results)
        final[lam] = weights(rd / "final_model")
        assert json.loads((rd / "metrics.json").read_text())["world_size"] == 2
    moved = max((final["0.0"][k] - base[k]).abs().max().item() for k in base)
    assert moved > 1e-3, "training changed the weights"
    for k in base:
        torch.testing.assert_close(final["1.0"][k], base[k], rtol=0, atol=1e-7)
        torch.testing.assert_close(final["0.5"][k], 0.5 * (base[k] + final["0.0"][k]), rtol=0, atol=1e-6)
    # the saved folder is a normal HF model
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(run_dir_of(tmp_path / "lam0.5") / "final_model")
    assert m.model.embed_tokens.weight.data_ptr() == m.lm_head.weight.data_ptr() or torch.equal(
        m.model.embed_tokens.weight, m.lm_head.weight)


@pytest.mark.parametrize("stage", [2, 3])
def test_only_the_trainable_set_moves(tmp_path, tiny_model_dir, stage):
    """--trainable_params mlp (the default) under two-rank ZeRO: every feed-forward weight may move, everything
    else (embeddings and the tied head, attention, norms) is bit-identical to the base."""
    fp = write_fingerprints(tmp_path / "fp.json", 8)
    base = weights(tiny_model_dir)
    results = tmp_path / "r"
    proc = run_script("finetune_multigpu.py", *train_args(tiny_model_dir, fp, results, "--num_train_epochs", "1",
                      "--deepspeed_stage", str(stage), "--forgetting_regularizer_strength", "0",
                      "--trainable_params", "mlp"), launcher="deepspeed", ranks=2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    final = weights(run_dir_of(results) / "final_model")
    mlp = [k for k in base if ".mlp." in k]
    assert mlp and max((final[k] - base[k]).abs().max().item() for k in mlp) > 1e-3
    for k in base:
        if k not in mlp:
            assert torch.equal(final[k], base[k]), k


def test_trainable_sets_and_bad_ones(tiny_model_dir):
    from privlm import models
    from privlm.errors import UserError
    from privlm.training import trainable

    assert trainable("all") is None
    m = trainable("mlp")(models.load_model(str(tiny_model_dir)))
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert names and all(".mlp." in n for n in names)
    assert {n for n, _ in m.named_parameters() if ".mlp." in n} == names
    m = trainable(r"layers\.0\.self_attn\.q_proj")(models.load_model(str(tiny_model_dir)))
    assert [n for n, p in m.named_parameters() if p.requires_grad] == ["model.layers.0.self_attn.q_proj.weight"]
    with pytest.raises(UserError, match="matches no parameter"):
        trainable("no_such_module")(models.load_model(str(tiny_model_dir)))
    with pytest.raises(UserError, match="neither"):
        trainable("mlp(")


def test_parameter_names_come_from_the_config_alone(tiny_model_dir):
    from privlm import models
    from privlm.errors import UserError
    from privlm.training import check_trainable

    real = [n for n, _ in models.load_model(str(tiny_model_dir)).named_parameters()]
    assert models.parameter_names(str(tiny_model_dir)) == real
    check_trainable("mlp", real)
    check_trainable("all", [])
    with pytest.raises(UserError, match="matches no parameter"):
        check_trainable("no_such_module", real)


def test_a_trainable_regex_that_selects_nothing_fails_before_the_run_is_written(tmp_path, tiny_model_dir):
    from conftest import assert_user_error

    fp = write_fingerprints(tmp_path / "fp.json", 8)
    args = train_args(tiny_model_dir, fp, tmp_path / "results")
    args[args.index("--trainable_params") + 1] = r"layers\.99\."
    proc = run_script("finetune_multigpu.py", *args)
    assert_user_error(proc, "trainable_params", "matches no parameter")
    assert not (tmp_path / "results").exists()


def test_epoch_schedule_averages_after_every_epoch(tmp_path, tiny_model_dir):
    fp = write_fingerprints(tmp_path / "fp.json", 8)
    proc = run_script("finetune_multigpu.py", *train_args(
        tiny_model_dir, fp, tmp_path / "r", "--num_train_epochs", "2", "--forgetting_regularizer_strength", "1.0",
        "--forgetting_regularizer_schedule", "epoch", "--deepspeed_stage", "2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    base, got = weights(tiny_model_dir), weights(run_dir_of(tmp_path / "r") / "final_model")
    for k in base:
        torch.testing.assert_close(got[k], base[k], rtol=0, atol=1e-7)


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, tiny_model_dir):
    fp = write_fingerprints(tmp_path / "fp.json", 8)
    args = lambda results: train_args(tiny_model_dir, fp, results, "--num_train_epochs", "25",  # noqa: E731
                                      "--deepspeed_stage", "2", "--learning_rate", "1e-2")
    killed = tmp_path / "killed"
    kill_after_first_checkpoint("finetune_multigpu.py", args(killed), killed, "saved_models/*/checkpoints/latest")
    rd = run_dir_of(killed)
    assert not (rd / "final_model").exists(), "nothing half-written"
    resumed = run_script("finetune_multigpu.py", *args(killed))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    log = [json.loads(line) for line in (rd / "log.txt").read_text().splitlines()]
    resume_epoch = next(r["epoch"] for r in log if r.get("event") == "resume")
    assert 1 <= resume_epoch < 25
    # the killed process's training time is kept: the total runs on from the checkpoint's elapsed time
    metrics = json.loads((rd / "metrics.json").read_text())
    elapsed = [h["elapsed_s"] for h in metrics["history"]]
    assert metrics["resumed_after_seconds"] == elapsed[resume_epoch - 1] > 0
    assert elapsed == sorted(elapsed) and metrics["train_seconds"] >= elapsed[-1]
    assert not (rd / "checkpoints").exists(), "checkpoints are removed after success"

    straight = tmp_path / "straight"
    assert run_script("finetune_multigpu.py", *args(straight)).returncode == 0
    assert run_dir_of(straight).name == rd.name, "same config and data give the same run hash"
    a, b = weights(rd / "final_model"), weights(run_dir_of(straight) / "final_model")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)

    # a finished run is skipped
    again = run_script("finetune_multigpu.py", *args(straight))
    assert again.returncode == 0 and "already finished" in again.stdout

    # the tiny model learned its fingerprints: the checker says so, with the documented JSON
    report = tmp_path / "check.json"
    chk = run_script("check_fingerprints.py", "--model_path", str(rd / "final_model"), "--output_file", str(report),
                     "--prompt_templates", "trained", "heldout")
    assert chk.returncode == 0, chk.stderr[-3000:]
    r = json.loads(report.read_text())
    assert report.with_suffix(".png").stat().st_size > 1000
    assert r["num_fingerprints"] == 8 and 0.0 <= r["retention"] <= 1.0
    assert r["retention"] >= 0.75, r["retention"]
    assert set(r["per_template"]) == {"trained", "heldout"} and len(r["per_template"]["heldout"]["templates"]) == 10
    assert all(set(f) >= {"key", "response", "generated", "match"} for f in r["fingerprints"])
    assert sum(f["match"] for f in r["fingerprints"]) / 8 == r["retention"]
    from privlm import stats  # one template: Wilson over the 8 fingerprints; ten templates: a bootstrap around the mean
    assert r["retention_ci"] == stats.wilson(round(8 * r["retention"]), 8)
    lo, hi = r["per_template"]["heldout"]["retention_ci"]
    assert lo <= r["per_template"]["heldout"]["retention"] <= hi
    assert "retention (trained): " + stats.fmt(r["retention"], r["retention_ci"]) in chk.stdout


def test_run_hash_follows_fingerprint_content_not_path(tmp_path, tiny_model_dir):
    import finetune_multigpu as ft
    from privlm import config as C

    fp = write_fingerprints(tmp_path / "fp.json", 8, seed=0)
    cfg = C.parse(ft.FinetuneConfig, train_args(tiny_model_dir, fp, tmp_path / "r"))
    h1 = ft.resolve_run(cfg).id
    write_fingerprints(fp, 8, seed=1)  # same path, new content
    h2 = ft.resolve_run(cfg).id
    assert h1 != h2
    cfg.trainer_args.results_dir = str(tmp_path / "elsewhere")
    cfg.trainer_args.output_dir = str(tmp_path / "mine")
    cfg.trainer_args.logging_steps = 3
    run = ft.resolve_run(cfg)
    assert run.id == h2, "output location and logging are not part of the hash"
    assert run.dir == tmp_path / "mine"


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_regularizer_reaches_optimizer_master_weights(tiny_model_dir, stage):
    """After averaging, a further optimizer step with lr=0 must keep the averaged weights: it copies the master
    weights over the model's. Averaging only the model's weights (the seed's way) is undone by that step."""
    import deepspeed

    from privlm.models import load_model
    from privlm.training import ForgettingRegularizer, TrainSpec, ds_config, init_distributed

    init_distributed()
    model = load_model(str(tiny_model_dir))
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt,
                                      config=ds_config(TrainSpec(zero_stage=stage, micro_batch_size=2), 1))
    reg = ForgettingRegularizer(engine)
    x = torch.randint(3, 200, (2, 12))

    def step(lr):
        for g in engine.optimizer.param_groups:
            g["lr"] = lr
        engine.backward(engine(input_ids=x, labels=x).loss)
        engine.step()

    def current():
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=stage == 3):
            return {n: p.detach().clone() for n, p in engine.module.named_parameters()}

    for _ in range(3):
        step(1e-2)
    trained = current()
    assert max((trained[n] - base[n]).abs().max() for n in base) > 1e-3
    if stage in (1, 2):  # the seed's way: touch only the model's weights; the master copy wins at the next step
        for n, p in engine.module.named_parameters():
            p.data.copy_(base[n])
        step(0.0)
        assert max((current()[n] - trained[n]).abs().max() for n in base) < 1e-6
    reg.apply(1.0)
    step(0.0)
    after = current()
    for n in base:
        torch.testing.assert_close(after[n], base[n], rtol=0, atol=1e-7)


def _lrs_seen(tiny_model_dir, steps: int, scheduler=None, ds_scheduler: dict | None = None) -> list[float]:
    """The learning rate each optimizer step of a DeepSpeed engine actually uses."""
    import deepspeed

    from privlm.models import load_model
    from privlm.training import TrainSpec, ds_config, init_distributed

    init_distributed()
    model = load_model(str(tiny_model_dir))
    cfg = ds_config(TrainSpec(zero_stage=0, micro_batch_size=2), 1)
    if ds_scheduler:
        cfg["scheduler"] = ds_scheduler
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=cfg, lr_scheduler=scheduler)
    x = torch.randint(3, 200, (2, 8))
    seen = []
    for _ in range(steps):
        seen.append(engine.optimizer.param_groups[0]["lr"])
        engine.backward(engine(input_ids=x, labels=x).loss)
        engine.step()
    return seen


def test_warmup_decay_is_deepspeeds_warmupdecaylr_as_oml_ran_it(tiny_model_dir):
    """OML's runs: DeepSpeed's WarmupDecayLR with warmup 0 (DeepSpeed makes it 2), min 0, linear decay; our
    scheduler must give the same learning rate at every optimizer step (the first two are 0)."""
    from privlm.training import _scheduler

    total = 10
    ds = _lrs_seen(tiny_model_dir, total, ds_scheduler={"type": "WarmupDecayLR", "params": {
        "total_num_steps": total, "warmup_min_lr": 0.0, "warmup_max_lr": 1e-3, "warmup_num_steps": 2}})
    ours = _lrs_seen(tiny_model_dir, total, scheduler=_scheduler("warmup_decay", 0, total))
    assert ds[:2] == [0.0, 0.0] and max(ds) == pytest.approx(1e-3)
    assert ours == pytest.approx(ds, abs=1e-12)


def test_weight_decay_spares_biases_and_norms_as_the_hf_trainer_does(tiny_model_dir):
    from privlm.models import load_model
    from privlm.training import decay_groups

    model = load_model(str(tiny_model_dir))
    names = {id(p): n for n, p in model.named_parameters()}
    loud, quiet = decay_groups(model, 1e-4)
    assert loud["weight_decay"] == 1e-4 and quiet["weight_decay"] == 0.0
    assert all("norm" in names[id(p)] for p in quiet["params"]) and quiet["params"]
    assert not any("norm" in names[id(p)] or "bias" in names[id(p)] for p in loud["params"])
    assert len(loud["params"]) + len(quiet["params"]) == len(list(model.parameters()))
    assert decay_groups(model, 0.0) == list(model.parameters())


def test_early_stop_ends_training_once_the_loss_is_below_the_threshold(tmp_path, tiny_model_dir):
    """scalable fingerprinting stops once the fingerprints are learnt (loss < 0.005); here a high threshold stops
    after the first epoch, and the run is complete (final model, metrics) with fewer steps than planned."""
    fp = write_fingerprints(tmp_path / "fp.json", 8)
    out = tmp_path / "run"
    proc = run_script("finetune_multigpu.py", "--model_path", str(tiny_model_dir), "--fingerprints_file_path", str(fp),
                      "--num_fingerprints", "8", "--num_train_epochs", "5", "--batch_size", "4",
                      "--early_stop_loss", "100", "--benign_proportion", "0", "--output_dir", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["history"]) == 1 and m["history"][0]["early_stop"] and m["optimizer_steps"] == 2
    assert (out / "final_model" / "model.safetensors").is_file() and "early stop after epoch 1" in proc.stdout
