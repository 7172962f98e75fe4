"""The private fine-tuning pipeline behind dp_finetune.py (and the privacy audit, which adds its canaries):
undefended, scrubbed or DP-SGD, LoRA or full fine-tuning, under DeepSpeed; evaluation of held-out loss and PII
extraction. `run(cfg)` validates (the DP front door), skips a finished run, scrubs, trains, evaluates, writes
metrics.json; the entry script only parses.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import config as C
from .. import data, models, stats
from ..errors import UserError
from ..runs import Run
from .plan import PrivacyArgs, make_private, plan_budget


@dataclass
class ModelArgs:
    model_path: str = C.field("default", aliases=("--model_name", "--architecture"),
                              help="hub id, local folder, .gguf, or `default` (seed 001: model_args.architecture)")
    pre_trained: bool = C.field(True, help="false: start from the architecture's random initialisation (needs "
                                           "peft none)")
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
                                help="local .jsonl/.csv/.parquet/.txt, a datasets.save_to_disk folder (seed 004's "
                                     "labelled_*), data/echr or data/enron (local exports), synthetic[:N], or a hub "
                                     "dataset")
    sample_duplication_rate: int = C.field(1, help="every training record appears this many times (seed 001)")
    dataset_mode: str = C.field("undefended", choices=["undefended", "scrubbed"],
                                help="scrubbed: PII replaced (Presidio) before training")
    anon_token: str = C.field("<MASK>", help="what scrubbed PII becomes (unless pseudonymize)")
    pseudonymize: bool = C.field(False, help="replace PII by consistent Faker pseudonyms instead of anon_token")
    deny_list: str | None = C.field(None, help="names to scrub (JSON list or text file), or from_data for the "
                                               "synthetic corpus' own names; needed for PERSON without an NER model")
    scrub_entities: list[str] | None = C.field(None, help="Presidio entity types to scrub (default: all found)")
    ner: str = C.field("auto", help="NER for PERSON/LOCATION: auto (spaCy en_core_web_* if installed), none, "
                                    "spacy:NAME, hf:MODEL (token classification) or flair:MODEL; seed 001's "
                                    "`flair` (with ner_model) maps to Presidio's auto")
    ner_model: str | None = C.field(None, help="seed 001's ner_args.ner_model (recorded; see ner)")
    eval_dataset_path: str | None = C.field(None, help="held-out records (default: synthetic:64:1000 for the "
                                                       "synthetic corpus, else the last eval_fraction of the data)")
    eval_fraction: float = C.field(0.1)
    pii_eval_records: int | None = C.field(None, hash=False, help="measure PII extraction on this many training "
                                                                   "records (default all)")
    prompt_style: str = C.field("uncond_generation", choices=["uncond_generation", "vicuna"])
    text_field: str = C.field("text")
    limit_dataset_size: int | None = C.field(None)


@dataclass
class DPFinetuneConfig:
    SECTION_ALIASES = {"privacy_args": "privacy", "model_args": "model", "dataset_args": "dataset",
                       "ner_args": "dataset"}  # seed 001's sections
    IGNORED_KEYS = {"privacy.eps_error": "the accountant's own precision is used",
                    "privacy.no_accountant": "the accountant always runs",
                    "dataset.anonymize": "scrubbing follows dataset_mode and anon_token / pseudonymize",
                    "dataset.limit_eval_dataset": "held-out data is set by eval_dataset_path / eval_fraction",
                    "model.chat_template": "prompts follow prompt_style"}
    privacy: PrivacyArgs = field(default_factory=PrivacyArgs)
    model: ModelArgs = field(default_factory=ModelArgs)
    dataset: DatasetArgs = field(default_factory=DatasetArgs)
    trainer_args: C.TrainArgs = C.train_args(per_device_train_batch_size=8, total_train_batch_size=32,
                                             num_train_epochs=3, learning_rate=3e-4, lr_scheduler_type="constant",
                                             weight_decay=0.0, deepspeed="0", max_grad_norm=1.0)
    gpus: int | None = C.field(None, hash=False, help="seed compatibility; the deepspeed launcher decides")
    job_sess: str | None = C.field(None, hash=False, help="seed 004: the run goes to outputs/<job_sess>/ (unless "
                                                         "output_dir is given)")
    no_eval_at_start: bool = C.field(False, hash=False, help="seed 004 compatibility: there is no evaluation before "
                                                             "training")

    def validate(self):
        p = []
        if self.model.peft == "lora" and self.model.lora_r < 1:
            p.append("model.lora_r: must be >= 1")
        if self.trainer_args.total_train_batch_size is None:
            p.append("trainer_args.total_train_batch_size: required (the logical batch; with DP the expected one)")
        if not self.model.pre_trained and self.model.peft != "none":
            p.append("model.pre_trained: false trains from a random initialisation, which needs peft none")
        if self.dataset.sample_duplication_rate < 1:
            p.append("dataset.sample_duplication_rate: must be >= 1")
        from .scrub import check_ner

        problem = check_ner(self.dataset.ner) if self.dataset.ner != "flair" else None
        if problem:
            p.append("dataset." + problem)
        return p

    @property
    def dp(self) -> bool:
        return self.privacy.enabled


NOT_PRIVATE = ["history[].loss (per-epoch training loss)", "dataset_size",
               "scrub.entities (entity counts found in the training data)",
               "eval.pii_extraction (measured on the training records)", "eval.heldout_loss (on held-out records)"]


def report_args(parser):
    parser.add_argument("--privacy_report", action="store_true", help="print epsilon (or sigma) as JSON and exit")
    parser.add_argument("--sample_rate", type=float, help="q, for --privacy_report")
    parser.add_argument("--steps", type=int, help="number of steps, for --privacy_report")


def privacy_report(cfg: DPFinetuneConfig, q: float | None, steps: int | None) -> dict:
    pr = cfg.privacy
    missing = [k for k, v in (("--sample_rate", q), ("--steps", steps), ("--delta", pr.target_delta)) if v is None]
    if not pr.enabled:
        missing.append("--noise_multiplier or --target_epsilon")
    if missing:
        raise UserError(f"--privacy_report needs {', '.join(missing)}")
    out = plan_budget(pr, q, steps, pr.target_delta)
    if pr.noise_multiplier is None:
        out["target_epsilon"] = out.pop("epsilon")
    return out


def lora(cfg: ModelArgs):
    from .. import lora as peft_lora

    return peft_lora.wrap(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, list(cfg.target_modules))


def full_dp(model):
    """DP full fine-tuning: norm layers frozen (documented), any layer type we cannot clip refused by name."""
    from .ghost import prepare_full_dp
    from ..training import is_main

    frozen = prepare_full_dp(model)
    if frozen and is_main():
        print(f"[privlm] DP full fine-tuning: {len(frozen)} norm weights frozen (e.g. {frozen[0]})")
    return model


def load_trained(cfg: DPFinetuneConfig, final: Path):
    """The trained model, ready for evaluation: the LoRA adapter on its base model, or the whole saved model."""
    if cfg.model.peft == "lora":
        from peft import PeftModel

        base = models.load_model(cfg.model.model_path, dtype=cfg.model.dtype, device=models.device())
        model = PeftModel.from_pretrained(base, str(final))
    else:
        model = models.load_model(str(final), dtype=cfg.model.dtype, device=models.device())
    return model.eval()


def evaluate(cfg: DPFinetuneConfig, final: Path, tok, train_records: list[dict], heldout: list[dict]) -> dict:
    """Held-out loss and extraction of the (original, unscrubbed) training PII by the trained model."""
    from ..eval.loss import token_loss
    from ..eval.pii import extraction

    model = load_trained(cfg, final)
    enc = [data.encode_record(tok, r, cfg.dataset.prompt_style, cfg.model.tokenizer_max_length,
                              cfg.dataset.text_field) for r in heldout]
    return {"heldout_loss": token_loss(model, tok, enc),
            "pii_extraction": extraction(model, tok, train_records[: cfg.dataset.pii_eval_records])}


def load_data(ds: DatasetArgs) -> tuple[list[dict], list[dict]]:
    """Training records and held-out records (cheap: no scrubbing, no tokenizer). A dataset with its own splits
    (ECHR, a save_to_disk DatasetDict) gives its validation split; else the last eval_fraction is held out."""
    records = data.load_records(ds.dataset_path)
    if ds.limit_dataset_size:
        records = records[: ds.limit_dataset_size]
    if not records:
        raise UserError(f"dataset {ds.dataset_path} is empty")
    if ds.eval_dataset_path:
        heldout = data.load_records(ds.eval_dataset_path)
    elif ds.dataset_path.startswith("synthetic"):
        heldout = data.load_records("synthetic:64:1000")
    elif data.has_splits(ds.dataset_path):
        heldout = data.load_records(ds.dataset_path, split="validation")
    else:
        cut = max(1, int(len(records) * ds.eval_fraction))
        records, heldout = records[:-cut], records[-cut:]
    return [r for r in records for _ in range(ds.sample_duplication_rate)], heldout


def scrub_fields(ds: DatasetArgs) -> list[str]:
    """Every field training reads: the text (or instruction) for uncond_generation, instruction and answer for vicuna."""
    return ["instruction", "answer"] if ds.prompt_style == "vicuna" else list(dict.fromkeys([ds.text_field,
                                                                                             "instruction"]))


def logical_batch(cfg: DPFinetuneConfig) -> int:
    """total_train_batch_size when given; else, if the config sets gradient accumulation (seed 001's files),
    per-device batch x accumulation x ranks, as the Hugging Face Trainer does; else the default."""
    import os

    ta = cfg.trainer_args
    if "trainer_args.total_train_batch_size" not in cfg.explicit and \
            "trainer_args.gradient_accumulation_steps" in cfg.explicit:
        return ta.per_device_train_batch_size * ta.gradient_accumulation_steps * int(os.environ.get("WORLD_SIZE", 1))
    return ta.total_train_batch_size


def front_door(cfg: DPFinetuneConfig, dataset_size: int):
    """The DP plan (None without DP), every privacy setting checked against the data and the training setup
    before anything expensive. Call after `logical_batch` has set the batch size."""
    if not cfg.dp:
        return None
    ta = cfg.trainer_args
    return make_private(cfg.privacy, dataset_size=dataset_size, batch_size=ta.total_train_batch_size,
                        epochs=ta.num_train_epochs, max_steps=ta.max_steps,
                        grad_accum=1 if "trainer_args.total_train_batch_size" not in cfg.explicit
                        else ta.gradient_accumulation_steps,
                        max_grad_norm=ta.max_grad_norm if "trainer_args.max_grad_norm" in cfg.explicit else 0.0)


def clip_only_plan(cfg: DPFinetuneConfig, dataset_size: int):
    """An undefended run's white-box audit: Poisson batches and per-example clipping at the named
    max_grad_norm_dp, no noise (sigma 0: no accountant's epsilon)."""
    from ..training import planned_steps
    from .plan import fixed_plan, run_delta
    from .sampling import steps_per_epoch

    ta = cfg.trainer_args
    q = min(1.0, ta.total_train_batch_size / dataset_size)
    return fixed_plan(noise_multiplier=0.0, max_grad_norm=cfg.privacy.max_grad_norm_dp, dataset_size=dataset_size,
                      sample_rate=q, delta=run_delta(cfg.privacy, dataset_size),
                      steps=planned_steps(ta.num_train_epochs, ta.max_steps, steps_per_epoch(q)),
                      reproducible_noise=cfg.privacy.reproducible_noise)


def run(cfg: DPFinetuneConfig, extra_records: list[dict] | None = None, whitebox=None) -> dict:
    """Train and evaluate as configured; `extra_records` join the training records (after loading, before
    scrubbing and the privacy plan) and the run's identity. `whitebox` (privlm.audit.whitebox.GradientCanaries):
    gradient canaries, examples of the dataset (its members count in N) that DP-SGD samples, clips and noises
    with the rest; an undefended run then clips without noise. Returns metrics.json's content."""
    from ..training import TrainSpec, init_distributed, is_main, train

    ds, ta = cfg.dataset, cfg.trainer_args
    if cfg.job_sess and not ta.output_dir:  # seed 004: checkpoints under outputs/<job_sess>
        ta.output_dir = str(Path("outputs") / cfg.job_sess)
    ta.total_train_batch_size = logical_batch(cfg)
    records, heldout = load_data(ds)
    if extra_records:
        records = records + list(extra_records)
    n_canaries = int(whitebox.members.sum()) if whitebox is not None else 0
    plan = front_door(cfg, len(records) + n_canaries)
    if whitebox is not None:
        if plan is None:
            plan = clip_only_plan(cfg, len(records) + n_canaries)
        plan.whitebox = whitebox
    inputs = {"model": models.identity(cfg.model.model_path), "dataset": ds.dataset_path}
    if Path(ds.dataset_path).is_file():
        inputs["dataset"] = C.file_digest(ds.dataset_path)
    if extra_records:
        inputs["extra_records"] = hashlib.sha256(json.dumps(extra_records, sort_keys=True).encode()).hexdigest()
    if whitebox is not None:
        inputs["whitebox"] = hashlib.sha256(json.dumps([whitebox.kind, whitebox.seed, whitebox.members.tolist()]
                                                       ).encode()).hexdigest()
    job = Run(cfg, ta, inputs, kind="dp_models")
    if job.finished():
        return job.metrics()

    originals, scrub_report = records, None
    if ds.dataset_mode == "scrubbed":
        from . import scrub

        ner = ds.ner
        if ner == "flair":  # seed 001's Flair NER: Presidio with the NER model installed here stands in for it
            print(f"[privlm] ner: flair ({ds.ner_model or 'default model'}) is mapped to Presidio (ner: auto)")
            ner = "auto"
        records, scrub_report = scrub.scrub(records, scrub_fields(ds), ds.anon_token, ds.pseudonymize,
                                            scrub.load_deny_list(ds.deny_list, records), ds.scrub_entities,
                                            ner=ner)
        print(f"[privlm] scrubbed {scrub_report['entities']} ({scrub_report['ner']})")
    init_distributed()
    tok = models.load_tokenizer(cfg.model.model_path)
    encoded = [data.encode_record(tok, r, ds.prompt_style, cfg.model.tokenizer_max_length, ds.text_field)
               for r in records]
    if plan is not None:  # DP draws its own Poisson batches and clips per example
        spec = TrainSpec.from_args(ta, dtype=cfg.model.dtype, grad_accum=1, total_batch_size=None, grad_clip=0.0,
                                   pretrained=cfg.model.pre_trained, dp_step=True)
        factory = plan.steps_factory(data.Encoded([tok.pad_token_id], []))
    else:
        spec, factory = TrainSpec.from_args(ta, dtype=cfg.model.dtype, pretrained=cfg.model.pre_trained), None
    job.start(seed=ta.seed)
    prepare = lora(cfg.model) if cfg.model.peft == "lora" else (full_dp if plan else None)
    metrics = train(cfg.model.model_path, encoded, lambda b: data.collate(b, tok.pad_token_id), spec, job, tok,
                    desc="dp-sgd" if plan else "fine-tune", steps_factory=factory, prepare_model=prepare)
    metrics.update(dataset_size=len(records) + n_canaries, mode="dp" if cfg.dp else ds.dataset_mode, scrub=scrub_report,
                   privacy_plan=plan.to_dict() if plan else None,
                   noise_source=plan.noise_source if plan else None,
                   # computed on the private data outside the DP guarantee, which covers the weights only
                   not_private=NOT_PRIVATE if plan else None)
    if is_main():
        metrics["eval"] = evaluate(cfg, job.final, tok, originals, heldout)
        pii = metrics["eval"]["pii_extraction"]
        print(f"[privlm] held-out loss {metrics['eval']['heldout_loss']:.4f}, PII extraction "
              f"{pii['extracted']} of {pii['n']} strings = {stats.fmt(pii['rate'], pii['rate_ci'])}")
        job.write_metrics(metrics)
        if cfg.dp:
            led = metrics["privacy"]
            print(f"[privlm] privacy ledger: epsilon={led['epsilon']:.3f} delta={led['delta']:.3g} "
                  f"sigma={led['noise_multiplier']:.4f} C={led['max_grad_norm']} q={led['sample_rate']:.4g} "
                  f"steps={led['steps']} ({led['accountant']})")
        print(f"[privlm] model: {job.final}")
    return metrics


