"""docs/results.md, generated: every figure read from the JSON report that a command wrote, never typed by hand.

    python -m privlm.results            # collect the reports into docs/results.json, render docs/results.md
    python -m privlm.results --render   # render docs/results.md from docs/results.json alone (what a test checks)

docs/results.json keeps, per figure, the report it came from (path and SHA-256 of that file), the field, the value
and its 95% interval, so every number on the page can be traced to the file and the command that wrote it. A report
that is not there keeps the figures the previous collection read from it, dated; one never collected is listed
with the command that makes it."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from pathlib import Path

from .config import file_digest
from .io import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
OUT_JSON, OUT_MD = ROOT / "docs" / "results.json", ROOT / "docs" / "results.md"


def _get(obj, field: str):
    for part in field.split("."):
        obj = obj[int(part)] if isinstance(obj, list) else obj[part]
    return obj


class Section:
    """The figures one report gives, each with its field path inside the report."""

    def __init__(self, title: str, source: str, command: str, note: str = ""):
        self.title, self.source, self.command, self.note = title, source, command, note
        self.figures: list[dict] = []
        path = ROOT / source
        self.report = json.loads(path.read_text()) if path.is_file() else None
        self.sha = file_digest(path) if path.is_file() else None

    def add(self, label: str, field: str, ci: str | None = None, fmt: str = ".3f"):
        try:
            value = _get(self.report, field)
            interval = _get(self.report, ci) if ci else None
        except (KeyError, IndexError, TypeError):
            return
        self.figures.append({"label": label, "field": field, "value": value, "ci_field": ci, "ci": interval,
                             "fmt": fmt, "source": self.source, "source_sha256": self.sha})

    def as_dict(self) -> dict:
        return {"title": self.title, "source": self.source, "command": self.command, "note": self.note,
                "present": self.report is not None, "figures": self.figures}


def demo() -> list[Section]:
    out = []
    s = Section("Fingerprinting demo: retention and utility", "results/demo_check.json", "make demo",
                "32 English fingerprints in SmolLM2-135M-Instruct, ZeRO-2 on two CPU ranks (configs/fingerprint/demo_*.yml)")
    if s.report:
        s.add("retention, training template", "per_template.trained.retention", "per_template.trained.retention_ci")
        s.add("retention, 10 held-out templates", "per_template.heldout.retention", "per_template.heldout.retention_ci")
        h = "utility.heldout."
        s.add("held-out perplexity, base", h + "heldout_ppl_base", h + "heldout_ppl_base_ci", ".2f")
        s.add("held-out perplexity, fingerprinted", h + "heldout_ppl_after", h + "heldout_ppl_after_ci", ".2f")
        s.add("perplexity ratio (paired)", h + "heldout_ppl_ratio", h + "heldout_ppl_ratio_ci", ".4f")
        s.add("KL(base || fingerprinted) per token", h + "kl_base_tuned", h + "kl_base_tuned_ci", ".4f")
        s.add("held-out tokens scored", h + "heldout_tokens", fmt="d")
        s.add("base model's scores from the cache", h + "base_from_cache", fmt="")
    out.append(s)
    p = Section("Fingerprinting demo: wall time by phase", "benchmarks/reports/demo_phases.json", "make demo",
                "seconds on the machine named in the report")
    for kind, what in (("first_run", "first run (base scored, model trained)"),
                       ("cached_run", "second run (finished run found, base from cache)")):
        if p.report and kind in p.report:
            p.add(f"{what}: wall time, s", f"{kind}.wall_seconds", fmt="d")
            for k in p.report[kind].get("phases", {}):
                p.add(f"{what}: {k}, s", f"{kind}.phases.{k}", fmt="d")
            p.add(f"{what}: machine", f"{kind}.machine", fmt="")
            p.add(f"{what}: date", f"{kind}.date", fmt="")
    out.append(p)
    return out


def ownership() -> list[Section]:
    s = Section("Ownership: the demo model against innocent models", "results/demo_ownership.json",
                "make demo-ownership", "the base model and four fine-tunes of it on other fingerprint sets are the null")
    if s.report:
        o = "ownership."
        s.add("keys matched", o + "matched", fmt="d")
        s.add("keys checked", o + "n", fmt="d")
        s.add("p-value (exact Poisson-binomial tail)", o + "p_value", fmt=".2e")
        s.add("false-positive rate on the innocent models", o + "false_positive_rate", o + "false_positive_rate_ci")
        s.add("pooled null match rate (upper 95%)", o + "pooled_null_match_rate_upper", fmt=".4f")
        s.add("base model's largest sampled probability of a response, log10",
              o + "base_sample_log10_probability.max", fmt=".1f")
    return [s]


def attacks() -> list[Section]:
    s = Section("Attacks on the demo model", "results/demo_attacks.json",
                "python attack_fingerprints.py --model_path results/demo_run/final_model --null_models "
                "results/innocent_{1..4}/final_model --output_file results/demo_attacks.json",
                "retention [95% CI], the ownership p-value on the keys left, and the thief's held-out perplexity "
                "cost (ratio over the unattacked model; filters: the share of normal prompts they reject or alter)")
    for i, r in enumerate(s.report["rows"] if s.report else []):
        name = f"{r['attack']} {r['param']}" if r.get("param") is not None else r["attack"]
        s.add(f"{name}: retention", f"rows.{i}.retention", f"rows.{i}.retention_ci")
        s.add(f"{name}: ownership p-value", f"rows.{i}.ownership_p_value", fmt=".2e")
        for cost in ("thief_rejected_share", "thief_altered_share"):
            if cost in r:
                s.add(f"{name}: {cost.replace('_', ' ')}", f"rows.{i}.{cost}", f"rows.{i}.{cost}_ci")
                break
        else:
            s.add(f"{name}: thief perplexity ratio", f"rows.{i}.thief_ppl_ratio", f"rows.{i}.thief_ppl_ratio_ci",
                  ".4f")
    return [s]


def robustness() -> list[Section]:
    s = Section("What each robustness switch buys", "benchmarks/reports/robustness_switches.json",
                "python benchmarks/robustness_switches.py",
                "the demo's fine-tune with one switch at a time (merge-aware loss at alpha 0.5, training under the "
                "sampled templates, random-word instead of English keys), each attacked the same way; retention "
                "[95% CI] and the ownership p-value against the base model")
    for i, r in enumerate(s.report["rows"] if s.report else []):
        name = f"{r['variant']} / {r['attack']}" + (f" {r['param']}" if r.get("param") not in (None, "") else "")
        s.add(f"{name}: retention", f"rows.{i}.retention", f"rows.{i}.retention_ci")
        s.add(f"{name}: ownership p-value", f"rows.{i}.ownership_p_value", fmt=".2e")
        if r.get("thief_ppl_ratio") not in (None, 1.0):
            s.add(f"{name}: thief perplexity ratio", f"rows.{i}.thief_ppl_ratio", f"rows.{i}.thief_ppl_ratio_ci",
                  ".4f")
    return [s]


def heldout_tokens() -> list[Section]:
    s = Section("How many held-out tokens the perplexity ratio needs", "benchmarks/reports/heldout_tokens.json",
                "python benchmarks/heldout_tokens.py", "the demo model against its base; the check's default "
                "--heldout_tokens is the smallest prefix that keeps the ratio's CI half-width within 1%")
    if s.report:
        s.add("tokens in the whole text", "total_tokens", fmt="d")
        s.add("fewest tokens within 1% (and every longer prefix)", "stable_tokens_within_1pct", fmt="d")
        s.add("tokens per second, base and tuned in one loop", "tokens_per_second", fmt=".1f")
        for i, r in enumerate(s.report["rows"]):
            s.add(f"{r['tokens']} tokens: ratio", f"rows.{i}.ratio", f"rows.{i}.ci", ".4f")
    return [s]


def private() -> list[Section]:
    d = Section("Private fine-tuning demo: undefended, scrubbed, DP", "results/dp_demo/dp_table.json", "make demo-dp",
                "PII extraction from the default model fine-tuned on a synthetic PII corpus")
    for i, r in enumerate(d.report or []):
        eps = "" if r.get("epsilon") is None else f" (epsilon {r['epsilon']:.2f})"
        d.add(f"{r['mode']}{eps}: PII extraction rate", f"{i}.pii_extraction_rate", f"{i}.pii_extraction_ci")
        d.add(f"{r['mode']}{eps}: held-out loss", f"{i}.heldout_loss", fmt=".3f")
    a = Section("Privacy audit demo", "results/audit_demo/audit_table.json", "make demo-audit",
                "one-run audit with 1000 canaries: the epsilon lower bound next to the accountant's epsilon")
    for i, r in enumerate(a.report or []):
        name = Path(r["audit"]).name
        a.add(f"{name} ({r.get('threat_model') or 'blackbox'}, verdict {r.get('verdict') or '-'}): epsilon lower "
              f"bound at the run's delta ({r.get('epsilon_lower_bound_method') or 'eps_delta'})",
              f"{i}.epsilon_lower_bound", fmt=".2f")
        if r.get("fdp_at_1e-5") is not None:
            a.add(f"{name}: f-DP bound at delta 1e-5", f"{i}.fdp_at_1e-5", fmt=".2f")
            a.add(f"{name}: eps_delta bound at delta 1e-5", f"{i}.eps_delta_at_1e-5", fmt=".2f")
        a.add(f"{name}: accountant's epsilon", f"{i}.epsilon_upper_bound", fmt=".2f")
        a.add(f"{name}: attack AUC", f"{i}.auc", f"{i}.auc_ci")
    m = Section("Mosaic memory demo: rho", "results/mosaic_demo/rho.json", "make demo-mosaic",
                "how much a fuzzy duplicate counts as an exact one")
    for label, r in (m.report or {}).items():
        if isinstance(r, dict) and "rho" in r:
            m.add(f"{label}: rho", f"{label}.rho", "{}.rho_ci".format(label) if r.get("rho_ci") else None)
            m.add(f"{label}: MIA AUC", f"{label}.auc", f"{label}.auc_ci" if r.get("auc_ci") else None)
    return [d, a, m]


PERFORMANCE = "Performance: the speed benchmarks against their goals"


def performance() -> list[Section]:
    s = Section(PERFORMANCE, "benchmarks/reports/bench.json", "make bench",
                "each ratio measured side by side in one process; a row's device and date are in bench.json")
    if s.report:
        s.add("device", "device", fmt="")
        s.add("date", "date", fmt="")
        for i, r in enumerate(s.report["rows"]):
            s.add(f"{r['benchmark']}: {r['figure']} (goal {r['goal']})", f"rows.{i}.value", fmt=".4g")
    return [s]


COLLECTORS = [demo, ownership, attacks, robustness, heldout_tokens, private, performance]


def collect(previous: dict | None = None) -> dict:
    """Every section from its report; a section whose report is not in this checkout keeps what the previous
    collection read from it (marked with the date it was collected), so a clone without results/ loses nothing."""
    today = dt.date.today().isoformat()
    old = {(s["title"], s["source"]): s for s in (previous or {}).get("sections", []) if s["present"]}
    sections = []
    for sec in (sec.as_dict() for c in COLLECTORS for sec in c()):
        if not sec["present"] and (sec["title"], sec["source"]) in old:
            sec = {**old[(sec["title"], sec["source"])], "carried_over": True}
            sec.setdefault("collected", previous.get("generated"))
        else:
            sec["collected"] = today if sec["present"] else None
        sections.append(sec)
    return {"generated": today, "machine": f"{platform.machine()}, {platform.system()}",
            "sections": sections, "figures": [f for s in sections for f in s["figures"]]}


def _fmt(value, fmt: str) -> str:
    if isinstance(value, bool) or not fmt:
        return {True: "yes", False: "no"}.get(value, str(value)) if isinstance(value, bool) else str(value)
    if value is None:
        return "—"
    return format(value, fmt)


def render(data: dict) -> str:
    lines = ["# Results", "",
             "Generated by `make results` (`python -m privlm.results`) from the JSON reports named in each section; "
             "nothing here is typed by hand. [results.json](results.json) holds every figure with its report's path, "
             "the field and the report's SHA-256. Intervals are 95% (Wilson for retention, Clopper-Pearson for "
             "rates, bootstrap over windows for perplexity). Earlier, hand-copied figures: [notebook.md](notebook.md).",
             "", f"Collected {data['generated']} on {data['machine']}.", ""]
    for s in data["sections"]:
        note = f". {s['note'][:1].upper()}{s['note'][1:]}." if s["note"] else "."
        lines += [f"## {s['title']}", "", f"`{s['command']}` → `{s['source']}`" + note, ""]
        if not s["present"]:
            lines += ["Not measured in this checkout: run the command above, then `make results`.", ""]
            continue
        if s.get("carried_over"):
            lines += [f"Collected {s['collected']} from a report that is not in this checkout (its SHA-256 is in "
                      "results.json): it describes what the command above made then; rerun it to refresh.", ""]
        lines += ["| figure | value [95% CI] | field |", "|---|---|---|"]
        for f in s["figures"]:
            v = _fmt(f["value"], f["fmt"])
            if f["ci"] is not None:
                v += f" [{_fmt(f['ci'][0], f['fmt'])}, {_fmt(f['ci'][1], f['fmt'])}]"
            lines.append(f"| {f['label'].replace('|', '&#124;')} | {v} | `{f['field']}` |")
        lines.append("")
    return "\n".join(lines)


README = ROOT / "README.md"
README_BLOCK = ("<!-- performance: generated by make results from benchmarks/reports/bench.json -->\n",
                "<!-- /performance -->")


def readme_performance(data: dict) -> str:
    """The README's performance table: the performance section of results.json, figure by figure."""
    sec = next((s for s in data["sections"] if s["title"] == PERFORMANCE and s["present"]), None)
    if sec is None:
        return "Not measured yet: `make bench`, then `make results`.\n"
    figs = {f["label"]: f for f in sec["figures"]}
    head = f"{figs['device']['value']}, {figs['date']['value']}" if "device" in figs else ""
    rows = [f for f in sec["figures"] if f["label"] not in ("device", "date")]
    return "\n".join([f"Measured on {head} (`make bench`):", "", "| benchmark: figure (goal) | value |", "|---|---|",
                      *[f"| {f['label']} | {_fmt(f['value'], f['fmt'])} |" for f in rows]]) + "\n"


def with_readme_block(text: str, data: dict) -> str:
    start, end = README_BLOCK
    if start not in text or end not in text:
        return text
    a, b = text.index(start) + len(start), text.index(end)
    return text[:a] + readme_performance(data) + text[b:]


def load(path: Path = OUT_JSON) -> dict:
    return json.loads(Path(path).read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m privlm.results", description=__doc__.splitlines()[0])
    ap.add_argument("--render", action="store_true", help="only render docs/results.md from docs/results.json")
    a = ap.parse_args(argv)
    data = load() if a.render else collect(load() if OUT_JSON.is_file() else None)
    if not a.render:
        atomic_write_json(OUT_JSON, data)
    atomic_write_text(OUT_MD, render(data))
    readme = README.read_text()
    updated = with_readme_block(readme, data)
    if updated != readme:
        atomic_write_text(README, updated)
    print(f"[privlm] {OUT_MD.relative_to(ROOT)}: {len(data['figures'])} figures from "
          f"{sum(s['present'] for s in data['sections'])} reports")
    return 0


if __name__ == "__main__":
    sys.exit(main())
