"""Private fine-tuning: undefended or DP-SGD (per-example clipping, Gaussian noise, Poisson sampling), with LoRA,
under DeepSpeed. The same training loop as fingerprinting.

    deepspeed --num_gpus 4 dp_finetune.py --config configs/dp/<name>.yml [key=value ...]
    python dp_finetune.py --config configs/dp/synthetic_dp8_cpu.yml                      # one process
    python dp_finetune.py --privacy_report --noise_multiplier 1.0 --sample_rate 0.01 --steps 1000 --delta 1e-5
    python dp_finetune.py --privacy_report --target_epsilon 8 --sample_rate 0.01 --steps 1000 --delta 1e-5

Privacy: target_epsilon > 0 turns DP on; sigma is calibrated from (epsilon, delta, q, steps) by Opacus's PRV
accountant (RDP with accountant=rdp) unless noise_multiplier is given. q = expected logical batch / N.
"""
from __future__ import annotations

import json
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from privlm import config as C
from privlm import data, models
from privlm.dp import accountant
from privlm.errors import UserError, cli
from privlm.io import atomic_write_json, provenance


@dataclass
class PrivacyArgs:
    target_epsilon: float = C.field(-1.0, aliases=("--eps",), help="> 0 turns DP-SGD on; -1 trains without DP")
    target_delta: float | None = C.field(None, aliases=("--delta",), help="default 1/(2N), must be < 1/N")
    noise_multiplier: float | None = C.field(None, help="sigma; calibrated from target_epsilon when not given")
    max_grad_norm_dp: float = C.field(1.0, aliases=("--clip",), help="per-example clipping norm C")
    accountant: str = C.field("prv", choices=list(accountant.ACCOUNTANTS))
    sampling: str = C.field("poisson", choices=["poisson", "shuffle"],
                            help="shuffle: fixed batches (the accountant assumes Poisson; a warning is printed)")


@dataclass
class ModelArgs:
    model_path: str = C.field("default", aliases=("--model_name",))
    peft: str = C.field("lora", choices=["lora", "none"])
    lora_r: int = C.field(8)
    lora_alpha: int = C.field(16)
    lora_dropout: float = C.field(0.0)
    target_modules: list[str] = C.field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    tokenizer_max_length: int = C.field(128, aliases=("--max_seq_len",))
    dtype: str = C.field("auto", choices=["auto", "float32", "bfloat16", "float16"])


@dataclass
class DatasetArgs:
    dataset_path: str = C.field("synthetic:256", aliases=("--dataset_name",),
                                help="local .jsonl/.csv/.parquet/.txt, synthetic[:N], or a hub dataset")
    dataset_mode: str = C.field("undefended", choices=["undefended", "scrubbed"],
                                help="scrubbed: PII replaced (Presidio) before training")
    anon_token: str = C.field("<MASK>", help="what scrubbed PII becomes (unless pseudonymize)")
    pseudonymize: bool = C.field(False, help="replace PII by consistent Faker pseudonyms instead of anon_token")
    deny_list: str | None = C.field(None, help="names to scrub (JSON list or text file), or from_data for the "
                                               "synthetic corpus' own names; needed for PERSON without an NER model")
    scrub_entities: list[str] | None = C.field(None, help="Presidio entity types to scrub (default: all found)")
    ner: str = C.field("auto", help="NER for PERSON/LOCATION: auto (spaCy en_core_web_* if installed), none, "
                                    "spacy:NAME, hf:MODEL (token classification) or flair:MODEL")
    eval_dataset_path: str | None = C.field(None, help="held-out records (default: synthetic:64:1000 for the "
                                                       "synthetic corpus, else the last eval_fraction of the data)")
    eval_fraction: float = C.field(0.1)
    pii_eval_records: int | None = C.field(None, hash=False, help="measure PII extraction on this many training "
                                                                   "records (default all)")
    prompt_style: str = C.field("uncond_generation", choices=["uncond_generation", "vicuna"])
    text_field: str = C.field("text")
    limit_dataset_size: int | None = C.field(None)


@dataclass
class TrainingArgs:
    per_device_train_batch_size: int = C.field(8, aliases=("--perdevice_bs",), help="micro-batch size")
    total_train_batch_size: int = C.field(32, aliases=("--total_bs",), help="(expected) logical batch size")
    num_train_epochs: float = C.field(3, aliases=("--num_epochs",))
    learning_rate: float = C.field(3e-4, aliases=("--lr",))
    lr_scheduler: str = C.field("constant", choices=["constant", "linear", "cosine"])
    weight_decay: float = C.field(0.0, aliases=("--wd",))
    deepspeed_stage: int = C.field(0, choices=[0, 1, 2], help="ZeRO stage")
    gpus: int | None = C.field(None, hash=False, help="seed compatibility; the deepspeed launcher decides")
    seed: int = C.field(42)
    results_dir: str = C.field("results", hash=False)
    save_every_epochs: int = C.field(1, hash=False)


