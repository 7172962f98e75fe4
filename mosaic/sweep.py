"""One target model per setting and seed, as the paper trains them: inject -> train -> mia for every pair, then the
per-setting AUCs over seeds and the rho step's inputs.

    python -m mosaic sweep --config configs/mosaic/sweep_demo.yml
    python -m mosaic sweep --canaries C.json --settings exact:1 exact:2 exact:5 exact:10 fuzzy:V.json --seeds 0 1 2 \
        --train_config configs/mosaic/paper_gptneo_exact.yml --launcher "deepspeed --num_gpus 8" \
        --output_dir results/mosaic/sweep

Each (setting, seed) lives in <output_dir>/<setting>_s<seed>/: corpus/ (`mosaic inject --groups SETTING --seed
SEED`), target/ (`mosaic train --config TRAIN_CONFIG --corpus ... trainer_args.seed=SEED`, under --launcher when
given) and mia.json (`mosaic mia`). A finished step is skipped (the corpus and mia.json exist; train skips its own
finished run), so a killed sweep resumes where it stopped. Then sweep.json: per setting, each seed's AUC of
--rho_attack with its interval over canaries and the mean over seeds with a t interval over seeds; sweep_exact.json,
sweep_variants.json and sweep_bootstrap.json (each bootstrap replicate averaged over seeds) for `mosaic rho`, which
runs when both exact and fuzzy settings are present. `--train_args` / `--mia_args` pass further flags to those
steps (one quoted string). Pooling every group in one model (`mosaic inject` with several groups) stays available
and its mia.json says `pooled: true`; a sweep's results say `pooled: false`.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privlm import config as C
from privlm import stats
from privlm.errors import UserError, cli
from privlm.io import atomic_write_json, read_json
from privlm.mosaic import inject as I


@dataclass
class SweepConfig:
    canaries: str = C.field("results/mosaic/canaries.json")
    settings: list[str] = C.field(default_factory=lambda: ["exact:1", "exact:10"], aliases=("--groups",),
                                  help="one target per setting: exact:N or fuzzy:VARIATIONS.json")
    seeds: list[int] = C.field(default_factory=lambda: [0], help="injection positions and training seed")
    canaries_per_group: int = C.field(0, help="member canaries per target (0: all)")
    corpus: str = C.field("faker", help="books to inject into (as `mosaic inject --corpus`)")
    book_words: int = C.field(400)
    num_books: int = C.field(0)
    train_config: str | None = C.field(None, help="YAML for `mosaic train` (model, block size, learning rate, ...)")
    train_args: str = C.field("", help="more flags for `mosaic train`, one quoted string")
    launcher: str = C.field("", help='run training under a launcher, e.g. "deepspeed --num_gpus 8"')
    reference: str = C.field("default", help="reference model of the ratio attack")
    attacks: list[str] = C.field(default_factory=lambda: ["loss", "ratio"])
    rho_attack: str = C.field("ratio")
    mia_args: str = C.field("", help="more flags for `mosaic mia`, one quoted string")
    output_dir: str = C.field("results/mosaic/sweep", hash=False)

    def validate(self):
        p = []
        for s in self.settings:
            try:
                I.parse_group(s)
            except UserError as e:
                p.append(f"settings: {e}")
        if not self.settings:
            p.append("settings: give at least one")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            p.append("seeds: give distinct seeds")
        if self.rho_attack not in self.attacks:
            p.append(f"rho_attack: {self.rho_attack!r} must be one of --attacks")
        if self.train_config and not Path(self.train_config).is_file():
            p.append(f"train_config: no such file {self.train_config}")
        for k in ("train_args", "mia_args", "launcher"):
            try:
                shlex.split(getattr(self, k))
            except ValueError as e:
                p.append(f"{k}: {e}")
        return p


def setting_name(spec: str) -> str:
    kind, arg = I.parse_group(spec)
    return f"exact_{arg}" if kind == "exact" else Path(arg).stem


def step(name: str, args: list, launcher: str = "") -> None:
    """One pipeline step as its own process (the steps never import each other); its failure ends the sweep."""
    head = shlex.split(launcher) + ["--module"] if launcher else [sys.executable, "-m"]
    cmd = head + ["mosaic", name, *map(str, args)]
    print(f"[mosaic] sweep: {shlex.join(cmd)}", flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise UserError(f"sweep: `mosaic {name}` failed (command above); finished runs are kept, run again to resume")


@cli
def main(argv=None) -> dict:
    cfg = C.parse(SweepConfig, argv, __doc__)
    out = Path(cfg.output_dir)
    rows = {}
    for spec in cfg.settings:
        for seed in cfg.seeds:
            d = out / f"{setting_name(spec)}_s{seed}"
            if not (d / "corpus" / "injection.json").is_file():
                step("inject", ["--canaries", cfg.canaries, "--groups", spec, "--canaries_per_group",
                                cfg.canaries_per_group, "--corpus", cfg.corpus, "--book_words", cfg.book_words,
                                "--num_books", cfg.num_books, "--seed", seed, "--output_dir", d / "corpus"])
            if not (d / "mia.json").is_file():
                step("train", (["--config", cfg.train_config] if cfg.train_config else []) +
                     ["--corpus", d / "corpus", "--canaries", cfg.canaries, "--output_dir", d / "target",
                      *shlex.split(cfg.train_args), f"trainer_args.seed={seed}"], cfg.launcher)
                step("mia", ["--model", d / "target" / "final_model", "--reference", cfg.reference,
                             "--canaries", cfg.canaries, "--injection", d / "corpus" / "injection.json",
                             "--attacks", *cfg.attacks, "--rho_attack", cfg.rho_attack, "--output", d / "mia.json",
                             *shlex.split(cfg.mia_args)])
            rows[(spec, seed)] = d
    result = aggregate(cfg, rows, out)
    print_table(result)
    return result


def aggregate(cfg: SweepConfig, rows: dict, out: Path) -> dict:
    settings, exact, variants, boot_exact, boot_var = [], {}, {}, {}, {}
    for spec in cfg.settings:
        per_seed, reps = [], []
        for seed in cfg.seeds:
            d = rows[(spec, seed)]
            mia = read_json(d / "mia.json", "mia results")
            g = next(r for r in mia["groups"] if r["kind"] != "nonmember")
            per_seed.append({"seed": seed, "auc": g["auc"], "auc_ci": g["auc_ci"], "n": g["n"],
                             "run": str(d / "target")})
            boot = read_json(d / "mia_bootstrap.json", "bootstrap replicates")
            reps.append(np.asarray((boot["exact"] | boot["variants"])[str(g["repetitions"]) if g["kind"] == "exact"
                                                                      else g["name"]]))
        aucs = [r["auc"] for r in per_seed]
        row = {"setting": spec, "name": g["name"], "kind": g["kind"], "copies": g["repetitions"], "seeds": per_seed,
               "auc_mean": float(np.mean(aucs)), "auc_mean_ci": stats.t_interval(aucs)}
        settings.append(row)
        mean_reps = np.mean(reps, axis=0).round(6).tolist()  # seeds are independent: a replicate of the mean
        if g["kind"] == "exact":
            exact[str(g["repetitions"])], boot_exact[str(g["repetitions"])] = row["auc_mean"], mean_reps
        else:
            variants[g["name"]], boot_var[g["name"]] = {"auc": row["auc_mean"], "copies": g["repetitions"]}, mean_reps
    result = {"attack": cfg.rho_attack, "seeds": cfg.seeds, "pooled": False, "settings": settings}
    atomic_write_json(out / "sweep.json", result)
    if exact:
        atomic_write_json(out / "sweep_exact.json", exact)
    if variants:
        atomic_write_json(out / "sweep_variants.json", variants)
    if exact and variants:
        atomic_write_json(out / "sweep_bootstrap.json", {"attack": cfg.rho_attack, "exact": boot_exact,
                                                         "variants": boot_var}, None)
        step("rho", ["--exact", out / "sweep_exact.json", "--variants", out / "sweep_variants.json",
                     "--output", out / "rho.json"])
    return result


def print_table(result: dict) -> None:
    print(f"[mosaic] sweep ({result['attack']} attack, one target per setting and seed, seeds {result['seeds']}):")
    print(f"  {'setting':<24}{'copies':>7}  {'AUC per seed [95% CI over canaries]':<48}{'mean [95% CI over seeds]'}")
    for r in result["settings"]:
        seeds = "; ".join(stats.fmt(s["auc"], s["auc_ci"]) for s in r["seeds"])
        print(f"  {r['name']:<24}{r['copies']:>7}  {seeds:<48}{stats.fmt(r['auc_mean'], r['auc_mean_ci'])}")


if __name__ == "__main__":
    main(sys.argv[1:])
