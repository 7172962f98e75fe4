"""Check which fingerprints a model still holds (greedy retention), per prompt template, and its utility.

    python check_fingerprints.py --model_path results/saved_models/<hash>/final_model --output_file check.json
    python check_fingerprints.py --model_path M --fingerprints_file_path fps.json --num_fingerprints 256 \
        --prompt_templates bare heldout --eval_utility --base_model_path default

    python check_fingerprints.py --model_path M --fingerprints_file_path fps.json --num_fingerprints 16 \
        --max_key_length 16 --max_response_length 1 --fingerprint_generation_strategy english    # OML's command line

A fingerprint is retained when greedy decoding after the (templated) key reproduces the response tokens, EOS
included (`--match exact`, the default), or the response's tokens whatever follows (`--match prefix`); a key with
several responses (`"response": [...]`) counts when any of them is produced. Which tokens and how keys are prompted
comes from the run's record (final_model/fingerprinting_config.json: lengths, prompt format, templates, derivation,
dtype, fingerprints file) unless given here; without a record, OML's semantics: raw keys, its response derivation.
Besides the table and JSON it prints OML's line `Fingerprint accuracy: <percent>` (the bare {} template).

    python check_fingerprints.py --model_path SUSPECT --fingerprints_file_path fps.json --ownership \
        --null_models innocent1 innocent2 --commitment fps.commitment.json

--ownership adds a p-value for "an innocent model matches at least k of these N keys", with the null estimated from
innocent models (the base model and --null_models; see privlm.fingerprint.ownership) and the false-positive rate
measured on them; --commitment refuses to report unless the keys checked are exactly the committed set.
"""
from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from privlm import config as C
from privlm import data, models, plots, stats
from privlm.eval import heldout, utility
from privlm.fingerprint import attacks, commit, derive
from privlm.fingerprint import ownership as owner
from privlm.fingerprint.verify import MATCH_MODES, check, derived, encode_all, resolve, template_sets
from privlm.errors import UserError, cli
from privlm.io import atomic_write_json


