"""report.py (sweep and DP tables) and plots.py (retention figure): the numbers they show, not only their files."""
import csv
import json

import pytest

from privlm import plots, report


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_sweep_table_collects_finished_runs_only(tmp_path):
    res = tmp_path / "results"
    for name, lr, ret in (("a1", 1e-5, 0.5), ("b2", 3e-5, 0.75)):
        run = res / "saved_models" / name
        write(run / "config.json", {"run_hash": name, "num_fingerprints": 8,  # as Run writes it: nested sections
                                    "trainer_args": {"learning_rate": lr, "deepspeed": "2"}})
        (run / "final_model").mkdir()
        write(run / "metrics.json", {"history": [{"loss": 2.0}, {"loss": 0.25}], "train_seconds": 12.5})
        write(run / "check.json", {"retention": ret, "template_set": "trained",
                                   "per_template": {"trained": {"token_accuracy": 0.9, "retention": ret},
                                                    "heldout": {"retention": ret / 2}}})
    write(res / "saved_models" / "unfinished" / "config.json", {"run_hash": "unfinished"})
    assert report.main([str(res)]) == 0
    rows = list(csv.DictReader(open(res / "sweep.csv")))
    assert [r["run_hash"] for r in rows] == ["a1", "b2"]
    assert [float(r["retention"]) for r in rows] == [0.5, 0.75]
    assert [float(r["retention_heldout"]) for r in rows] == [0.25, 0.375]
    assert rows[0]["final_loss"] == "0.25" and rows[1]["learning_rate"] == "3e-05"
    assert rows[0]["deepspeed_stage"] == "2" and rows[0]["num_fingerprints"] == "8"
    assert json.loads((res / "sweep.json").read_text())[1]["train_seconds"] == 12.5


def test_dp_table_orders_modes_and_prints_their_numbers(tmp_path, capsys):
    res = tmp_path / "dp"
    for name, mode, eps, loss, ext in (("z", "dp", 7.995, 4.03, 0), ("y", "undefended", None, 2.17, 3),
                                       ("x", "scrubbed", None, 3.13, 1)):
        write(res / "dp_models" / name / "metrics.json", {
            "mode": mode, "privacy": {"epsilon": eps} if eps else None, "train_seconds": 100,
            "eval": {"heldout_loss": loss, "pii_extraction": {"rate": ext / 182, "extracted": ext, "n": 182,
                                                              "token_accuracy": 0.25, "by_type": {}}}})
    rows = report.dp_table(res)
    assert [r["mode"] for r in rows] == ["undefended", "scrubbed", "dp"]
    assert [r["pii_extracted"] for r in rows] == [3, 1, 0] and rows[2]["epsilon"] == 7.995
    assert rows[0]["pii_extraction_rate"] == pytest.approx(3 / 182)
    assert report.main(["dp", str(res)]) == 0
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines() if line.startswith(("undefended", "scrubbed", "dp "))]
    assert lines[0][:7] == ["undefended", "inf", "2.1700", "3/182", "0.016", "[0.003,", "0.047]"]  # Clopper-Pearson
    assert lines[2][:4] == ["dp", "8.00", "4.0300", "0/182"]
    assert json.loads((res / "dp_table.json").read_text()) == rows and (res / "dp_table.png").stat().st_size > 0
    # a corpus without ground-truth PII (ECHR, Enron): dashes, not zeros
    write(res / "dp_models" / "w" / "metrics.json", {
        "mode": "undefended", "privacy": None, "train_seconds": 5,
        "eval": {"heldout_loss": 1.5, "pii_extraction": {"rate": None, "n": 0, "extracted": 0,
                                                         "token_accuracy": None, "by_type": {}}}})
    table = report.format_dp_table(report.dp_table(res))
    (row,) = [line.split() for line in table.splitlines() if line.split()[2:3] == ["1.5000"]]
    assert row == ["undefended", "inf", "1.5000", "-", "-", "-", "5"]


def test_audit_table_puts_bounds_and_intervals_side_by_side(tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(0)
    for name, lb, ub, auc in (("undefended", 1.7, None, 0.81), ("dp2", 0.0, 1.99, 0.51)):
        d = tmp_path / name
        write(d / "audit.json", {"mode": "dp" if ub else "undefended", "epsilon_lower_bound": lb,
                                 "epsilon_upper_bound": ub, "delta": 1e-3, "confidence": 0.95, "num_canaries": 100,
                                 "num_guesses": 50, "num_correct": 40, "auc": auc, "auc_ci": [auc - 0.05, auc + 0.05],
                                 "tpr_at_fpr": [{"fpr": 0.01, "tpr": 0.1, "ci": [0.02, 0.2]}], "attack": "loss"})
        write(d / "scores.json", {"scores": rng.normal(size=100).tolist(), "members": [i % 2 == 0 for i in range(100)]})
    a = json.loads((tmp_path / "dp2" / "audit.json").read_text())  # a white-box audit, as audit.json now has it
    write(tmp_path / "dp2" / "audit.json", {**a, "threat_model": "whitebox", "verdict": "consistent",
                                            "epsilon_lower_bound_method": "fdp", "bounds": [
                                                {"method": "eps_delta", "delta": 1e-5, "epsilon_lower_bound": 0.4},
                                                {"method": "fdp", "delta": 1e-5, "epsilon_lower_bound": 0.9}]})
    assert report.main(["audit", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(("undefended", "dp2"))]
    assert rows[0][:9] == ["undefended", "blackbox", "1.70", "eps_delta", "0.001", "inf", "-", "-/-", "40/50"]
    assert rows[0][9:12] == ["0.810", "[0.760,", "0.860]"]
    assert rows[1][:8] == ["dp2", "whitebox", "0.00", "fdp", "0.001", "1.99", "consistent", "0.40/0.90"]
    assert (tmp_path / "audit_table.png").stat().st_size > 0
    assert len(json.loads((tmp_path / "audit_table.json").read_text())) == 2
    assert report.main(["audit", str(tmp_path / "nothing")]) == 2


def test_retention_figure_draws_each_template_and_utility():
    rep = {"num_fingerprints": 4,
           "per_template": {"trained": {"retention": 1.0, "templates": [{"retention": 1.0}]},
                            "heldout": {"retention": 0.5, "templates": [{"retention": 0.25}, {"retention": 0.75}]}},
           "utility": {"base": {"lm_eval": {"t": {"acc": 0.5}}, "heldout_perplexity": 20.0},
                       "fingerprinted": {"lm_eval": {"t": {"acc": 0.25}}, "heldout_perplexity": 25.0}}}
    fig = plots.retention_figure(rep)
    bars, util = fig.axes
    assert [round(p.get_height(), 6) for p in bars.patches] == [1.0, 0.25, 0.75]
    assert [p.get_height() for p in util.patches] == [0.5, 0.25]
    assert "20.0 -> 25.0" in util.get_title()
    plots.pyplot().close(fig)
