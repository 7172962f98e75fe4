"""Membership inference on reference canaries: every attack, per canary group, with ROC AUC and TPR at low FPR.

    python -m mosaic mia --model results/mosaic/target/final_model --reference default \
        --canaries results/mosaic/canaries.json --injection results/mosaic/corpus/injection.json \
        --output results/mosaic/mia.json --rho_attack ratio

Attacks (privlm/mia, one module each): loss, ratio (needs --reference), zlib, lowercase (its own forward pass),
min_k (k lowest tokens), min_k_pct (lowest k%), min_kpp (min-k%++). Token-level statistics come from one forward
pass per model. With an injection file, members are scored per group (exact_N, mlm_R10, ...) against all
non-members, and <output stem>_exact.json / _variants.json (the rho step's inputs) are written for --rho_attack.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privlm import config as C
from privlm import models
from privlm.errors import UserError, cli
from privlm.io import atomic_write_json, read_json, refuse_existing
from privlm.mia import ATTACKS, metrics, needs_of
from privlm.mia.scoring import score_texts
from privlm.mosaic import canaries as canary_lib
from privlm.mosaic import figures
from privlm.mosaic.inject import exact_count, group_copies
from privlm.mosaic.rho import bootstrap_aucs


@dataclass
class MiaConfig:
    model: str = C.field("results/mosaic/target/final_model", aliases=("--model_path", "--target_model"))
    reference: str = C.field("default", aliases=("--reference_model",), help="reference model of the ratio attack")
    canaries: str = C.field("results/mosaic/canaries.json")
    injection: str | None = C.field(None, help="injection.json from `mosaic inject`: score members per group")
    attacks: list[str] = C.field(default_factory=lambda: ["loss", "ratio", "zlib", "lowercase", "min_k",
                                                          "min_k_pct", "min_kpp"])
    k: int = C.field(20, help="min_k: number of lowest tokens")
    k_pct: float = C.field(0.2, help="min_k_pct / min_kpp: fraction of lowest tokens")
    batch_size: int = C.field(16)
    dtype: str = C.field("auto", choices=["auto", "float32", "bfloat16", "float16"])
    rho_attack: str = C.field("ratio", help="attack whose per-group AUCs feed the rho step (the paper: ratio)")
    output: str = C.field("results/mosaic/mia.json", hash=False)
    overwrite: bool = C.field(False, hash=False)

    def validate(self):
        p = [f"attacks: unknown attack {a!r} (known: {', '.join(sorted(ATTACKS))})" for a in self.attacks
             if a not in ATTACKS]
        if self.rho_attack not in ATTACKS:
            p.append(f"rho_attack: unknown attack {self.rho_attack!r}")
        if self.k < 1 or self.batch_size < 1:
            p.append("k/batch_size: must be >= 1")
        if not 0 < self.k_pct <= 1:
            p.append("k_pct: must be in (0, 1]")
        return p


@cli
def main(argv=None) -> dict:
    cfg = C.parse(MiaConfig, argv, __doc__)
    refuse_existing(cfg.output, cfg.overwrite)
    data = canary_lib.load(cfg.canaries)
    groups: dict[str, list[int]] = {}
    copies: dict[str, int] = {}
    if cfg.injection:
        injection = read_json(cfg.injection, "injection file")
        groups = {g["label"]: g["canary_ids"] for g in injection["groups"]}
        copies = group_copies(injection)
    ids = set().union(*map(set, groups.values())) if groups else {c["id"] for c in data["members"]}
    members = [c for c in data["members"] if c["id"] in ids]
    nonmembers = data["nonmembers"]
    if not members or not nonmembers:
        raise UserError(f"{cfg.canaries}: need member and non-member canaries")
    texts = [c["text"] for c in members] + [c["text"] for c in nonmembers]
    needs = needs_of(cfg.attacks)

    tok = models.load_tokenizer(cfg.model)
    model = models.load_model(cfg.model, dtype=cfg.dtype, device=models.device())
    scores = score_texts(model, tok, texts, cfg.attacks, reference=cfg.reference, dtype=cfg.dtype,
                         batch_size=cfg.batch_size, k=cfg.k, k_pct=cfg.k_pct)
    del model

    nm = len(members)
    member_ids = [c["id"] for c in members]
    result = {"model": cfg.model, "reference": cfg.reference if "reference" in needs else None,
              "canaries": cfg.canaries, "injection": cfg.injection, "n_members": nm, "n_nonmembers": len(nonmembers),
              "attacks": {}, "scores": {}}
    curves = {}
    for name in cfg.attacks:
        s = scores[name]
        m, n = s[:nm], s[nm:]
        r_all = metrics.roc(m, n)
        entry = {"all": r_all, "groups": {}}
        curves[name] = metrics.roc_curve(m, n) + (r_all["auc"],)
        for label, gids in groups.items():
            sel = np.isin(member_ids, gids)
            entry["groups"][label] = metrics.roc(m[sel], n)
        result["attacks"][name] = entry
        result["scores"][name] = {"members": m.tolist(), "nonmembers": n.tolist()}
    result["member_ids"] = member_ids
    if cfg.rho_attack in result["attacks"]:  # one row per group, as tables and sweeps read them
        e = result["attacks"][cfg.rho_attack]
        rows = [{"name": lb, "kind": "exact" if exact_count(lb) is not None else "fuzzy",
                 "repetitions": copies.get(lb, exact_count(lb)), **_row(r)} for lb, r in e["groups"].items()]
        if not groups:
            rows.append({"name": "members", "kind": "exact", "repetitions": None, **_row(e["all"])})
        rows.append({"name": "nonmembers", "kind": "nonmember", "repetitions": 0, "n": len(nonmembers),
                     "auc": None, "auc_ci": None, "tpr_at_fpr": None})
        result["groups_attack"], result["groups"] = cfg.rho_attack, rows
        result["pooled"] = len(groups) > 1  # all groups in one target model (the paper trains one per setting)

    out = Path(cfg.output)
    atomic_write_json(out, result)
    figures.roc_png(curves, out.with_suffix(".roc.png"), "ROC, all member canaries vs non-members")
    print(f"[mosaic] {nm} members, {len(nonmembers)} non-members; AUC (TPR@1%FPR):")
    labels = ["all"] + list(groups)
    print("  " + f"{'attack':<10}" + "".join(f"{lb:>14}" for lb in labels))
    for name, e in result["attacks"].items():
        row = [e["all"]] + [e["groups"][lb] for lb in groups]
        print("  " + f"{name:<10}" + "".join(f"{r['auc']:>8.3f} ({r['tpr@0.01fpr']:.2f})" for r in row))
    print("  95% intervals of the AUCs (bootstrap over canaries):")
    for name, e in result["attacks"].items():
        row = [e["all"]] + [e["groups"][lb] for lb in groups]
        print("  " + f"{name:<10}" + "".join(f"{_ci(r['auc_ci']):>14}" for r in row))
    if groups and cfg.rho_attack in result["attacks"]:
        g = result["attacks"][cfg.rho_attack]["groups"]
        exact = {str(exact_count(lb)): r["auc"] for lb, r in g.items() if exact_count(lb) is not None}
        variants = {lb: {"auc": r["auc"], "copies": copies.get(lb)} for lb, r in g.items() if exact_count(lb) is None}
        if exact:
            atomic_write_json(out.parent / f"{out.stem}_exact.json", exact)
        if variants:
            atomic_write_json(out.parent / f"{out.stem}_variants.json", variants)
        if exact or variants:  # rho_ci (here or over a sweep's targets): every group's AUC redrawn, replicate by replicate
            s = result["scores"][cfg.rho_attack]
            m = np.asarray(s["members"])
            boot = bootstrap_aucs({lb: m[np.isin(member_ids, gids)] for lb, gids in groups.items()},
                                  np.asarray(s["nonmembers"]))
            atomic_write_json(out.parent / f"{out.stem}_bootstrap.json",
                              {"attack": cfg.rho_attack, "variants": {lb: boot[lb] for lb in variants},
                               "exact": {str(exact_count(lb)): boot[lb] for lb in groups
                                         if exact_count(lb) is not None}}, indent=None)
    if result.get("pooled"):
        print(f"[mosaic] pooled: all {len(groups)} groups share one target model (the paper trains one per setting)")
    print(f"[mosaic] wrote {out} and {out.with_suffix('.roc.png')}")
    return result


def _row(r: dict) -> dict:
    return {"n": r["n_members"], "auc": r["auc"], "auc_ci": r["auc_ci"], "tpr_at_fpr": r["tpr_at_fpr"]}


def _ci(ci) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "-"


if __name__ == "__main__":
    main(sys.argv[1:])
