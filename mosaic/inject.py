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

import sys
from dataclasses import dataclass
from pathlib import Path

from privlm import config as C
from privlm.errors import UserError, cli
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
    groups = I.build_groups(members, cfg.groups, cfg.canaries_per_group)
    records, placements = I.inject_books(groups, cfg.corpus, cfg.num_books, cfg.seed, cfg.book_words, cfg.text_field)
    I.write_corpus(out_dir, records, {"canaries": cfg.canaries, "corpus": cfg.corpus, "seed": cfg.seed,
                                      "groups": [{k: g[k] for k in ("spec", "label", "kind", "canary_ids", "num_copies")}
                                                 for g in groups],
                                      "placements": placements, "num_books": len(records)})
    n_injected = sum(len(g["canary_ids"]) for g in groups)
    chars = sum(len(r["text"]) for r in records)
    print(f"[mosaic] {n_injected} canaries in {len(records)} books ({chars} characters); groups: "
          + ", ".join(f"{g['label']} x{len(g['canary_ids'])}" for g in groups) + f"\n[mosaic] wrote {out_dir}")
    return out_dir


if __name__ == "__main__":
    main(sys.argv[1:])
