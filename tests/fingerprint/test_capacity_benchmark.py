"""benchmarks/fingerprint_capacity.py end to end on the tiny model: rows with every promised field, a figure,
resume (a finished N is kept, not retrained), and N larger than the fingerprints file refused before any work."""
import json
import subprocess
import sys

from conftest import ROOT, child_env, write_fingerprints

FIELDS = {"strategy", "num_fingerprints", "retention", "retention_ci", "heldout_ppl_base", "heldout_ppl_after",
          "heldout_ppl_ratio", "kl_base_tuned", "train_seconds", "retention_after_sft", "heldout_ppl_ratio_ci"}


def bench(*args):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fingerprint_capacity.py"), *args],
                          capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=900)


def test_capacity_rows_figure_and_resume(tmp_path, tiny_model_dir):
    fp = write_fingerprints(tmp_path / "fp.json", 8)
    text = tmp_path / "heldout.txt"
    text.write_text("the quick brown fox jumps over the lazy dog and runs far away " * 60)
    args = ["--model_path", str(tiny_model_dir), "--fingerprints_file_path", str(fp), "--strategy", "english",
            "--num_fingerprints", "4", "8", "--num_gpus", "1", "--sft_steps", "1", "--kl_windows", "2",
            "--heldout_text", str(text), "--response_length", "3", "--output_dir", str(tmp_path / "out"),
            "--finetune_args", "--prompt_format raw --num_train_epochs 2 --batch_size 4 --benign_proportion 0"]
    proc = bench(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])["rows"]
    assert [r["num_fingerprints"] for r in rows] == [4, 8]
    for r in rows:
        assert FIELDS <= set(r), FIELDS - set(r)
        assert r["heldout_ppl_ratio"] == r["heldout_ppl_after"] / r["heldout_ppl_base"] or abs(
            r["heldout_ppl_ratio"] - r["heldout_ppl_after"] / r["heldout_ppl_base"]) < 1e-9
        assert r["kl_base_tuned"] > 0 and r["train_seconds"] > 0 and r["strategy"] == "english"
        lo, hi = r["retention_ci"]
        assert lo <= r["retention"] <= hi
    assert (tmp_path / "out" / "capacity.png").is_file()
    again = bench(*args)
    assert again.returncode == 0 and again.stdout.count("done before; kept") == 2, again.stderr[-2000:]
    assert json.loads(again.stdout.strip().splitlines()[-1])["rows"] == rows


def test_more_fingerprints_than_the_file_holds_is_refused(tmp_path, tiny_model_dir):
    fp = write_fingerprints(tmp_path / "fp.json", 4)
    proc = bench("--model_path", str(tiny_model_dir), "--fingerprints_file_path", str(fp), "--num_fingerprints", "8",
                 "--output_dir", str(tmp_path / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [l for l in proc.stderr.splitlines() if l.startswith("error:")] == [
        f"error: fingerprints file {fp} has 4 fingerprints, fewer than --num_fingerprints 8"]
    assert not (tmp_path / "out" / "runs").exists()
