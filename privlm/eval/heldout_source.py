"""How privlm/resources/heldout_english.txt was made: prose paragraphs of the Python Language Reference
(`pydoc_data.topics`, shipped with CPython) followed by prose paragraphs of the standard library's docstrings.
Human-written English under the PSF License 2.0, which allows redistribution; the file is frozen in the repo so
that every machine measures on the same text, whatever its Python version.

    python -m privlm.eval.heldout_source privlm/resources/heldout_english.txt

Code (indented blocks, `>>>` lines), rules and short fragments are dropped: what is left is sentences.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
import sysconfig

SKIP = {"antigravity", "this", "idlelib", "turtledemo", "tkinter", "turtle", "pydoc_data", "test", "lib2to3"}


def prose(text: str, min_words: int = 8) -> list[str]:
    """Paragraphs of running text: blank lines, indented code and rules end a paragraph; fragments and paragraphs
    that are mostly symbols are dropped."""
    paras, buf = [], []
    for line in text.splitlines():
        if not line.strip() or line.startswith(("   ", "\t")) or ">>>" in line or set(line.strip()) <= set("*=-~^"):
            if buf:
                paras.append(" ".join(buf))
                buf = []
            continue
        buf.append(line.strip())
    if buf:
        paras.append(" ".join(buf))
    return [p for p in paras if len(p.split()) >= min_words
            and sum(c.isalpha() or c.isspace() for c in p) / len(p) > 0.85]


def stdlib_docstrings() -> list[str]:
    stdlib = sysconfig.get_paths()["stdlib"]
    out = []
    for m in sorted(m.name for m in pkgutil.iter_modules([stdlib]) if not m.name.startswith("_")):
        if m in SKIP:
            continue
        try:
            mod = importlib.import_module(m)
        except Exception:  # platform-specific modules
            continue
        docs = [inspect.getdoc(mod) or ""]
        docs += [inspect.getdoc(o) or "" for _, o in sorted(vars(mod).items())
                 if getattr(o, "__module__", None) == m and (inspect.isclass(o) or inspect.isfunction(o))]
        for d in docs:
            out += prose(d)
    return out


def build(max_words: int = 40_000) -> str:
    from pydoc_data.topics import topics

    paras = [p for name in sorted(topics) for p in prose(topics[name])] + stdlib_docstrings()
    seen, out, words = set(), [], 0
    for p in paras:
        if p in seen:
            continue
        seen.add(p)
        out.append(p)
        words += len(p.split())
        if words >= max_words:
            break
    return "\n\n".join(out) + "\n"


if __name__ == "__main__":
    from pathlib import Path

    Path(sys.argv[1]).write_text(build())
