"""Inject canaries into documents ("books"): canary i goes into book i, each copy at a random word start.

Groups say what each canary contributes: `exact:N` injects N identical copies; `fuzzy:FILE` injects the original
plus all its variations from a variations file (the paper's 1 + 9 copies). Every copy's character span in the
final book is recorded, so the text at a recorded span is the injected copy and removing the spans gives back
the original book.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

from ..errors import UserError


def parse_group(spec: str) -> tuple[str, str]:
    kind, _, arg = spec.partition(":")
    if kind == "exact":
        try:
            if int(arg) < 1:
                raise ValueError
        except ValueError:
            raise UserError(f"group {spec!r}: exact:N needs N >= 1") from None
        return kind, arg
    if kind == "fuzzy" and arg:
        return kind, arg
    raise UserError(f"group {spec!r}: expected exact:N or fuzzy:VARIATIONS.json")


def group_label(spec: str, variations_meta: dict | None = None) -> str:
    kind, arg = parse_group(spec)
    if kind == "exact":
        return f"exact_{int(arg)}"
    m = variations_meta or {}
    param = {"insertion": "X", "shuffle": "tau", "paraphrase": ""}.get(m.get("strategy"), "R")
    value = {"X": m.get("insert_tokens"), "tau": m.get("kendall_tau"), "R": m.get("num_injection_points"),
             "": ""}[param]
    return f"{m.get('strategy', Path(arg).stem)}_{param}{value}".rstrip("_")


def faker_books(n: int, seed: int, words: int) -> list[str]:
    """Offline filler: English-word paragraphs from Faker, one string per book."""
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(seed)
    books = []
    for _ in range(n):
        paras, count = [], 0
        while count < words:
            p = fake.paragraph(nb_sentences=6)
            paras.append(p)
            count += len(p.split())
        books.append("\n\n".join(paras))
    return books


def load_books(spec: str, n: int, seed: int, words: int, text_field: str = "text") -> list[str]:
    """`faker` (offline filler), a folder of .txt files (one book each), a local jsonl/csv/parquet/txt file, or a
    hub dataset (e.g. imperial-cpg/project-gutenberg-extended)."""
    if spec == "faker":
        return faker_books(n, seed, words)
    p = Path(spec)
    if p.is_dir():
        books = [f.read_text(errors="replace") for f in sorted(p.glob("*.txt"))]
    else:
        from ..data import load_records

        recs = load_records(spec)
        if recs and text_field not in recs[0]:
            raise UserError(f"corpus {spec}: records have no {text_field!r} field (have {', '.join(recs[0])})")
        books = [str(r[text_field]) for r in recs]
    books = [b for b in books if b.strip()]
    if not books:
        raise UserError(f"corpus {spec}: no documents with text")
    rng = random.Random(seed)
    if len(books) > n:
        books = rng.sample(books, n)
    return books


def word_starts(text: str) -> list[int]:
    return [m.start() for m in re.finditer(r"(?<= )\S", text)]


def insert(book: str, copies: list[str], rng: random.Random) -> tuple[str, list[tuple[int, int]]]:
    """Insert each copy (followed by a space) at a distinct random word start. Returns (text, spans) with
    spans in the order of `copies`, as [start, end) offsets into the returned text."""
    starts = word_starts(book)
    if len(starts) < len(copies):
        raise UserError(f"a book has {len(starts)} word starts but {len(copies)} copies must go in; "
                        "use longer books")
    at = sorted(rng.sample(starts, len(copies)))
    order = list(range(len(copies)))
    rng.shuffle(order)  # which copy lands where
    pieces, spans, prev, shift = [], [None] * len(copies), 0, 0
    for pos, k in zip(at, order):
        pieces.append(book[prev:pos])
        start = pos + shift
        spans[k] = (start, start + len(copies[k]))
        pieces.append(copies[k] + " ")
        shift += len(copies[k]) + 1
        prev = pos
    pieces.append(book[prev:])
    return "".join(pieces), spans  # type: ignore[return-value]
