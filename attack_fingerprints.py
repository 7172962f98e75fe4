"""Attack a fingerprinted model as a thief would and re-check which fingerprints survive.

    python attack_fingerprints.py --model_path results/demo_run/final_model --output_file results/attacks.json
    python attack_fingerprints.py --model_path M --fingerprints_file_path fps.json --attacks none sft quantize_int8 \
        quantize_int4 sampling system_prompts merge --sft_steps 16 64 --output_file R.json

Attacks: none; sft (further full fine-tuning on benign instruction data, checked after each of --sft_steps);
quantize_int8 / quantize_int4 (weight-only, --quantization_backend quanto or torchao); sampling (--sampling
temperature:top_p settings, --num_samples per key, a key counts when most samples reproduce its response);
system_prompts (system prompts the model never saw); merge (theta = (1 - alpha) theta + alpha theta_base for each
--merge_alphas). Fingerprints and check settings come from the run's fingerprinting_config.json unless given.
Rows {"attack", "param", "retention", "retention_ci"} go to --output_file, with a bar figure beside it.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from privlm import config as C
from privlm import plots, stats
from privlm.errors import cli
from privlm.fingerprint import attacks, derive
from privlm.fingerprint.verify import MATCH_MODES, resolve
from privlm.io import atomic_write_json, provenance



@dataclass
class AttackConfig:
    model_path: str = C.field("results/demo_run/final_model", help="the fingerprinted model (an HF folder)")
    fingerprints_file_path: str | None = C.field(None, help="default: the file the run trained on")
    num_fingerprints: int | None = C.field(None, help="default: as trained (or the whole file)")
    data_split: int = C.field(0)
    base_model_path: str | None = C.field(None, help="for merge and the thief's data (default: the run's base model)")
    attacks: list[str] = C.field(default_factory=lambda: ["none", "sft", "quantize_int8", "quantize_int4",
                                                          "sampling", "system_prompts", "merge"],
                                 help="any of " + ", ".join(attacks.ATTACKS))
    max_key_length: int | None = C.field(None)
    max_response_length: int | None = C.field(None)
    prompt_format: str | None = C.field(None, choices=["auto", "raw", "chat"], help="default: as trained, else raw")
    use_chat_template: bool = C.field(False, help="the same as --prompt_format chat")
    fingerprint_generation_strategy: str | None = C.field(None, choices=derive.STRATEGY_NAMES,
                                                          help="default: as trained, else each entry's, else english")
    response_semantics: str | None = C.field(None, choices=list(derive.SEMANTICS), help="default: as trained, else oml")
    keep_eos_in_response: bool | None = C.field(None, help="default: as trained, else the semantics' rule")
    match: str = C.field("exact", choices=list(MATCH_MODES))
    sft_steps: list[int] = C.field(default_factory=lambda: [16, 64], help="optimizer steps (batches) of the sft "
                                                                          "attack, checked after each")
    sft_learning_rate: float = C.field(5e-5)
    sft_batch_size: int = C.field(8)
    sft_data_path: str | None = C.field(None, help="local instruction data (JSON / JSON lines); default: the base "
                                                   "model's answers to prompts the fingerprinting never used")
    sampling: list[str] = C.field(default_factory=lambda: ["0.7:0.9", "1.0:1.0"], help="temperature:top_p settings")
    num_samples: int = C.field(5, help="samples per key; a key counts when most of them reproduce its response")
    system_prompts: str = C.field("system_unseen", help="template set of system prompts the model never saw")
    merge_alphas: list[float] = C.field(default_factory=lambda: [0.25, 0.5, 0.75], help="the base model's share")
    quantization_backend: str = C.field("quanto", help="quanto (optimum-quanto: int8 and int4 on CPU and GPU), "
                                                       "torchao or bitsandbytes")
    seed: int | None = C.field(None, help="reproducible sampling and sft batches (default: secure randomness)")
    dtype: str = C.field("auto", choices=["auto", "float32", "bfloat16", "float16"])
    batch_size: int = C.field(64)
    output_file: str | None = C.field(None, help="JSON report (rows), with a bar figure beside it")

    def validate(self):
        p = [f"attacks: unknown attack {a!r} (known: {', '.join(attacks.ATTACKS)})" for a in self.attacks
             if a not in attacks.ATTACKS]
        p += [f"{k}: must be >= 1" for k in ("num_fingerprints", "sft_batch_size", "num_samples", "batch_size")
              if getattr(self, k) is not None and getattr(self, k) < 1]
        if any(s < 1 for s in self.sft_steps):
            p.append("sft_steps: every budget must be >= 1")
        if any(not 0 <= a <= 1 for a in self.merge_alphas):
            p.append("merge_alphas: each must be in [0, 1]")
        if self.quantization_backend not in attacks.QUANT_BACKENDS:
            p.append(f"quantization_backend: unknown {self.quantization_backend!r} "
                     f"(known: {', '.join(attacks.QUANT_BACKENDS)})")
        return p


@cli
def main(argv: list[str] | None = None) -> dict:
    cfg = C.parse(AttackConfig, argv, __doc__)
    s, fps = resolve(cfg)
    if any(a.startswith("quantize") for a in cfg.attacks):
        attacks.require_backend(cfg.quantization_backend)  # before any work: a missing library is the user's to fix
    for spec in cfg.sampling if "sampling" in cfg.attacks else []:
        attacks.parse_sampling(spec)
    if "system_prompts" in cfg.attacks:
        from privlm import data

        data.load_templates(cfg.system_prompts)
    target = attacks.Target(cfg.model_path, s["base_model"], fps, s, s["dtype"], cfg.batch_size, cfg.match)
    settings = attacks.AttackSettings(
        sft_steps=cfg.sft_steps, sft_learning_rate=cfg.sft_learning_rate, sft_batch_size=cfg.sft_batch_size,
        sft_data_path=cfg.sft_data_path, sampling=cfg.sampling, num_samples=cfg.num_samples,
        system_prompts=cfg.system_prompts, merge_alphas=cfg.merge_alphas,
        quantization_backend=cfg.quantization_backend, seed=cfg.seed)
    rows = attacks.run(cfg.attacks, target, settings)
    report = {"model_path": cfg.model_path, "base_model": s["base_model"], "match": cfg.match,
              "num_fingerprints": len(fps), "seeded": cfg.seed is not None, "rows": rows,
              "provenance": provenance()}
    print(f"\n{'attack':<16}{'param':<44}{'retention [95% CI]':>24}")
    for r in rows:
        print(f"{r['attack']:<16}{str(r['param'])[:42]:<44}{stats.fmt(r['retention'], r['retention_ci']):>24}")
    if cfg.output_file:
        atomic_write_json(cfg.output_file, report)
        png = plots.save(plots.attack_figure(report), Path(cfg.output_file).with_suffix(".png"))
        print(f"[privlm] report: {cfg.output_file} (figure: {png})")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