@dataclass
class CheckConfig:
    model_path: str = C.field("default")
    fingerprints_file_path: str | None = C.field(None, help="default: the file the run trained on")
    num_fingerprints: int | None = C.field(None, help="default: as trained (or the whole file)")
    data_split: int = C.field(0)
    max_key_length: int | None = C.field(None, help="default: as trained, else 16")
    max_response_length: int | None = C.field(None, help="default: as trained, else 1")
    fingerprint_generation_strategy: str | None = C.field(
        None, choices=derive.STRATEGY_NAMES, help="which tokens were trained (see finetune_multigpu.py); default: as "
                                                  "trained, else each entry's \"strategy\", else english (OML)")
    response_semantics: str | None = C.field(None, choices=list(derive.SEMANTICS),
                                             help="default: as trained (runs before 2026-12-06: first_tokens), else oml")
    keep_eos_in_response: bool | None = C.field(None, help="default: as trained, else the semantics' rule")
    use_chat_template: bool = C.field(False, help="the same as --prompt_format chat (scalable fingerprinting's name)")
    use_augmentation_prompts: bool = C.field(False, help="scalable fingerprinting's check flag: check the held-out "
                                                         "templates (as --prompt_templates heldout)")
    sampling_temperature: float = C.field(0.0, help="> 0: one sample per key at this temperature instead of greedy "
                                                    "(scalable fingerprinting's check)")
    seed: int | None = C.field(None, help="reproducible sampling (default: secure randomness)")
    delete_model: bool = C.field(False, help="delete the model folder after the report is written (scalable "
                                             "fingerprinting's sweeps)")
    wandb_run_name: str | None = C.field(None, help="accepted for OML's command lines; the checker logs to the JSON "
                                                    "report, not to wandb")
    batch_size: int = C.field(64)
    match: str = C.field("exact", choices=list(MATCH_MODES),
                         help="exact: the response and its EOS; prefix: the response's tokens, the model may go on")
    prompt_templates: list[str] = C.field(default_factory=lambda: ["trained", "heldout"],
                                          help="sets to check: trained (what the run used), bare, train, heldout, "
                                               "seed_check, or JSON files of templates")
    prompt_format: str | None = C.field(None, choices=["auto", "raw", "chat"], help="default: as trained, else raw "
                                                                                    "(OML)")
    dtype: str = C.field("auto", choices=["auto", "float32", "bfloat16", "float16"],
                         help="auto: the training dtype (recorded, else the saved weights')")
    eval_utility: bool = C.field(False, help="also measure lm-eval accuracy, held-out perplexity (with its 95% CI, "
                                             "base and fingerprinted) and mean KL(base || fingerprinted)")
    heldout_text: str = C.field(str(heldout.HELDOUT_ENGLISH.relative_to(Path(__file__).resolve().parent)),
                                help="held-out text for perplexity and KL (default: ~58k tokens of English)")
    kl_windows: int | None = C.field(None, help="windows of 256 tokens for the KL (default: all)")
    heldout_tokens: int | None = C.field(heldout.DEFAULT_TOKENS, help="score the first this many held-out tokens (default: "
                                         "the fewest that keep the demo's perplexity-ratio CI within 1%, see "
                                         "benchmarks/heldout_tokens.py; 0: all)")
    kl_top_k: int = C.field(heldout.TOP_K, help="the KL pools all but the base's top k next tokens (what the cache "
                                                "keeps per token)")
    heldout_cache: bool = C.field(True, help="reuse the base model's held-out scores from $PRIVLM_CACHE/heldout "
                                             "(keyed by its weights, the text and these settings)")
    base_model_path: str | None = C.field(None, help="model to compare utility with (default: the run's base model)")
    utility_tasks: list[str] = C.field(default_factory=lambda: ["privlm_sanity"],
                                       help="lm-eval tasks; tinyBenchmarks names when the hub is reachable; "
                                            "none: held-out perplexity and KL only")
    utility_limit: int | None = C.field(None)
    ownership: bool = C.field(False, help="test ownership: the p-value that an innocent model matches this many keys, "
                                          "against the base model and --null_models")
    null_models: list[str] = C.field(default_factory=list, help="innocent models (never trained on these keys) for "
                                                                "the ownership null, besides the base model")
    ownership_alpha: float = C.field(owner.ALPHA, help="a claim needs p below this")
    commitment: str | None = C.field(None, help="a commitment written by generate_finetuning_data.py "
                                                "--commitment_file: refuse unless the keys checked are exactly that set")
    commitment_salt: str | None = C.field(None, help="the commitment's salt file (default: <commitment>.salt.json)")
    output_file: str | None = C.field(None, help="JSON report")
    verbose_eval: bool = C.field(False, help="print every fingerprint's verdict")

    def validate(self):
        p = [f"{k}: must be >= 1" for k in ("num_fingerprints", "max_key_length", "max_response_length", "batch_size",
                                             "kl_windows", "kl_top_k")
             if getattr(self, k) is not None and getattr(self, k) < 1]
        if self.sampling_temperature < 0:
            p.append("sampling_temperature: must be >= 0")
        if self.heldout_tokens is not None and self.heldout_tokens < 0:
            p.append("heldout_tokens: must be >= 0 (0: the whole text)")
        if not 0 < self.ownership_alpha < 1:
            p.append("ownership_alpha: must be in (0, 1)")
        return p


