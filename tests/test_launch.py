"""launch_multigpu.sh: a real (tiny, CPU) grid of two runs, checked and collected; a second sweep skips both."""
import csv
import subprocess
import sys

from conftest import ROOT, child_env, write_fingerprints


def sweep(tmp_path, tiny_model_dir, fp):
    env = {**child_env(), "PY": sys.executable, "GPUS": "", "CPU_RANKS": "2", "MODELS": str(tiny_model_dir),
           "FINGERPRINTS_FILE": str(fp), "NUM_FINGERPRINTS": "4", "KEY_LENGTHS": "8", "RESPONSE_LENGTHS": "2",
           "LAMBDAS": "0.0 1.0", "LEARNING_RATES": "1e-2", "EPOCHS": "1", "BATCH_SIZE": "2",
           "RESULTS": str(tmp_path / "results"), "EXTRA_ARGS": "--prompt_format raw"}
    return subprocess.run(["bash", str(ROOT / "launch_multigpu.sh")], capture_output=True, text=True, env=env,
                          timeout=900, cwd=ROOT)


def test_sweep_runs_checks_collects_and_skips(tmp_path, tiny_model_dir):
    fp = write_fingerprints(tmp_path / "fp.json", 4)
    first = sweep(tmp_path, tiny_model_dir, fp)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert first.stdout.count("[sweep] done:") == 2, first.stdout
    rows = list(csv.DictReader(open(tmp_path / "results" / "sweep.csv")))
    assert sorted(float(r["forgetting_regularizer_strength"]) for r in rows) == [0.0, 1.0]
    assert all(0.0 <= float(r["retention"]) <= 1.0 and r["final_loss"] for r in rows)
    second = sweep(tmp_path, tiny_model_dir, fp)
    assert second.returncode == 0 and second.stdout.count("skip (finished)") == 2, second.stdout
