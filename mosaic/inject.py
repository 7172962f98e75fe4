"""Inject canaries into books: canary i of the injected set goes into book i.

    python -m mosaic inject --canaries results/mosaic/canaries.json --groups exact:1 exact:2 exact:5 \
        fuzzy:results/mosaic/variations_mlm_R10.json --canaries_per_group 16 --corpus faker \
        --output_dir results/mosaic/corpus
    python -m mosaic inject --groups exact:10 --corpus imperial-cpg/project-gutenberg-extended ...   # paper-style

Groups take consecutive member canaries, `canaries_per_group` each: `exact:N` injects N identical copies,
`fuzzy:FILE` the original plus its variations from FILE. Writes <output_dir>/corpus.jsonl ({"book", "text"})
and <output_dir>/injection.json (groups, and for every canary its book and the character span of every copy).
"""
from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from privlm import config as C
from privlm.errors import UserError, cli
from privlm.io import atomic_dir, read_json
from privlm.mosaic import canaries as canary_lib
from privlm.mosaic import inject as I


@dataclass
class InjectConfig:
    canaries: str = C.field("results/mosaic/canaries.json")
    groups: list[str] = C.field(default_factory=lambda: ["exact:1"], help="exact:N or fuzzy:VARIATIONS.json, one per group")
    canaries_per_group: int = C.field(0, help="0: all member canaries split evenly over the groups")
    corpus: str = C.field("faker", help="faker (offline filler), a folder of .txt books, a jsonl/csv/parquet/txt "
                                        "file, or a hub dataset")
    text_field: str = C.field("text")
    num_books: int = C.field(0, help="books in the corpus (0: one per injected canary); extra books carry none")
    book_words: int = C.field(400, help="faker: words per book")
    seed: int = C.field(42)
    output_dir: str = C.field("results/mosaic/corpus", hash=False)
    overwrite: bool = C.field(False, hash=False)

    def validate(self):
        p = []
        if not self.groups:
            p.append("groups: give at least one group")
        for g in self.groups:
            try:
                I.parse_group(g)
            except UserError as e:
                p.append(f"groups: {e}")
        if self.canaries_per_group < 0 or self.num_books < 0:
            p.append("canaries_per_group/num_books: must be >= 0")
        if self.book_words < 10:
            p.append("book_words: must be >= 10")
        return p


@cli
def main(argv=None) -> Path:
    cfg = C.parse(InjectConfig, argv, __doc__)
    out_dir = Path(cfg.output_dir)
    if (out_dir / "injection.json").exists() and not cfg.overwrite:
        raise UserError(f"{out_dir} already holds an injected corpus; pass --overwrite to replace it")
    members = canary_lib.load(cfg.canaries)["members"]
    per = cfg.canaries_per_group or len(members) // len(cfg.groups)
    if per < 1 or per * len(cfg.groups) > len(members):
        raise UserError(f"{len(cfg.groups)} groups x {per} canaries need more than the {len(members)} members")
    groups = []
    for g, spec in enumerate(cfg.groups):
        kind, arg = I.parse_group(spec)
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
        groups.append({"spec": spec, "label": I.group_label(spec, meta), "kind": kind,
                       "canary_ids": [c["id"] for c in chosen],
                       "copies": {c["id"]: ([c["text"]] * int(arg) if kind == "exact" else
                                            [c["text"]] + [v["text"] for v in var_by_id[c["id"]]["variations"]])
                                  for c in chosen}})
    labels = [g["label"] for g in groups]
    if len(set(labels)) != len(labels):
        raise UserError(f"groups: two groups share a label ({', '.join(labels)})")
    n_injected = per * len(groups)
    n_books = max(cfg.num_books, n_injected)
    books = I.load_books(cfg.corpus, n_books, cfg.seed, cfg.book_words, cfg.text_field)
    if len(books) < n_injected:
        raise UserError(f"corpus {cfg.corpus}: {len(books)} books for {n_injected} injected canaries")
    rng = random.Random(cfg.seed)
    records, placements, b = [], [], 0
    for g in groups:
        for cid in g["canary_ids"]:
            copies = g["copies"][cid]
            text, spans = I.insert(books[b], copies, rng)
            records.append({"book": b, "text": text})
            placements.append({"canary_id": cid, "group": g["label"], "book": b,
                               "copies": [{"start": s, "end": e, "kind": "original" if k == 0 or g["kind"] == "exact"
                                           else "variation", "index": k} for k, (s, e) in enumerate(spans)]})
            b += 1
    records += [{"book": i, "text": books[i]} for i in range(b, len(books))]
    with atomic_dir(out_dir) as tmp:
        with open(tmp / "corpus.jsonl", "w") as fh:
            for r in records:
                fh.write(json.dumps(r) + "\n")
        info = {"canaries": cfg.canaries, "corpus": cfg.corpus, "seed": cfg.seed,
                "groups": [{k: g[k] for k in ("spec", "label", "kind", "canary_ids")} for g in groups],
                "placements": placements, "num_books": len(records)}
        (tmp / "injection.json").write_text(json.dumps(info, indent=1) + "\n")
    chars = sum(len(r["text"]) for r in records)
    print(f"[mosaic] {n_injected} canaries in {len(records)} books ({chars} characters); groups: "
          + ", ".join(f"{g['label']} x{len(g['canary_ids'])}" for g in groups) + f"\n[mosaic] wrote {out_dir}")
    return out_dir


if __name__ == "__main__":
    main(sys.argv[1:])
