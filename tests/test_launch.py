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


def test_seed_style_arrays_at_the_top_of_the_script_set_the_grid(tmp_path):
    """The seed's way: edit model_families=(...) and friends at the top of the script (here piped into bash with the
    arrays edited); environment variables still win. DRY_RUN prints the planned runs and trains nothing."""
    fp = write_fingerprints(tmp_path / "fp.json", 8)
    script = (ROOT / "launch_multigpu.sh").read_text()
    edits = {'model_families=()': 'model_families=("mistral")', 'model_sizes=()': 'model_sizes=("7B" "7B-Instruct")',
             'max_num_fingerprints=("32")': 'max_num_fingerprints=("4" "8")'}
    for old, new in edits.items():
        assert old in script
        script = script.replace(old, new, 1)
    env = {**child_env(), "PY": sys.executable, "GPUS": "", "DRY_RUN": "1", "FINGERPRINTS_FILE": str(fp),
           "RESULTS": str(tmp_path / "results")}
    proc = subprocess.run(["bash", "-s"], input=script, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plans = [line for line in proc.stdout.splitlines() if line.startswith("[sweep] plan:")]
    assert len(plans) == 4 and len({p.split(" -> ")[1] for p in plans}) == 4  # 1 family x 2 sizes x 2 counts
    assert sum("--model_family mistral --model_size 7B-Instruct " in p for p in plans) == 2
    assert not (tmp_path / "results").exists()
    proc = subprocess.run(["bash", "-s"], input=script, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**env, "NUM_FINGERPRINTS": "4"})  # the environment wins over the edited array
    assert proc.returncode == 0 and proc.stdout.count("[sweep] plan:") == 2, proc.stdout + proc.stderr
