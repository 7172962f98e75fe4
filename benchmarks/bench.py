"""The speed benchmarks behind issue 31's goals, one after another, into one table and one JSON.

    python benchmarks/bench.py            # what `make bench` runs: about 25 minutes on a 2-core CPU
    python benchmarks/bench.py --only check_throughput mia_throughput
    python benchmarks/bench.py --tiny     # the tiny random model: a smoke run of the runner, seconds

Each benchmark runs in its own process (one at a time: their ratios are measured side by side inside it), on CUDA
when it is present. Its last stdout line (JSON) goes to benchmarks/reports/<name>.json; the summary, with the device,
the date and every ratio against its goal, goes to benchmarks/reports/bench.json, which `make results` turns into
the performance tables of docs/results.md and the README. A benchmark that fails is reported and the others run.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
REPORTS = ROOT / "benchmarks" / "reports"

# (name, script, arguments, [(ratio field, goal as text, passes?)])
SUITE = [
    ("check_throughput", "check_throughput.py", [],
     [("speedup", ">= 30", lambda v: v >= 30), ("check_over_forward_throughput", ">= 0.9", lambda v: v >= 0.9),
      ("identical_verdicts", "true", lambda v: v is True)]),
    ("mia_throughput", "mia_throughput.py", [],
     [("attacks_over_forward_throughput", ">= 0.95", lambda v: v >= 0.95),
      ("all_with_lowercase_over_forward", "(lowercase: a third pass)", None)]),
    ("dp_full_overhead", "dp_full_overhead.py", [],
     [("dp_over_nondp_time", "<= 1.10", lambda v: v <= 1.10),
      ("dp_over_nondp_time_without_noise", "(noise excluded)", None),
      ("dp_over_nondp_peak_memory", "<= 1.05", lambda v: v <= 1.05),
      ("opacus_ghost_over_ours_time", ">= 1.5", lambda v: v >= 1.5),
      ("max_abs_grad_diff_vs_per_sample", "<= 1e-5", lambda v: v <= 1e-5)]),
    ("dp_full_overhead_512", "dp_full_overhead.py", ["--seq_len", "512", "--steps", "2"],  # ~18 min on 2 cores
     [("dp_over_nondp_time", "<= 1.25", lambda v: v <= 1.25),
      ("dp_over_nondp_peak_memory", "<= 1.05", lambda v: v <= 1.05),
      ("opacus_ghost_over_ours_time", ">= 1.5", lambda v: v >= 1.5),
      ("max_abs_grad_diff_vs_per_sample", "<= 1e-5", lambda v: v <= 1e-5)]),
]
TINY_ARGS = {"check_throughput": ["--tiny", "--num_fingerprints", "16", "--batch_size", "8", "--repeats", "1"],
             "mia_throughput": ["--tiny", "--samples", "8", "--repeats", "1"],
             "dp_full_overhead": ["--tiny", "--steps", "2"], "dp_full_overhead_512": ["--tiny", "--steps", "2"]}


def device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name()}"
    import platform

    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


PROGRESS = re.compile(r"^\[\w+\] ")


def run_one(script: str, args: list[str]) -> tuple[dict | None, str, float]:
    t = time.time()
    with tempfile.TemporaryFile("w+") as stdout:  # a file, not a pipe: a chatty stdout cannot block the loop below
        p = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                             stdout=stdout, stderr=subprocess.PIPE, text=True)
        err = []
        for line in p.stderr:  # a benchmark's own progress lines ("[name] ...") pass through; the rest is kept
            err.append(line.rstrip())
            if PROGRESS.match(line):
                print(line, end="", file=sys.stderr, flush=True)
        p.wait()
        stdout.seek(0)
        out = stdout.read()
    wall = round(time.time() - t, 1)
    last = (out.strip().splitlines() or [""])[-1]
    if p.returncode != 0:
        return None, ([e for e in err if e] or ["exit code %d" % p.returncode])[-1], wall
    try:
        return json.loads(last), "", wall
    except json.JSONDecodeError:
        return None, f"no JSON on the last line: {last[:120]}", wall


def table(summary: dict) -> str:
    lines = [f"device: {summary['device']}   date: {summary['date']}"
             + ("   (rows of other benchmarks: their own device and date in the JSON)" if summary.get("partial") else ""),
             "",
             f"{'benchmark':<22} {'figure':<34} {'value':>10}  goal", "-" * 86]
    for row in summary["rows"]:
        v = row["value"]
        v = "FAILED" if v is None else (("yes" if v else "no") if isinstance(v, bool) else f"{v:.4g}")
        mark = {True: "  met", False: "  NOT met", None: ""}[row["met"]]
        lines.append(f"{row['benchmark']:<22} {row['figure']:<34} {v:>10}  {row['goal']}{mark}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=[s[0] for s in SUITE], help="run only these benchmarks")
    ap.add_argument("--tiny", action="store_true", help="the tiny random model (a smoke run; no report files)")
    ap.add_argument("--output", default=str(REPORTS / "bench.json"))
    ap.add_argument("--collect", action="store_true",
                    help="run nothing: rebuild the summary from the reports already in benchmarks/reports/ (each row "
                         "keeps its report's device and date)")
    a = ap.parse_args(argv)
    suite = [s for s in SUITE if not a.only or s[0] in a.only]
    summary = {"device": device(), "date": time.strftime("%Y-%m-%d"), "tiny": a.tiny, "rows": [], "reports": {},
               "collected": a.collect}
    previous = json.loads(Path(a.output).read_text()) if Path(a.output).is_file() and not a.tiny else None
    for name, script, args, figures in suite:
        if a.collect:  # a benchmark without a report is left out
            path = REPORTS / f"{name}.json"
            if not path.is_file():
                continue
            rep, err, wall = json.loads(path.read_text()), "", None
            row_dev = rep.get("device", "?")
            row_date = rep.get("date") or time.strftime("%Y-%m-%d", time.gmtime(path.stat().st_mtime))
        else:
            print(f"[bench] {name} ...", flush=True)
            rep, err, wall = run_one(script, [*args, *(TINY_ARGS[name] if a.tiny else [])])
            row_dev, row_date = summary["device"], summary["date"]
            print(f"[bench] {name}: {'failed: ' + err if rep is None else 'done'} ({wall} s)", flush=True)
            if rep is not None and not a.tiny:
                (REPORTS / f"{name}.json").write_text(json.dumps(rep, indent=1) + "\n")
        summary["reports"][name] = {"source": f"benchmarks/reports/{name}.json", "wall_seconds": wall,
                                    "error": err or None, "args": args}
        for field, goal, ok in figures:
            v = None if rep is None else rep.get(field)
            summary["rows"].append({"benchmark": name, "figure": field, "value": v, "goal": goal,
                                    "met": None if ok is None or v is None else bool(ok(v)),
                                    "device": row_dev, "date": row_date})
    if previous and a.only:  # a partial run keeps the other benchmarks' rows from the last full one
        summary["partial"] = True
        ran = {s[0] for s in suite}
        summary["rows"] = [r for r in previous["rows"] if r["benchmark"] not in ran] + summary["rows"]
        summary["reports"] = {**{k: v for k, v in previous["reports"].items() if k not in ran}, **summary["reports"]}
        order = [s[0] for s in SUITE]
        summary["rows"].sort(key=lambda r: order.index(r["benchmark"]))
    print(table(summary))
    if not a.tiny:
        from privlm.io import atomic_write_json

        atomic_write_json(Path(a.output), summary)
        print(f"[bench] {a.output}")
    return 1 if any(r["value"] is None for r in summary["rows"] if r["benchmark"] in {s[0] for s in suite}) else 0


if __name__ == "__main__":
    sys.exit(main())
