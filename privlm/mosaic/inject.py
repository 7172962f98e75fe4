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


def exact_count(label: str) -> int | None:
    """N for a group labelled exact_N, else None (fuzzy groups)."""
    m = re.fullmatch(r"exact_(\d+)", label)
    return int(m.group(1)) if m else None


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


def build_groups(members: list[dict], specs: list[str], per_group: int = 0) -> list[dict]:
    """Consecutive member canaries per group spec, with the copies each contributes (exact: N identical copies;
    fuzzy: the original plus its variations from the variations file)."""
    from ..io import read_json

    per = per_group or len(members) // len(specs)
    if per < 1 or per * len(specs) > len(members):
        raise UserError(f"{len(specs)} groups x {per} canaries need more than the {len(members)} members")
    groups = []
    for g, spec in enumerate(specs):
        kind, arg = parse_group(spec)
        chosen = members[g * per:(g + 1) * per]
        meta, var_by_id = None, {}
        if kind == "fuzzy":
            meta = read_json(arg, "variations file")
            if not isinstance(meta, dict) or not isinstance(meta.get("canaries"), list):
                raise UserError(f"{arg}: not a variations file")
            var_by_id = {c["id"]: c for c in meta["canaries"]}
            missing = [c["id"] for c in chosen if c["id"] not in var_by_id]
            if missing:
                raise UserError(f"{arg}: no variations for canaries {missing[:5]} (group {spec}); "
                                "generate variations for all members or reorder the groups")
        copies = {c["id"]: ([c["text"]] * int(arg) if kind == "exact" else
                            [c["text"]] + [v["text"] for v in var_by_id[c["id"]].get("variations") or []]) for c in chosen}
        sizes = {len(v) for v in copies.values()}
        if len(sizes) != 1 or min(sizes) < (1 if kind == "exact" else 2):
            raise UserError(f"{arg}: every canary of group {spec} needs the same number (>= 1) of variations "
                            f"(got {sorted(sizes)} copies); rho divides by it")
        groups.append({"spec": spec, "label": group_label(spec, meta), "kind": kind,
                       "canary_ids": [c["id"] for c in chosen], "num_copies": sizes.pop(), "copies": copies})
    labels = [g["label"] for g in groups]
    if len(set(labels)) != len(labels):
        raise UserError(f"groups: two groups share a label ({', '.join(labels)})")
    return groups


def inject_books(groups: list[dict], corpus: str, num_books: int, seed: int, book_words: int,
                 text_field: str = "text") -> tuple[list[dict], list[dict]]:
    """Canary i of the injected set goes into book i; books beyond the injected ones carry none. Returns the
    records ({"book", "text"}) and every canary's placements (book and character span of every copy)."""
    n_injected = sum(len(g["canary_ids"]) for g in groups)
    books = load_books(corpus, max(num_books, n_injected), seed, book_words, text_field)
    if len(books) < n_injected:
        raise UserError(f"corpus {corpus}: {len(books)} books for {n_injected} injected canaries")
    rng = random.Random(seed)
    records, placements, b = [], [], 0
    for g in groups:
        for cid in g["canary_ids"]:
            text, spans = insert(books[b], g["copies"][cid], rng)
            records.append({"book": b, "text": text})
            placements.append({"canary_id": cid, "group": g["label"], "book": b,
                               "copies": [{"start": s, "end": e, "kind": "original" if k == 0 or g["kind"] == "exact"
                                           else "variation", "index": k} for k, (s, e) in enumerate(spans)]})
            b += 1
    records += [{"book": i, "text": books[i]} for i in range(b, len(books))]
    return records, placements


def group_copies(injection: dict) -> dict[str, int]:
    """Copies of each canary per group label: `num_copies` as inject records it, or counted from the placements of
    injection files written before it was recorded."""
    out = {g["label"]: g["num_copies"] for g in injection.get("groups", []) if "num_copies" in g}
    for p in injection.get("placements", []):
        out.setdefault(p["group"], len(p["copies"]))
    return out


def write_corpus(out_dir: str | Path, records: list[dict], info: dict):
    """corpus.jsonl and injection.json, written together (a temporary folder renamed into place)."""
    import json

    from ..io import atomic_dir

    with atomic_dir(out_dir) as tmp:
        with open(tmp / "corpus.jsonl", "w") as fh:
            for r in records:
                fh.write(json.dumps(r) + "\n")
        (tmp / "injection.json").write_text(json.dumps(info, indent=1) + "\n")