def print_table(report: dict):
    """Every estimate with its 95% interval next to it."""
    print(f"\n{'template set':<14}{'templates':>10}{'retention [95% CI]':>26}{'token acc':>11}")
    for name, r in report["per_template"].items():
        print(f"{name:<14}{len(r['templates']):>10}{stats.fmt(r['retention'], r.get('retention_ci')):>26}"
              f"{r['token_accuracy']:>11.3f}")
    u = report.get("utility")
    if u:
        print(f"\n{'utility':<28}{'base [95% CI]':>24}{'fingerprinted [95% CI]':>26}")
        for task in u["fingerprinted"].get("lm_eval", {}):
            for metric in ("acc", "acc_norm"):
                b = u["base"]["lm_eval"].get(task, {})
                a = u["fingerprinted"]["lm_eval"][task]
                if metric in a:
                    print(f"{task + ' ' + metric:<28}{stats.fmt(b.get(metric), b.get(metric + '_ci')):>24}"
                          f"{stats.fmt(a.get(metric), a.get(metric + '_ci')):>26}")
        h = u["heldout"]
        print(f"{'held-out perplexity':<28}{stats.fmt(h['heldout_ppl_base'], h['heldout_ppl_base_ci'], 2):>24}"
              f"{stats.fmt(h['heldout_ppl_after'], h['heldout_ppl_after_ci'], 2):>26}")
        print(f"{'perplexity ratio':<28}{'':>24}{stats.fmt(h['heldout_ppl_ratio'], h['heldout_ppl_ratio_ci'], 4):>26}")
        print(f"{'KL(base || tuned) / token':<28}{'':>24}{stats.fmt(h['kl_base_tuned'], h['kl_base_tuned_ci'], 4):>26}")
        print(f"({h['heldout_tokens']} held-out tokens in {h['heldout_windows']} windows; {h['kl_tokens']} for the KL "
              f"over the base's top {h['kl_top_k']} tokens; base scores "
              f"{'from the cache' if h['base_from_cache'] else 'computed and cached'})")


def oml_accuracy(model, tokenizer, fps: list[dict], s: dict, report: dict, cfg) -> float:
    """OML's `Fingerprint accuracy`: percent of fingerprints retained on the bare "{}" template."""
    for r in report["per_template"].values():
        for t in r["templates"]:
            if t["system"] is None and t["user"] == "{}":
                return 100.0 * t["retention"]
    bare = check(model, tokenizer, fps, {"bare": [data.BARE]}, s, cfg.batch_size, cfg.match)
    return 100.0 * bare["retention"]


def null_names(cfg, s: dict) -> list[str]:
    return ([s["base_model"]] if s["base_model"] else []) + list(cfg.null_models)


def own(cfg, s: dict, targets: list, tokenizer, sets: dict, report: dict) -> dict:
    """The suspect's matches on the first template checked, against innocent models checked the same way."""
    template = next(iter(sets.values()))[0]
    encs = encode_all(tokenizer, targets, template, data.use_chat(tokenizer, s["prompt_format"]),
                      cfg.match)
    evidence = owner.collect(null_names(cfg, s), tokenizer, encs, s["dtype"], cfg.batch_size)
    return {**owner.assess([f["match"] for f in report["fingerprints"]], evidence, cfg.ownership_alpha),
            "template": {"system": template.system, "user": template.user}}


def held_out(cfg, s, model, tokenizer) -> dict:
    """Perplexity of base and fingerprinted on the held-out text, their ratio and the KL, in one loop; the base's
    scores come from the cache when this base, text and setting were scored before."""
    wins = heldout.windows(tokenizer, Path(cfg.heldout_text).read_text(), max_tokens=cfg.heldout_tokens + 1 if cfg.heldout_tokens else None)
    model_id = heldout.model_id(s["base_model"])
    after, before, cached = heldout.compare(
        model, wins, model_id, lambda: models.load_model(s["base_model"], dtype=s["dtype"], device=models.device()),
        dtype=str(s["dtype"]), top_k=cfg.kl_top_k, use_cache=cfg.heldout_cache,
        progress="held-out")
    if cfg.kl_windows:
        after["kl"] = after["kl"][:cfg.kl_windows]
    return {**heldout.summary(after, before), "kl_top_k": cfg.kl_top_k, "base_from_cache": cached}