@dataclass
class DPFinetuneConfig:
    SECTION_ALIASES = {"privacy_args": "privacy", "model_args": "model", "dataset_args": "dataset",
                       "trainer_args": "training", "train_args": "training"}  # seed 001's YAML sections
    privacy: PrivacyArgs = field(default_factory=PrivacyArgs)
    model: ModelArgs = field(default_factory=ModelArgs)
    dataset: DatasetArgs = field(default_factory=DatasetArgs)
    training: TrainingArgs = field(default_factory=TrainingArgs)

    def validate(self):
        p = []
        t, pr = self.training, self.privacy
        if pr.target_epsilon == 0 or (pr.target_epsilon < 0 and pr.target_epsilon != -1):
            p.append("privacy.target_epsilon: must be > 0 (or -1 for no DP)")
        if pr.target_delta is not None and not 0 < pr.target_delta < 1:
            p.append("privacy.target_delta: must be in (0, 1)")
        if pr.max_grad_norm_dp <= 0:
            p.append("privacy.max_grad_norm_dp: must be > 0")
        if pr.noise_multiplier is not None and pr.noise_multiplier < 0:
            p.append("privacy.noise_multiplier: must be >= 0")
        if t.per_device_train_batch_size < 1 or t.total_train_batch_size < 1:
            p.append("training batch sizes: must be >= 1")
        if t.num_train_epochs <= 0:
            p.append("training.num_train_epochs: must be > 0")
        if t.learning_rate <= 0:
            p.append("training.learning_rate: must be > 0")
        if self.model.peft == "lora" and self.model.lora_r < 1:
            p.append("model.lora_r: must be >= 1")
        from privlm.scrub import check_ner

        if check_ner(self.dataset.ner):
            p.append("dataset." + check_ner(self.dataset.ner))
        return p

    @property
    def dp(self) -> bool:
        return self.privacy.target_epsilon > 0 or self.privacy.noise_multiplier is not None


def report_args(parser):
    parser.add_argument("--privacy_report", action="store_true", help="print epsilon (or sigma) as JSON and exit")
    parser.add_argument("--sample_rate", type=float, help="q, for --privacy_report")
    parser.add_argument("--steps", type=int, help="number of steps, for --privacy_report")


def privacy_report(cfg: DPFinetuneConfig, q: float | None, steps: int | None) -> dict:
    pr = cfg.privacy
    missing = [k for k, v in (("--sample_rate", q), ("--steps", steps), ("--delta", pr.target_delta)) if v is None]
    if pr.noise_multiplier is None and pr.target_epsilon <= 0:
        missing.append("--noise_multiplier or --target_epsilon")
    if missing:
        raise UserError(f"--privacy_report needs {', '.join(missing)}")
    out = {"sample_rate": q, "steps": steps, "delta": pr.target_delta, "accountant": pr.accountant}
    if pr.noise_multiplier is not None:
        out["noise_multiplier"] = pr.noise_multiplier
        out["epsilon"] = accountant.epsilon(pr.noise_multiplier, q, steps, pr.target_delta, pr.accountant)
    else:
        out["target_epsilon"] = pr.target_epsilon
        out["noise_multiplier"] = accountant.noise_multiplier(pr.target_epsilon, q, steps, pr.target_delta,
                                                              pr.accountant)
    return out


def lora(cfg: ModelArgs):
    def wrap(model):
        from peft import LoraConfig, get_peft_model

        missing = [m for m in cfg.target_modules if not any(n.endswith(m) for n, _ in model.named_modules())]
        if missing:
            raise UserError(f"model.target_modules: no module named {', '.join(missing)} in this model")
        return get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                                target_modules=cfg.target_modules, task_type="CAUSAL_LM"))
    return wrap


def evaluate(cfg: DPFinetuneConfig, final: Path, tok, train_records: list[dict], heldout: list[dict]) -> dict:
    """Held-out loss and extraction of the (original, unscrubbed) training PII by the trained model."""
    from privlm import pii_eval

    model = models.load_model(cfg.model.model_path, dtype=cfg.model.dtype, device=models.device())
    if cfg.model.peft == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(final))
    else:
        model = models.load_model(str(final), dtype=cfg.model.dtype, device=models.device())
    model.eval()
    enc = [data.encode_record(tok, r, cfg.dataset.prompt_style, cfg.model.tokenizer_max_length,
                              cfg.dataset.text_field) for r in heldout]
    return {"heldout_loss": pii_eval.heldout_loss(model, tok, enc),
            "pii_extraction": pii_eval.extraction(model, tok, train_records[: cfg.dataset.pii_eval_records])}


