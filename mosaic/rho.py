"""rho: how many exact duplicates a fuzzy duplicate is worth (the Mosaic paper's metric).

    python -m mosaic rho --exact results/mosaic/mia_exact.json --variants results/mosaic/mia_variants.json \
        --output results/mosaic/rho.json

E maps repetition count to AUC ({"1": 0.61, ..., "10": 0.96}); V maps a label to {"auc": A, "copies": K}, K the
fuzzy copies of each canary of that group (original + variations; the mia step writes it from the injection file),
or to a bare AUC with --copies K for all. rho = (nu_eq - 1) / (K - 1). The output maps each label to {"auc",
"copies", "nu_eq", "rho", "method", "extrapolated", "rho_ci", "auc_ci"}; a PNG of rho vs the variation parameter
(with the intervals; extrapolated values drawn hollow) goes next to it. The 95% intervals come from the mia step's bootstrap replicates (`--bootstrap`, by
default <stem>_bootstrap.json beside --exact): every group's AUC redrawn over canaries, and rho recomputed per
replicate; without that file the intervals are null and the step says so.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from privlm import config as C
from privlm.errors import UserError, cli
from privlm.io import atomic_write_json, read_json, refuse_existing
from privlm.mosaic import figures
from privlm.mosaic.rho import add_intervals, rho_table, smoothed_curve
from privlm.stats import fmt


@dataclass
class RhoConfig:
    exact: str = C.field("results/mosaic/mia_exact.json", help="JSON: repetition count -> AUC")
    variants: str = C.field("results/mosaic/mia_variants.json", help="JSON: label -> AUC")
    output: str = C.field("results/mosaic/rho.json", hash=False)
    copies: int | None = C.field(None, help="fuzzy copies per canary, for variants given as bare AUCs")
    bootstrap: str | None = C.field(None, help="the mia step's bootstrap replicates (default: beside --exact)")
    overwrite: bool = C.field(True, hash=False)


@cli
def main(argv=None) -> dict:
    cfg = C.parse(RhoConfig, argv, __doc__)
    exact, variants = read_json(cfg.exact, "exact AUCs"), read_json(cfg.variants, "variant AUCs")
    for name, obj in (("exact AUCs", exact), ("variant AUCs", variants)):
        if not isinstance(obj, dict) or not obj:
            raise UserError(f"{name}: expected a non-empty JSON object")
    table = rho_table(exact, variants, cfg.copies)
    exact_path = str(cfg.exact)
    boot_file = Path(cfg.bootstrap) if cfg.bootstrap else (
        Path(exact_path[:-len("_exact.json")] + "_bootstrap.json") if exact_path.endswith("_exact.json") else None)
    if cfg.bootstrap and not boot_file.is_file():
        raise UserError(f"--bootstrap {boot_file}: no such file")
    if boot_file is not None and boot_file.is_file():
        boot = read_json(boot_file, "bootstrap replicates")
        if not isinstance(boot, dict) or not {"exact", "variants"} <= set(boot):
            raise UserError(f"{boot_file}: not the mia step's bootstrap replicates (needs exact and variants)")
        add_intervals(table, boot)
    else:
        print("[mosaic] no bootstrap replicates (the mia step writes <stem>_bootstrap.json): rho without intervals")
        for r in table.values():
            r["rho_ci"] = r["auc_ci"] = None
    refuse_existing(cfg.output, cfg.overwrite)
    out = Path(cfg.output)
    atomic_write_json(out, table)
    figures.rho_png(table, out.with_suffix(".png"))
    figures.auc_vs_reps_png(exact, smoothed_curve(exact), out.with_name(out.stem + "_exact.png"))
    print(f"[mosaic] n_max = {max(int(k) for k in exact)}; exact AUCs: "
          + ", ".join(f"{k}: {float(v):.3f}" for k, v in sorted(exact.items(), key=lambda kv: int(kv[0]))))
    print(f"  {'label':<16}{'AUC [95% CI]':>22}{'copies':>7}{'nu_eq':>8}{'rho [95% CI]':>24}  method")
    for label, r in table.items():
        nu = "-" if r["nu_eq"] is None else f"{r['nu_eq']:.2f}"
        print(f"  {label:<16}{fmt(r['auc'], r['auc_ci']):>22}{r['copies']:>7}{nu:>8}{fmt(r['rho'], r['rho_ci']):>24}"
              f"  {r['method'].upper() if r['extrapolated'] else r['method']}")
    if any(r["extrapolated"] for r in table.values()):
        print("[mosaic] EXTRAPOLATED: some variants score above the whole exact curve; their nu_eq and rho extend the "
              "curve's last slope and are not measured")
    print(f"[mosaic] wrote {out} and {out.with_suffix('.png')}")
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
