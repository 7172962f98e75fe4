"""Docs that cannot drift: the flag tables are what the parsers accept (every flag of every entry point documented),
every flag the prose names exists, the README stays a front page, and docs/results.md is what docs/results.json
renders to (no figure typed by hand)."""
from __future__ import annotations

import json
import re

import pytest

from conftest import ROOT
from privlm import docs, results

# flags of the tools around ours (the deepspeed launcher, dask, pip, coreutils) and the README's deliberate typo
EXTERNAL = {"--hostfile", "--include", "--exclude", "--module", "--num_nodes", "--num_gpus", "--master_port",
            "--master_addr", "--nthreads", "--no-deps", "--uniq", "--help", "--learnin_rate"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]")


def _known() -> set[str]:
    known = set(EXTERNAL)
    for entry in docs.ENTRIES:
        known |= set(docs.flags(entry))
    # plain-argparse tools: the benchmarks, the audit's bound, the report, the docs themselves, the sweep script
    for f in [*ROOT.glob("benchmarks/*.py"), ROOT / "launch_multigpu.sh", *ROOT.glob("privlm/**/*.py")]:
        known |= set(re.findall(r"[\"'](--[a-z][a-z0-9_-]*[a-z0-9])", f.read_text()))
    return known


def _prose(path) -> str:
    return docs.BLOCK.sub("", path.read_text())  # generated tables are checked by --check


def test_generated_flag_tables_are_current():
    assert docs.main(["--check"]) == 0, "run `make docs`"


def test_every_entry_point_has_its_flag_table_and_every_flag_is_in_it():
    text = "".join(p.read_text() for p in docs.pages())
    for entry in docs.ENTRIES:
        m = re.search(rf"<!-- flags: {re.escape(entry)} -->\n(.*?)<!-- /flags -->", text, re.S)
        assert m, f"no flag table for {entry}"
        for flag in docs.flags(entry):
            assert f"`{flag}`" in m.group(1), (entry, flag)


@pytest.mark.parametrize("page", ["README.md", *[f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md"))]])
def test_every_flag_the_docs_name_exists(page):
    unknown = sorted(set(FLAG.findall(_prose(ROOT / page))) - _known())
    assert not unknown, f"{page} names flags no script accepts: {unknown}"


def test_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for must in ("make demo", "make test", "docs/results.md", "docs/fingerprinting.md", "docs/private_finetuning.md",
                 "docs/mosaic.md", "docs/seeds.md"):
        assert must in readme, must
    for link in re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)\)", readme):
        assert (ROOT / link).is_file(), link


def test_results_page_is_rendered_from_its_json():
    data = results.load(ROOT / "docs" / "results.json")
    assert (ROOT / "docs" / "results.md").read_text() == results.render(data), "run `make results`"
    for fig in data["figures"]:
        assert fig["source"] and re.fullmatch(r"[0-9a-f]{64}", fig["source_sha256"]), fig


def test_readme_performance_table_is_generated_from_the_bench_json():
    readme = (ROOT / "README.md").read_text()
    assert results.README_BLOCK[0] in readme and results.README_BLOCK[1] in readme
    data = results.load(ROOT / "docs" / "results.json")
    assert results.with_readme_block(readme, data) == readme, "run `make results`"
    sec = next(s for s in data["sections"] if s["title"] == results.PERFORMANCE)
    if sec["present"]:  # every figure of the table is a row of bench.json
        for f in sec["figures"]:
            assert f"| {f['label']} |" in readme or f["label"] in ("device", "date"), f["label"]


def test_results_keep_a_section_whose_report_is_gone_and_say_when_it_was_collected(monkeypatch, tmp_path):
    """A clone has no results/: collecting there keeps the previous figures (dated), never drops them; a report
    that is there replaces them."""
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"x": 0.5, "ci": [0.4, 0.6]}))

    def collector():
        s = results.Section("t", str(report), "make t")
        if s.report:
            s.add("x", "x", "ci")
        return [s]

    monkeypatch.setattr(results, "COLLECTORS", [collector])
    first = results.collect(None)
    assert first["sections"][0]["present"] and first["figures"][0]["value"] == 0.5
    report.unlink()
    again = results.collect({**first, "generated": "2026-01-01"})
    assert again["sections"][0]["present"] and again["figures"][0]["value"] == 0.5
    assert "report that is not in this checkout" in results.render(again)
    assert "not in this checkout" not in results.render(first)
    assert not results.collect(None)["sections"][0]["present"]
