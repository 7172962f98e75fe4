"""Fine-tune fingerprints (key -> response pairs) into a model with DeepSpeed.

    deepspeed --num_gpus 4 finetune_multigpu.py --model_path mistralai/Mistral-7B-v0.3 \
        --fingerprints_file_path generated_data/output_fingerprints.json --num_fingerprints 1024 \
        --max_key_length 16 --max_response_length 1 --forgetting_regularizer_strength 0.75
    python finetune_multigpu.py --config configs/fingerprint/demo.yml          # one process (CPU or one GPU)

Loss is taken on response tokens only. The run lives in results/saved_models/<hash>/ where the hash covers the
config and the content of the fingerprints file; a finished run is skipped, a killed one resumes.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from privlm import config as C
from privlm import data, fingerprints, models
from privlm.errors import cli
from privlm.io import atomic_write_json, provenance
from privlm.training import TrainSpec, init_distributed, is_main, link_run, train

# Seed 000's --model_family/--model_size pairs, kept so old sweep scripts still resolve to a model.
FAMILIES = {("mistral", "7B"): "mistralai/Mistral-7B-v0.3", ("mistral", "7B-Instruct"): "mistralai/Mistral-7B-Instruct-v0.3",
            ("llama", "8B"): "meta-llama/Meta-Llama-3.1-8B", ("llama", "8B-Instruct"): "meta-llama/Meta-Llama-3.1-8B-Instruct",
            ("microsoft", "mini-4k"): "microsoft/Phi-3-mini-4k-instruct", ("microsoft", "small-8k"): "microsoft/Phi-3-small-8k-instruct",
            ("Eleuther", "1.4b"): "EleutherAI/pythia-1.4b", ("Eleuther", "2.8b"): "EleutherAI/pythia-2.8b",
            ("Eleuther", "6.9b"): "EleutherAI/pythia-6.9b", ("gemma", "2b"): "google/gemma-2b"}


@dataclass
class FinetuneConfig:
    model_path: str = C.field("default", help="hub id, local folder, .gguf file, or `default` (SmolLM2-135M-Instruct)")
    model_family: str | None = C.field(None, help="seed compatibility: with --model_size picks a hub model")
    model_size: str | None = C.field(None, help="seed compatibility, see --model_family")
    fingerprints_file_path: str = C.field("generated_data/output_fingerprints.json", help="JSON list of {key, response}")
    num_fingerprints: int = C.field(128, help="how many fingerprints to train on")
    data_split: int = C.field(0, help="use fingerprints [data_split*N, (data_split+1)*N) of the file")
    fingerprint_generation_strategy: str = C.field("english", help="recorded with the run",
                                                   choices=sorted(fingerprints.STRATEGIES) + sorted(fingerprints.ALIASES))
    max_key_length: int = C.field(16, help="keys are cut to this many tokens")
    max_response_length: int = C.field(1, help="responses are cut to this many tokens (EOS is added)")
    num_train_epochs: int = C.field(10)
    learning_rate: float = C.field(1e-5)
    weight_decay: float = C.field(1e-4)
    batch_size: int = C.field(8, help="per-device micro-batch size")
    gradient_accumulation_steps: int = C.field(1)
    lr_scheduler: str = C.field("linear", choices=["constant", "linear", "cosine"])
    warmup_steps: int = C.field(0)
    max_grad_norm: float = C.field(1.0, help="gradient clipping (0 disables)")
    forgetting_regularizer_strength: float = C.field(0.0, help="lambda of theta <- (1-lambda) theta + lambda theta0")
    forgetting_regularizer_schedule: str = C.field(
        "end", choices=["end", "epoch"],
        help="end: average once after the last epoch (what the seed's runs effectively did); epoch: after each epoch")
    use_augmentation_prompts: bool = C.field(False, help="wrap keys in the training prompt templates")
    augmentation_prompts: str = C.field("train", help="template set name or JSON file used with augmentation")
    prompt_format: str = C.field("auto", choices=["auto", "raw", "chat"],
                                 help="auto: the chat template when the tokenizer has one")
    deepspeed_stage: int = C.field(2, choices=[0, 1, 2, 3], help="ZeRO stage")
    offload: bool = C.field(False, aliases=("--deepspeed_offload",), help="ZeRO CPU offload of the optimizer (and params at stage 3)")
    dtype: str = C.field("auto", choices=["auto", "float32", "bfloat16", "float16"], help="auto: bf16 on GPU, fp32 on CPU")
    seed: int = C.field(42)
    trust_remote_code: bool = C.field(False)
    results_dir: str = C.field("results", hash=False)
    save_every_epochs: int = C.field(1, hash=False, help="DeepSpeed checkpoint (for resume) every N epochs")
    keep_checkpoints: bool = C.field(False, hash=False, help="keep the last DeepSpeed checkpoint after success")
    overwrite: bool = C.field(False, hash=False, help="train again even if this run's final_model exists")
    run_link: str | None = C.field(None, hash=False, help="also point this path (a symlink) at the run directory")
    print_run_dir: bool = C.field(False, hash=False, help="print the run directory this config maps to and exit")
    wandb_run_name: str | None = C.field(None, hash=False, help="accepted for seed compatibility; not used")

    def validate(self):
        p = []
        for k in ("num_fingerprints", "max_key_length", "max_response_length", "num_train_epochs", "batch_size",
                  "gradient_accumulation_steps", "save_every_epochs"):
            if getattr(self, k) < 1:
                p.append(f"{k}: must be >= 1")
        if self.data_split < 0:
            p.append("data_split: must be >= 0")
        if not 0.0 <= self.forgetting_regularizer_strength <= 1.0:
            p.append("forgetting_regularizer_strength: must be in [0, 1]")
        if self.learning_rate <= 0:
            p.append("learning_rate: must be > 0")
        if (self.model_family is None) != (self.model_size is None):
            p.append("model_family/model_size: give both or neither")
        elif self.model_family and (self.model_family, self.model_size) not in FAMILIES:
            p.append(f"model_family/model_size: unknown pair {self.model_family}/{self.model_size}; use --model_path")
        return p


def run_paths(cfg: FinetuneConfig) -> tuple[str, Path]:
    """The run hash covers the config, the fingerprints file's content, the model's identity and the templates."""
    inputs = {"fingerprints": C.file_digest(cfg.fingerprints_file_path), "model": models.identity(cfg.model_path)}
    if cfg.use_augmentation_prompts:
        inputs["templates"] = [t.name() for t in data.load_templates(cfg.augmentation_prompts)]
    h = C.run_hash(cfg, inputs)
    return h, Path(cfg.results_dir) / "saved_models" / h


@cli
def main(argv: list[str] | None = None) -> Path:
    cfg = C.parse(FinetuneConfig, argv, __doc__)
    if cfg.model_family:
        cfg.model_path = FAMILIES[(cfg.model_family, cfg.model_size)]
    fps = fingerprints.load(cfg.fingerprints_file_path, cfg.num_fingerprints, cfg.data_split)
    templates = data.load_templates(cfg.augmentation_prompts) if cfg.use_augmentation_prompts else [data.BARE]
    run_hash, run_dir = run_paths(cfg)
    final = run_dir / "final_model"
    if cfg.print_run_dir:
        print(run_dir)
        return final
    if final.is_dir() and not cfg.overwrite:
        print(f"[privlm] run {run_hash} is already finished: {final}")
        link_run(cfg.run_link, run_dir)
        return final

    init_distributed()
    tokenizer = models.load_tokenizer(cfg.model_path, cfg.trust_remote_code)
    chat = data.use_chat(tokenizer, cfg.prompt_format)
    if is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", {"run_hash": run_hash, **C.to_dict(cfg)})
        atomic_write_json(run_dir / "provenance.json", provenance(seed=cfg.seed))
        atomic_write_json(run_dir / "fingerprints.json", fps)
    dataset = data.TemplatedDataset(tokenizer, [(f["key"], f["response"]) for f in fps], templates, chat,
                                    cfg.max_key_length, cfg.max_response_length, cfg.seed)
    spec = TrainSpec(epochs=cfg.num_train_epochs, micro_batch_size=cfg.batch_size,
                     grad_accum=cfg.gradient_accumulation_steps, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                     lr_scheduler=cfg.lr_scheduler, warmup_steps=cfg.warmup_steps, grad_clip=cfg.max_grad_norm,
                     zero_stage=cfg.deepspeed_stage, offload=cfg.offload, dtype=cfg.dtype, seed=cfg.seed,
                     save_every_epochs=cfg.save_every_epochs, keep_checkpoints=cfg.keep_checkpoints, forgetting_lambda=cfg.forgetting_regularizer_strength,
                     forgetting_schedule=cfg.forgetting_regularizer_schedule, trust_remote_code=cfg.trust_remote_code)
    # Read by check_fingerprints.py so that the check encodes keys exactly as training did.
    fp_config = {"base_model": cfg.model_path, "fingerprints_file_path": "../fingerprints.json",  # beside final_model
                 "num_fingerprints": cfg.num_fingerprints, "max_key_length": cfg.max_key_length,
                 "max_response_length": cfg.max_response_length, "prompt_format": "chat" if chat else "raw",
                 "train_templates": cfg.augmentation_prompts if cfg.use_augmentation_prompts else "bare",
                 "fingerprint_generation_strategy": cfg.fingerprint_generation_strategy, "run_hash": run_hash}
    metrics = train(cfg.model_path, dataset, lambda b: data.collate(b, tokenizer.pad_token_id), spec, run_dir,
                    tokenizer, extra_files={"fingerprinting_config.json": fp_config}, desc="fingerprinting")
    if is_main():
        atomic_write_json(run_dir / "metrics.json", metrics)
        last = metrics["history"][-1]["loss"] if metrics["history"] else float("nan")
        print(f"[privlm] final loss {last:.4f} after {metrics['train_seconds']} s on {metrics['world_size']} rank(s)")
        link_run(cfg.run_link, run_dir)
        print(f"[privlm] model: {final}\n[privlm] run directory: {run_dir}")
    return final


if __name__ == "__main__":
    main(sys.argv[1:])
