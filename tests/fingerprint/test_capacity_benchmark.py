"""benchmarks/fingerprint_capacity.py end to end on the tiny model: rows with every promised field, a figure,
resume (a finished N is kept, not retrained; a finished run keeps its wall time; the base's scores are
kept; rows of another fingerprints file are refused), and N larger than the fingerprints file refused before any work."""
import hashlib
import json
import math
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
    assert {r["fingerprints_sha256"] for r in rows} == {hashlib.sha256(fp.read_bytes()).hexdigest()}

    # A kill after training N = 8 but before its row: the row is measured from the finished run, keeping that
    # run's wall time, and the base's held-out scores come from base_scores.json (here doctored to show it).
    out = tmp_path / "out"
    (out / "rows" / "defaults_english_8.json").unlink()
    kept = json.loads((out / "base_scores.json").read_text())
    kept["nll"] = [x + kept["count"][i] for i, x in enumerate(kept["nll"])]  # +1 nat per token: ppl x e
    (out / "base_scores.json").write_text(json.dumps(kept))
    third = bench(*args)
    assert third.returncode == 0, third.stderr[-3000:]
    new8 = json.loads(third.stdout.strip().splitlines()[-1])["rows"][1]
    assert new8["wall_seconds"] == rows[1]["wall_seconds"] and new8["train_seconds"] == rows[1]["train_seconds"]
    assert abs(new8["heldout_ppl_base"] / rows[1]["heldout_ppl_base"] - math.e) < 1e-6

    # Rows measured on another fingerprints file are not mixed in.
    other = write_fingerprints(tmp_path / "other.json", 8, seed=1)
    args[args.index(str(fp))] = str(other)
    proc = bench(*args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [l for l in proc.stderr.splitlines() if l.startswith("error:")] == [
        f"error: {out / 'rows' / 'defaults_english_4.json'} was measured on another fingerprints file than "
        f"{other}: move it away or use another --output_dir"]


def test_more_fingerprints_than_the_file_holds_is_refused(tmp_path, tiny_model_dir):
    fp = write_fingerprints(tmp_path / "fp.json", 4)
    proc = bench("--model_path", str(tiny_model_dir), "--fingerprints_file_path", str(fp), "--num_fingerprints", "8",
                 "--output_dir", str(tmp_path / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [l for l in proc.stderr.splitlines() if l.startswith("error:")] == [
        f"error: fingerprints file {fp} has 4 fingerprints, fewer than --num_fingerprints 8"]
    assert not (tmp_path / "out" / "runs").exists()