@cli
def main(argv: list[str] | None = None) -> dict:
    cfg = C.parse(DPFinetuneConfig, argv, __doc__, extra_args=report_args)
    extra = cfg._extra
    if extra.privacy_report:
        out = privacy_report(cfg, extra.sample_rate, extra.steps)
        print(json.dumps(out))
        return out

    from privlm.dp.sampling import PoissonBatches
    from privlm.dp.step import DPSteps
    from privlm.training import TrainSpec, init_distributed, is_main, train

    ds = cfg.dataset
    records = data.load_records(ds.dataset_path)
    if ds.limit_dataset_size:
        records = records[: ds.limit_dataset_size]
    if not records:
        raise UserError(f"dataset {ds.dataset_path} is empty")
    if ds.eval_dataset_path:
        heldout = data.load_records(ds.eval_dataset_path)
    elif ds.dataset_path.startswith("synthetic"):
        heldout = data.load_records("synthetic:64:1000")
    else:
        cut = max(1, int(len(records) * ds.eval_fraction))
        records, heldout = records[:-cut], records[-cut:]
    originals = records
    scrub_report = None
    if ds.dataset_mode == "scrubbed":
        from privlm import scrub

        records, scrub_report = scrub.scrub(records, ds.text_field, ds.anon_token, ds.pseudonymize,
                                            scrub.load_deny_list(ds.deny_list, records), ds.scrub_entities,
                                            ner=ds.ner)
        print(f"[privlm] scrubbed {scrub_report['entities']} ({scrub_report['ner']})")
    n = len(records)
    t, pr = cfg.training, cfg.privacy
    q = min(1.0, t.total_train_batch_size / n)
    # exactly the steps the loop will take (whole epochs of round(1/q) steps), so the ledger ends at the target
    steps_total = math.ceil(t.num_train_epochs) * PoissonBatches(n, q, 0).steps_per_epoch()
    delta = pr.target_delta if pr.target_delta is not None else 1 / (2 * n)
    if cfg.dp and delta >= 1 / n:
        warnings.warn(f"target_delta={delta} >= 1/N={1 / n:.3g}: such a delta allows leaking a whole record")
    inputs = {"model": models.identity(cfg.model.model_path), "dataset": cfg.dataset.dataset_path}
    if Path(cfg.dataset.dataset_path).is_file():
        inputs["dataset"] = C.file_digest(cfg.dataset.dataset_path)
    run_hash = C.run_hash(cfg, inputs)
    run_dir = Path(t.results_dir) / "dp_models" / run_hash
    final = run_dir / "final_model"
    if final.is_dir():
        print(f"[privlm] run {run_hash} is already finished: {final}")
        return json.loads((run_dir / "metrics.json").read_text())

    ledger = None
    if cfg.dp:
        sigma = pr.noise_multiplier if pr.noise_multiplier is not None else accountant.noise_multiplier(
            pr.target_epsilon, q, steps_total, delta, pr.accountant)
        ledger = accountant.Ledger(sample_rate=q, noise_multiplier=sigma, max_grad_norm=pr.max_grad_norm_dp,
                                   delta=delta, accountant=pr.accountant)
    rank, world = init_distributed()
    tok = models.load_tokenizer(cfg.model.model_path)
    encoded = [data.encode_record(tok, r, cfg.dataset.prompt_style, cfg.model.tokenizer_max_length,
                                  cfg.dataset.text_field) for r in records]
    spec = TrainSpec(epochs=math.ceil(t.num_train_epochs), micro_batch_size=t.per_device_train_batch_size,
                     grad_accum=1 if cfg.dp else max(1, t.total_train_batch_size // (t.per_device_train_batch_size
                                                                                     * world)),
                     lr=t.learning_rate, weight_decay=t.weight_decay, lr_scheduler=t.lr_scheduler,
                     grad_clip=0.0 if cfg.dp else 1.0, zero_stage=t.deepspeed_stage, dtype=cfg.model.dtype,
                     seed=t.seed, save_every_epochs=t.save_every_epochs)
    factory = None
    if cfg.dp:
        pad = data.Encoded([tok.pad_token_id], [])
        factory = lambda ds, col, sp, r, w: DPSteps(ds, col, sp, r, w, ledger=ledger, pad_example=pad,  # noqa: E731
                                                     shuffle_fixed=pr.sampling == "shuffle")
    if is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", {"run_hash": run_hash, **C.to_dict(cfg)})
        atomic_write_json(run_dir / "provenance.json", provenance(seed=t.seed))
    metrics = train(cfg.model.model_path, encoded, lambda b: data.collate(b, tok.pad_token_id), spec, run_dir, tok,
                    desc="dp-sgd" if cfg.dp else "fine-tune", steps_factory=factory,
                    prepare_model=lora(cfg.model) if cfg.model.peft == "lora" else None)
    metrics.update(dataset_size=n, mode="dp" if cfg.dp else ds.dataset_mode, scrub=scrub_report)
    if is_main():
        metrics["eval"] = evaluate(cfg, final, tok, originals, heldout)
        print(f"[privlm] held-out loss {metrics['eval']['heldout_loss']:.4f}, PII extraction "
              f"{metrics['eval']['pii_extraction']['rate']} of {metrics['eval']['pii_extraction']['n']} strings")
        atomic_write_json(run_dir / "metrics.json", metrics)
        if ledger is not None:
            led = metrics["privacy"]
            print(f"[privlm] privacy ledger: epsilon={led['epsilon']:.3f} delta={led['delta']:.3g} "
                  f"sigma={led['noise_multiplier']:.4f} C={led['max_grad_norm']} q={led['sample_rate']:.4g} "
                  f"steps={led['steps']} ({led['accountant']})")
        print(f"[privlm] model: {final}")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
