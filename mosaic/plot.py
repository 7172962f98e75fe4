"""The paper's main figures from the JSON results of the other steps.

    python -m mosaic plot --mia results/mosaic/mia.json --rho results/mosaic/rho.json \
        --scan results/scan/scan.json --output_dir results/mosaic/figures

Figures: ROC of every attack; AUC vs exact repetitions for every attack (95% bands); AUC and rho vs the variation
parameter (95% intervals when the rho step had bootstrap replicates); near-duplicate counts vs distance. Any input
may be left out.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path


from privlm import config as C
from privlm import stats
from privlm.errors import UserError, cli
from privlm.io import read_json
from privlm.mia import metrics
from privlm.mosaic import figures
from privlm.mosaic.inject import exact_count


@dataclass
class PlotConfig:
    mia: str | None = C.field(None, help="output of `mosaic mia`")
    rho: str | None = C.field(None, help="output of `mosaic rho`")
    scan: str | None = C.field(None, help="scan.json of `mosaic scan`")
    output_dir: str = C.field("results/mosaic/figures", hash=False)


@cli
def main(argv=None) -> list[Path]:
    cfg = C.parse(PlotConfig, argv, __doc__)
    if not (cfg.mia or cfg.rho or cfg.scan):
        raise UserError("nothing to plot: give --mia, --rho and/or --scan")
    out, made = Path(cfg.output_dir), []
    if cfg.mia:
        mia = read_json(cfg.mia, "MIA results")
        if not isinstance(mia, dict) or "scores" not in mia:
            raise UserError(f"{cfg.mia}: not an output of `python -m mosaic mia`")
        curves = {}
        for name, s in mia["scores"].items():
            auc = float(stats.auc(s["members"], s["nonmembers"]))
            curves[name] = metrics.roc_curve(s["members"], s["nonmembers"]) + (auc,)
        made.append(figures.roc_png(curves, out / "roc.png", "ROC, all member canaries vs non-members"))
        plt = figures.pyplot()
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for name, e in mia["attacks"].items():
            pts = sorted((exact_count(lb), r["auc"], r.get("auc_ci")) for lb, r in e["groups"].items()
                         if exact_count(lb))
            if pts:
                line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
                if all(p[2] for p in pts):  # the 95% bootstrap intervals over canaries, as a band
                    ax.fill_between([p[0] for p in pts], [p[2][0] for p in pts], [p[2][1] for p in pts],
                                    color=line.get_color(), alpha=0.15, lw=0)
        if ax.lines:
            ax.set(xlabel="exact repetitions", ylabel="MIA AUC", title="AUC vs repetitions, per attack")
            ax.legend(fontsize=7)
            made.append(figures.save(fig, out / "auc_vs_repetitions.png"))
        else:
            plt.close(fig)
    if cfg.rho:
        rho = read_json(cfg.rho, "rho results")
        made.append(figures.rho_png(rho, out / "rho.png"))
    if cfg.scan:
        scan = read_json(cfg.scan, "scan results")
        if not isinstance(scan, dict) or "summary" not in scan:
            raise UserError(f"{cfg.scan}: not a scan.json")
        made.append(figures.scan_png(scan["summary"], out / "scan.png"))
    for p in made:
        print(f"[mosaic] wrote {p}")
    return made


if __name__ == "__main__":
    main(sys.argv[1:])
