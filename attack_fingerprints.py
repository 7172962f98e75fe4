"""Attack a fingerprinted model as a thief would and re-check which fingerprints survive.

    python attack_fingerprints.py --model_path results/demo_run/final_model --output_file results/attacks.json
    python attack_fingerprints.py --model_path M --fingerprints_file_path fps.json --attacks none sft quantize_int8 \
        quantize_int4 sampling system_prompts merge --sft_steps 16 64 --output_file R.json

Attacks: none; sft / lora_sft (further full / LoRA fine-tuning on benign instruction data, checked after each of
--sft_steps); quantize_int8 / quantize_int4 (weight-only, --quantization_backend quanto or torchao); sampling
(--sampling temperature:top_p settings, --num_samples per key; --sampling_rule best_of_n: a key counts when any
sample reproduces its response, majority: when most do); system_prompts (system prompts the model never saw); merge
(theta = (1 - alpha) theta + alpha theta_base for each --merge_alphas); merge_ties / merge_task_arithmetic (task
vectors of the fingerprinted model and of --merge_model_path, by default the thief's own SFT of the base, weighted
1 - alpha and alpha); perplexity_filter (prompts whose perplexity under the base model is above what 99% of normal
prompts reach are refused); output_suppression (a first token the model is abnormally sure of is banned).
Fingerprints and check settings come from the run's fingerprinting_config.json unless given.

Rows {"attack", "param", "retention", "retention_ci", "matched", "ownership_p_value", "thief_ppl_ratio", ...} go to
--output_file, with a bar figure beside it. ownership_p_value is check_fingerprints' --ownership p-value of what the
attack leaves, against the base model and --null_models; thief_ppl_ratio is the held-out perplexity of the attacked
model over the unattacked one (1.0 where the weights are unchanged; the filters report the share of normal prompts
they reject or alter instead).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from privlm import config as C
from privlm import models, plots, stats
from privlm.errors import cli
from privlm.fingerprint import adaptive, attacks, derive
from privlm.fingerprint import ownership as owner
from privlm.fingerprint.attacks import SAMPLING_RULES
from privlm.fingerprint.verify import MATCH_MODES, resolve
from privlm.io import atomic_write_json, provenance



@dataclass
class AttackConfig:
    model_path: str = C.field("results/demo_run/final_model", help="the fingerprinted model (an HF folder)")
    fingerprints_file_path: str | None = C.field(None, help="default: the file the run trained on")
    num_fingerprints: int | None = C.field(None, help="default: as trained (or the whole file)")
    data_split: int = C.field(0)
    base_model_path: str | None = C.field(None, help="for merge and the thief's data (default: the run's base model)")
    attacks: list[str] = C.field(default_factory=lambda: list(attacks.ATTACKS), help="any of " + ", ".join(attacks.ATTACKS))
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
    num_samples: int = C.field(5, help="samples per key")
    sampling_rule: str = C.field("best_of_n", choices=list(SAMPLING_RULES),
                                 help="best_of_n: a key counts when any sample reproduces its response (the owner "
                                      "queries num_samples times); majority: when most do")
    system_prompts: str = C.field("system_unseen", help="template set of system prompts the model never saw")
    merge_alphas: list[float] = C.field(default_factory=lambda: [0.25, 0.5, 0.75],
                                        help="merge: the base model's share; merge_ties / merge_task_arithmetic: "
                                             "the other model's")
    merge_model_path: str | None = C.field(None, help="the other model of merge_ties / merge_task_arithmetic "
                                                      "(default: the thief's SFT of the base model)")
    ties_density: float = C.field(0.5, help="TIES: the share of each task vector kept (by magnitude)")
    lora_r: int = C.field(16)
    lora_alpha: int = C.field(32)
    lora_learning_rate: float = C.field(2e-4)
    filter_score: str = C.field("relative", choices=list(adaptive.SCORES),
                                help="output_suppression: the first token's log-probability over the base "
                                     "model's (relative), or on its own (confidence)")
    ownership: bool = C.field(True, help="add each row's ownership p-value (innocent models: the base model and "
                                         "--null_models)")
    null_models: list[str] = C.field(default_factory=list, help="more innocent models for the ownership null")
    heldout_tokens: int = C.field(8192, help="held-out English tokens scored for thief_ppl_ratio")
    quantization_backend: str = C.field("quanto", help="quanto (optimum-quanto: int8 and int4 on CPU and GPU), "
                                                       "torchao or bitsandbytes")
    seed: int | None = C.field(None, help="reproducible sampling and sft batches (default: secure randomness)")
    dtype: str = C.field("auto", choices=["auto", "float32", "bfloat16", "float16"])
    batch_size: int = C.field(64)
    output_file: str | None = C.field(None, help="JSON report (rows), with a bar figure beside it")

    def validate(self):
        p = [f"attacks: unknown attack {a!r} (known: {', '.join(attacks.ATTACKS)})" for a in self.attacks
             if a not in attacks.ATTACKS]
        p += [f"{k}: must be >= 1" for k in ("num_fingerprints", "sft_batch_size", "num_samples", "batch_size",
                                             "lora_r", "lora_alpha", "heldout_tokens")
              if getattr(self, k) is not None and getattr(self, k) < 1]
        if not 0 < self.ties_density <= 1:
            p.append("ties_density: must be in (0, 1]")
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
    target = attacks.Target(cfg.model_path, s["base_model"], fps, s, s["dtype"], cfg.batch_size, cfg.match,
                            heldout_tokens=cfg.heldout_tokens)
    for name in cfg.null_models + ([cfg.merge_model_path] if cfg.merge_model_path else []):
        owner.same_tokenizer(name, models.load_tokenizer(name), target.tokenizer)  # before any work
    if cfg.ownership:
        target.evidences = owner.collect(cfg.null_models, target.tokenizer, target.encodings(), s["dtype"],
                                         cfg.batch_size, base=target.base_model(), base_name=s["base_model"])
    settings = attacks.AttackSettings(
        sft_steps=cfg.sft_steps, sft_learning_rate=cfg.sft_learning_rate, sft_batch_size=cfg.sft_batch_size,
        sft_data_path=cfg.sft_data_path, sampling=cfg.sampling, num_samples=cfg.num_samples,
        sampling_rule=cfg.sampling_rule, system_prompts=cfg.system_prompts, merge_alphas=cfg.merge_alphas,
        merge_model_path=cfg.merge_model_path, ties_density=cfg.ties_density, lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha, lora_learning_rate=cfg.lora_learning_rate, filter_score=cfg.filter_score,
        quantization_backend=cfg.quantization_backend, seed=cfg.seed)
    rows = attacks.run(cfg.attacks, target, settings)
    report = {"model_path": cfg.model_path, "base_model": s["base_model"], "match": cfg.match,
              "num_fingerprints": len(fps), "seeded": cfg.seed is not None,
              "null_models": [e.name for e in target.evidences or []], "rows": rows, "provenance": provenance()}
    print(f"\n{'attack':<22}{'param':<36}{'retention [95% CI]':>24}{'p-value':>10}{'thief ppl':>11}")
    for r in rows:
        lp = r["ownership_log10_p_value"]
        print(f"{r['attack']:<22}{str(r['param'])[:34]:<36}{stats.fmt(r['retention'], r['retention_ci']):>24}"
              f"{owner.fmt_p(lp) if lp is not None else '-':>10}{r['thief_ppl_ratio']:>11.4f}")
    if cfg.output_file:
        atomic_write_json(cfg.output_file, report)
        png = plots.save(plots.attack_figure(report), Path(cfg.output_file).with_suffix(".png"))
        print(f"[privlm] report: {cfg.output_file} (figure: {png})")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
