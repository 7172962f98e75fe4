"""check_fingerprints --eval_utility: base and fingerprinted scored in one loop, the base's scores cached by the
content of its weights so that a second check runs the fingerprinted model alone and reports the same numbers."""
import json

import torch

from conftest import run_script, write_fingerprints
from privlm import models


def test_second_check_reads_the_base_from_the_cache(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("PRIVLM_CACHE", str(tmp_path / "cache"))
    tuned = tmp_path / "tuned"
    m = models.load_model(str(tiny_model_dir))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    m.save_pretrained(tuned)
    models.load_tokenizer(str(tiny_model_dir)).save_pretrained(tuned)
    fp = write_fingerprints(tmp_path / "fp.json", 4)
    args = ["--model_path", str(tuned), "--base_model_path", str(tiny_model_dir), "--fingerprints_file_path", str(fp),
            "--prompt_templates", "bare", "--eval_utility", "--utility_tasks", "none", "--heldout_tokens", "1024",
            "--kl_top_k", "16"]
    reports = []
    for i in range(2):
        out = tmp_path / f"r{i}.json"
        proc = run_script("check_fingerprints.py", *args, "--output_file", str(out))
        assert proc.returncode == 0, proc.stderr[-3000:]
        reports.append(json.loads(out.read_text())["utility"]["heldout"])
    first, second = reports
    assert (first["base_from_cache"], second["base_from_cache"]) == (False, True)
    assert first["heldout_tokens"] == 1024 and first["kl_top_k"] == 16
    lo, hi = first["heldout_ppl_ratio_ci"]
    assert lo <= first["heldout_ppl_ratio"] <= hi and first["heldout_ppl_ratio"] != 1.0
    assert first["kl_base_tuned"] > 0
    assert {k: v for k, v in first.items() if k != "base_from_cache"} == \
        {k: v for k, v in second.items() if k != "base_from_cache"}
    assert len(list((tmp_path / "cache" / "heldout").glob("*.npz"))) == 1
