"""privlm.runs.Run: where a run lives, skip-if-done, refusing a directory that holds another run, overwrite, resume
points; and the entry scripts going through it (--output_dir, max_steps, logging_steps)."""
import json
from dataclasses import dataclass

import pytest

from conftest import run_script, write_fingerprints
from privlm import config as C
from privlm.errors import UserError
from privlm.runs import Run


@dataclass
class Cfg:
    x: int = C.field(1)
    trainer_args: C.TrainArgs = C.train_args()


def make(tmp_path, *argv, inputs=None):
    cfg = C.parse(Cfg, [*argv])
    return Run(cfg, cfg.trainer_args, inputs or {"data": "abc"}, kind="kind")


def finish(run):
    run.start(seed=0)
    run.final.mkdir(parents=True)
    run.write_metrics({"ok": 1})


def test_layout_id_and_skip(tmp_path, capsys):
    run = make(tmp_path, "--results_dir", str(tmp_path))
    assert run.dir == tmp_path / "kind" / run.id and len(run.id) == 16
    assert run.id == make(tmp_path, "--results_dir", str(tmp_path / "other"), "--logging_steps", "1").id
    assert run.id != make(tmp_path, "--results_dir", str(tmp_path), inputs={"data": "abd"}).id
    assert run.id != make(tmp_path, "--results_dir", str(tmp_path), "--lr", "1e-3").id
    assert not run.finished()
    finish(run)
    cfg = json.loads((run.dir / "config.json").read_text())
    assert cfg["run_hash"] == run.id and cfg["trainer_args"]["results_dir"] == str(tmp_path)
    assert "git_hash" in json.loads((run.dir / "provenance.json").read_text())
    assert run.finished() and "already finished" in capsys.readouterr().out
    assert not make(tmp_path, "--results_dir", str(tmp_path), "--overwrite_output_dir").finished()


def test_output_dir_holding_another_run_is_refused_unless_overwritten(tmp_path):
    out = tmp_path / "mine"
    a = make(tmp_path, "--output_dir", str(out))
    assert a.dir == out
    finish(a)
    (a.dir / "checkpoints").mkdir()
    b = make(tmp_path, "--output_dir", str(out), "--lr", "1e-3")
    with pytest.raises(UserError, match="holds another run"):
        b.finished()
    c = make(tmp_path, "--output_dir", str(out), "--lr", "1e-3", "--overwrite_output_dir")
    assert not c.finished()
    c.start()
    assert not a.final.exists() and not (out / "metrics.json").exists() and not (out / "checkpoints").exists()
    assert c.recorded_id() == c.id


def test_resume_points(tmp_path):
    run = make(tmp_path, "--output_dir", str(tmp_path / "r"))
    assert run.resume_checkpoint() is None
    (run.checkpoints / "epoch2").mkdir(parents=True)
    (run.checkpoints / "latest").write_text("epoch2")
    assert run.resume_checkpoint() == run.checkpoints
    off = make(tmp_path, "--output_dir", str(tmp_path / "r"), "--resume_from_checkpoint", "false")
    assert off.resume_checkpoint() is None
    other = make(tmp_path, "--output_dir", str(tmp_path / "s"), "--resume_from_checkpoint", str(run.checkpoints))
    assert other.resume_checkpoint() == run.checkpoints
    tag = make(tmp_path, "--output_dir", str(tmp_path / "s"), "--resume_from_checkpoint", str(run.checkpoints /
                                                                                                "epoch2"))
    assert tag.resume_checkpoint() == run.checkpoints / "epoch2", "a tag folder beside its `latest`"
    (tmp_path / "plain").mkdir()
    for wrong in (tmp_path / "nope", tmp_path / "plain"):  # missing, or a folder that is no checkpoint
        bad = make(tmp_path, "--output_dir", str(tmp_path / "s"), "--resume_from_checkpoint", str(wrong))
        with pytest.raises(UserError, match="not a DeepSpeed checkpoint"):
            bad.resume_checkpoint()


def test_finetune_with_output_dir_max_steps_logging_then_skip(tmp_path, tiny_model_dir):
    fp = write_fingerprints(tmp_path / "fp.json", 8)
    y = tmp_path / "c.yml"  # the seeds' names and HF names mixed, as users' configs are
    y.write_text(f"model_path: {tiny_model_dir}\nfingerprints_file_path: {fp}\nnum_fingerprints: 8\n"
                 "max_key_length: 8\nmax_response_length: 3\nprompt_format: raw\nbatch_size: 2\n"
                 "benign_proportion: 0\ntrainer_args:\n  learning_rate: 1.0e-3\n  max_steps: 5\n  logging_steps: 2\n  deepspeed: 0\n")
    out = tmp_path / "run"
    proc = run_script("finetune_multigpu.py", "--config", str(y), "--output_dir", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["optimizer_steps"] == 5 and len(metrics["history"]) == 2  # 4 steps per epoch: 1 epoch + 1 step
    steps = [r["step"] for r in map(json.loads, (out / "log.txt").read_text().splitlines()) if "step" in r]
    assert steps == [2, 4]
    assert json.loads((out / "final_model" / "fingerprinting_config.json").read_text())["num_fingerprints"] == 8
    stamp = (out / "final_model" / "model.safetensors").stat().st_mtime_ns
    again = run_script("finetune_multigpu.py", "--config", str(y), "--output_dir", str(out))
    assert again.returncode == 0 and "already finished" in again.stdout
    assert (out / "final_model" / "model.safetensors").stat().st_mtime_ns == stamp
    other = run_script("finetune_multigpu.py", "--config", str(y), "--output_dir", str(out), "--lr", "2e-3")
    assert other.returncode == 2 and "holds another run" in other.stderr
