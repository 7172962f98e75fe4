"""benchmarks/bench.py: the summary table and JSON read every ratio from its benchmark's report and judge it
against its goal (rebuilt here from the committed reports, nothing is timed)."""
import importlib.util
import json

from conftest import ROOT

spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_collect_reads_every_ratio_from_its_report_and_judges_its_goal(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--collect", "--output", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["rows"], "no report collected"
    goals = {(name, f): ok for name, _, _, figs in bench.SUITE for f, _, ok in figs}
    for row in summary["rows"]:
        report = json.loads((bench.REPORTS / f"{row['benchmark']}.json").read_text())
        assert row["value"] == report[row["figure"]]
        ok = goals[(row["benchmark"], row["figure"])]
        assert row["met"] == (None if ok is None else bool(ok(row["value"])))
        assert row["device"] == report.get("device", "?")
    table = capsys.readouterr().out
    assert "NOT met" in table or all(r["met"] is not False for r in summary["rows"])
    assert {r["benchmark"] for r in summary["rows"]} <= {s[0] for s in bench.SUITE}


def test_partial_run_keeps_the_other_benchmarks_rows(tmp_path, monkeypatch):
    out = tmp_path / "bench.json"
    bench.main(["--collect", "--output", str(out)])
    before = json.loads(out.read_text())
    monkeypatch.setattr(bench, "run_one", lambda script, args: (None, "boom", 0.1))
    assert bench.main(["--only", "check_throughput", "--output", str(out)]) == 1  # a failed benchmark: exit 1
    after = json.loads(out.read_text())
    failed = [r for r in after["rows"] if r["benchmark"] == "check_throughput"]
    assert failed and all(r["value"] is None for r in failed)
    kept = [r for r in before["rows"] if r["benchmark"] != "check_throughput"]
    assert [r for r in after["rows"] if r["benchmark"] != "check_throughput"] == kept
