"""Generated documentation: each pipeline page's flag tables from the entry points' own parsers (so --help and the
docs cannot disagree), and docs/results.md from the JSON reports (see privlm.results).

    python -m privlm.docs            # rewrite the generated blocks in docs/*.md
    python -m privlm.docs --check    # exit 1 when a block is stale (a test runs this)

A generated block sits between `<!-- flags: ENTRY -->` and `<!-- /flags -->`; the text around it is written by hand."""
from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

from . import config as C

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# the command a user types -> the module whose main() parses it
ENTRIES = {
    "generate_finetuning_data.py": "generate_finetuning_data",
    "finetune_multigpu.py": "finetune_multigpu",
    "check_fingerprints.py": "check_fingerprints",
    "attack_fingerprints.py": "attack_fingerprints",
    "dp_finetune.py": "dp_finetune",
    "sample.py": "sample",
    "python -m privlm.audit run": "privlm.audit.run",
    **{f"python -m mosaic {s}": f"mosaic.{s}" for s in ("canaries", "variations", "inject", "train", "mia", "rho",
                                                          "scan", "sweep", "plot")},
}
BLOCK = re.compile(r"(<!-- flags: (?P<entry>[^>]+?) -->\n)(?P<body>.*?)(<!-- /flags -->)", re.S)


def parser_of(entry: str) -> argparse.ArgumentParser:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    module = importlib.import_module(ENTRIES[entry])
    with C.capture():
        try:
            module.main([])
        except C.Captured as got:
            return got.parser
    raise RuntimeError(f"{entry}: main() did not build its parser through privlm.config.parse")


def _documented(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options a user can pass: not positional, not hidden, not argparse's own -h."""
    return [a for a in parser._actions
            if a.help != argparse.SUPPRESS and a.option_strings and "-h" not in a.option_strings]


def flags(entry: str) -> list[str]:
    """Every option string the entry accepts (aliases included)."""
    return [o for a in _documented(parser_of(entry)) for o in a.option_strings if o.startswith("--")]


def table(entry: str) -> str:
    rows = ["| flag | meaning [type, default] |", "|---|---|"]
    parser = parser_of(entry)
    leaves = C._leaves(parser.config_class)
    for a in _documented(parser):
        names = ", ".join(f"`{o}`" for o in a.option_strings)
        text = (a.help or "").replace("%%", "%").replace("\n", " ")
        choices = a.choices or (leaves[a.dest][0].metadata.get("choices") if a.dest in leaves else None)
        if choices:
            text += " One of: " + ", ".join(map(str, choices)) + "."
        text = text.replace("|", "\\|")
        rows.append(f"| {names} | {text} |")
    return "\n".join(rows) + "\n"


def render(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + table(m.group("entry")) + m.group(4), text)


def pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m privlm.docs", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when a generated block is stale")
    a = ap.parse_args(argv)
    stale = []
    for page in pages():
        old = page.read_text()
        new = render(old)
        if new != old:
            stale.append(page)
            if not a.check:
                page.write_text(new)
    if a.check and stale:
        print("stale generated docs (run `make docs`): " + ", ".join(str(p.relative_to(ROOT)) for p in stale),
              file=sys.stderr)
        return 1
    if not a.check:
        print(f"[privlm] docs: {len(stale)} page(s) regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
