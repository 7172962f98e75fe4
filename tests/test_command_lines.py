"""Command lines that cannot rot: every command in README.md's and docs/*.md's bash blocks, in every script's docstring and in every
config's launch comment is parsed with its script's real parser (flags, YAML, overrides, validation), and every repo
file it names must exist (or be made by an earlier command of the same block)."""
from __future__ import annotations

import ast
import importlib
import re
import shlex

import pytest

from conftest import ROOT, config_class
from privlm import config as C
from privlm.errors import UserError

REPO_DIRS = ("configs/", "privlm/", "mosaic/", "benchmarks/", "tests/")
PYTHON = re.compile(r"^(?:\S*/)?python3?$")


def _join_continuations(lines: list[str]) -> list[str]:
    out, cur = [], ""
    for line in lines:
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            cur += stripped[:-1] + " "
            continue
        out.append(cur + stripped)
        cur = ""
    if cur:
        out.append(cur)
    return out


def _strip_comment(line: str) -> str:
    return re.split(r"\s#\s", " " + line, maxsplit=1)[0].strip()


def readme_blocks() -> list[tuple[str, list[str]]]:
    blocks = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        name = str(page.relative_to(ROOT))
        for i, m in enumerate(re.finditer(r"```bash\n(.*?)```", page.read_text(), re.S)):
            blocks.append((f"{name} bash block {i + 1}", _join_continuations(m.group(1).splitlines())))
    return blocks


def docstring_blocks() -> list[tuple[str, list[str]]]:
    blocks = []
    for path in sorted([*ROOT.glob("*.py"), *(ROOT / "mosaic").glob("*.py")]):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        lines = [line for line in _join_continuations(doc.splitlines())
                 if re.match(r"\s*(python|deepspeed)\b", line)]
        if lines:
            blocks.append((str(path.relative_to(ROOT)), [line.strip() for line in lines]))
    return blocks


def config_blocks() -> list[tuple[str, list[str]]]:
    blocks = []
    for yml in sorted((ROOT / "configs").rglob("*.yml")):
        lines = [m.group(1) for m in re.finditer(r"^#\s*launch:\s*(.+)$", yml.read_text(), re.M)]
        assert lines, f"{yml} has no `# launch:` line"
        blocks.append((str(yml.relative_to(ROOT)), lines))
    return blocks


def split_commands(line: str) -> list[list[str]]:
    line = _strip_comment(line)
    line = re.sub(r"\$\([^)]*\)", "SUBST", line)  # a command substitution is one word to the outer command
    cmds = []
    for part in re.split(r"\s*(?:&&|;|\|\|)\s*", line):
        toks = shlex.split(part) if part.strip() else []
        toks = [t for t in toks if t != "..."]
        kept, depth = [], 0  # drop optional groups written as [key=value ...]
        for t in toks:
            depth += t.count("[") if t.startswith("[") else 0
            if depth == 0:
                kept.append(t)
            depth -= t.count("]") if depth and t.endswith("]") else 0
        while kept and re.match(r"^[A-Z_]+=", kept[0]):  # VAR=value prefixes
            kept = kept[1:]
        if kept:
            cmds.append(kept)
    return cmds


def target(cmd: list[str]) -> tuple[str, list[str]] | None:
    """(module name, its arguments) for a command that runs one of our entry points, else None."""
    head, rest = cmd[0], cmd[1:]
    if head == "deepspeed":
        while rest and rest[0].startswith("-") and rest[0] != "--module":
            rest = rest[2:] if "=" not in rest[0] else rest[1:]
        if rest[:1] == ["--module"]:
            rest = ["-m"] + rest[1:]
        head = "python"
    if not PYTHON.match(head):
        return None
    if rest[:2] == ["-m", "mosaic"] and len(rest) > 2:
        return (f"mosaic.{rest[2]}", rest[3:]) if "<" not in rest[2] else None
    if rest[:3] == ["-m", "privlm.audit", "run"]:
        return "privlm.audit.run", rest[3:]
    if rest[:1] == ["-m"]:
        return None  # python -m privlm.report and the like take plain arguments
    if rest and rest[0].endswith(".py"):
        script = rest[0]
        assert (ROOT / script).is_file(), f"{script} does not exist"
        if script.startswith("benchmarks/"):
            return None
        return script[:-3].replace("/", "."), rest[1:]
    return None


def named_files(args: list[str]) -> list[str]:
    out = []
    for a in args:
        value = a.split("=", 1)[1] if "=" in a else a  # key=value overrides and --flag=value
        if value.startswith("-") or "<" in value:
            continue
        if value.startswith(REPO_DIRS) or re.fullmatch(r"[\w-]+\.(py|sh)", value):
            out.append(value)
    return out


BLOCKS = readme_blocks() + docstring_blocks() + config_blocks()


def test_sources_were_found():
    names = [b[0] for b in BLOCKS]
    assert any(n.startswith("README.md") for n in names)
    for s in ("finetune_multigpu.py", "dp_finetune.py", "check_fingerprints.py", "mosaic/train.py"):
        assert s in names, f"no command lines found in {s}'s docstring"


@pytest.mark.parametrize("source,lines", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_command_lines_parse_and_name_existing_files(source, lines, monkeypatch):
    monkeypatch.chdir(ROOT)
    created: set[str] = set()
    checked = 0
    for line in lines:
        for cmd in split_commands(line):
            for f in named_files(cmd):
                assert (ROOT / f).exists() or f in created, f"{source}: `{' '.join(cmd)}` names {f}, which is missing"
            t = target(cmd)
            created.update(a for a in cmd if not a.startswith("-"))
            if t is None:
                continue
            module, args = t
            mod = importlib.import_module(module)
            extra = getattr(mod, "report_args", None) or getattr(mod, "audit_args", None)
            try:
                C.parse(config_class(mod), args, extra_args=extra)
            except UserError as e:
                pytest.fail(f"{source}: `{' '.join(cmd)}` does not parse: {e}")
            checked += 1
    if source.startswith("configs/"):
        assert checked, f"{source}: no command of ours was recognised"


def test_a_renamed_flag_or_missing_config_is_caught():
    """The harness itself: a stale flag and a config that is not in the repo both fail."""
    mod = importlib.import_module("dp_finetune")
    with pytest.raises(UserError, match="--no_such_flag"):
        C.parse(config_class(mod), ["--no_such_flag", "1"], extra_args=mod.report_args)
    (cmd,) = split_commands("python dp_finetune.py --config configs/dp/synthetic_dp8_cpu.yml  # one process")
    assert named_files(cmd) == ["dp_finetune.py", "configs/dp/synthetic_dp8_cpu.yml"]
    assert not (ROOT / "configs/dp/synthetic_dp8_cpu.yml").exists()
    (cmd,) = split_commands("deepspeed --num_gpus 8 --module mosaic train --model M --epochs 1")
    assert target(cmd) == ("mosaic.train", ["--model", "M", "--epochs", "1"])