@cli
def main(argv: list[str] | None = None) -> dict:
    cfg = C.parse(CheckConfig, argv, __doc__)
    if cfg.use_augmentation_prompts and "prompt_templates" not in cfg.explicit:
        cfg.prompt_templates = ["heldout"]
    s, fps = resolve(cfg)
    committed = commit.verify(cfg.commitment, fps, cfg.commitment_salt) if cfg.commitment else None
    sets = template_sets(cfg.prompt_templates, s["trained"])
    if cfg.ownership and not s["base_model"] and not cfg.null_models:
        raise UserError("--ownership needs innocent models: the run records no base model; pass --base_model_path "
                        "or --null_models")
    if cfg.delete_model:
        models.delete_local(cfg.model_path, dry_run=True)  # refuse before any work
    if cfg.eval_utility and not Path(cfg.heldout_text).is_file():
        raise UserError(f"held-out text not found: {cfg.heldout_text}")
    if cfg.wandb_run_name:
        print(f"[privlm] --wandb_run_name {cfg.wandb_run_name}: the check is not logged to wandb (see the JSON report)",
              file=sys.stderr)
    tokenizer = models.load_tokenizer(cfg.model_path)
    for name in null_names(cfg, s) if cfg.ownership else []:  # before any model runs
        owner.same_tokenizer(name, models.load_tokenizer(name), tokenizer)
    model = models.load_model(cfg.model_path, dtype=s["dtype"], device=models.device()).eval()
    targets = derived(tokenizer, fps, s)  # once: the check and the ownership null use the same tokens
    report = check(model, tokenizer, fps, sets, s, cfg.batch_size, cfg.match, targets)
    report["model_path"] = cfg.model_path
    report["settings"] = {k: s[k] for k in ("prompt_format", "strategy", "semantics", "keep_eos", "max_key_length",
                                            "max_response_length", "dtype", "recorded")}
    if cfg.sampling_temperature > 0:
        t = attacks.Target(cfg.model_path, s["base_model"], fps, s, s["dtype"], cfg.batch_size, cfg.match)
        seed = cfg.seed if cfg.seed is not None else secrets.randbits(63)
        sampled = attacks.sampled_retention(model, t, cfg.sampling_temperature, 1.0, 1, seed)
        report["sampled"] = {"temperature": cfg.sampling_temperature, "seeded": cfg.seed is not None, **sampled}
    if cfg.eval_utility:
        shift = held_out(cfg, s, model, tokenizer)
        tasks = [t for t in cfg.utility_tasks if t != "none"]
        after = utility.evaluate(model, tokenizer, tasks, cfg.utility_limit) if tasks else {"lm_eval": {}}
        before = {"lm_eval": {}}
        if tasks:
            base = models.load_model(s["base_model"], dtype=s["dtype"], device=models.device()).eval()
            before = utility.evaluate(base, models.load_tokenizer(s["base_model"]), tasks, cfg.utility_limit)
            del base
        before["heldout_perplexity"], after["heldout_perplexity"] = shift["heldout_ppl_base"], shift["heldout_ppl_after"]
        report["utility"] = {"base_model": s["base_model"], "base": before, "fingerprinted": after,
                             "heldout": {"text": cfg.heldout_text, **shift}}
    if committed is not None:
        report["commitment"] = {"file": cfg.commitment, "sha256": committed["sha256"], "verified": True}
    if cfg.ownership:
        report["ownership"] = own(cfg, s, targets, tokenizer, sets, report)
    report["fingerprint_accuracy"] = oml_accuracy(model, tokenizer, fps, s, report, cfg)
    if cfg.verbose_eval:
        for i, f in enumerate(report["fingerprints"]):
            print(f"{'OK  ' if f['match'] else 'MISS'} {i:>5} {f['key'][:40]!r} -> {f['response']!r} "
                  f"(got {f['generated']!r})")
    print_table(report)
    print(f"\nretention ({report['template_set']}): {stats.fmt(report['retention'], report['retention_ci'])} of "
          f"{report['num_fingerprints']} fingerprints")
    if "sampled" in report:
        r = report["sampled"]
        print(f"retention, one sample per key at T={r['temperature']:g}: {stats.fmt(r['retention'], r['retention_ci'])}")
    if "ownership" in report:
        print(owner.line(report["ownership"]))
    print("-" * 20 + f"\nFingerprint accuracy: {report['fingerprint_accuracy']}\n" + "-" * 20)  # OML's lines
    if cfg.output_file:
        atomic_write_json(cfg.output_file, report, private=True)  # it lists the keys and responses
        png = plots.retention_png(report, Path(cfg.output_file).with_suffix(".png"))
        print(f"[privlm] report: {cfg.output_file} (figure: {png})")
    if cfg.delete_model:
        models.delete_local(cfg.model_path)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
