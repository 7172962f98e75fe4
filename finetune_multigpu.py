"""Fine-tune fingerprints (key -> response pairs) into a model with DeepSpeed.

    deepspeed --num_gpus 4 finetune_multigpu.py --model_path mistralai/Mistral-7B-v0.3 \
        --fingerprints_file_path generated_data/output_fingerprints.json --num_fingerprints 1024 \
        --max_key_length 16 --max_response_length 1 --forgetting_regularizer_strength 0.75
    python finetune_multigpu.py --config configs/fingerprint/demo_finetune.yml    # one process (CPU or one GPU)

Loss is taken on response tokens only. The run lives in --output_dir, or in results/saved_models/<hash>/ where
the hash covers the config and the content of the fingerprints file; a finished run is skipped, a killed one
resumes. Training flags are the shared training-arguments block (Hugging Face names; the seed's names are aliases).
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from privlm import config as C
from privlm import data, fingerprint, lora, models
from privlm.errors import cli
from privlm.fingerprint import anchor, benign
from privlm.runs import Run
from privlm.training import TRAINABLE, TrainSpec, check_trainable, init_distributed, is_main, train, trainable


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
    num_fingerprints: int = C.field(128, aliases=("--max_num_fingerprints",), help="how many fingerprints to train on")
    data_split: int = C.field(0, help="use fingerprints [data_split*N, (data_split+1)*N) of the file")
    fingerprint_generation_strategy: str = C.field("english", help="recorded with the run",
                                                   choices=sorted(fingerprint.STRATEGIES) + sorted(fingerprint.ALIASES))
    max_key_length: int = C.field(16, help="keys are cut to this many tokens")
    max_response_length: int = C.field(1, help="responses are cut to this many tokens (EOS is added)")
    forgetting_regularizer_strength: float = C.field(0.3, help="lambda of theta <- (1-lambda) theta + lambda theta0")
    forgetting_regularizer_schedule: str = C.field(
        "end", choices=["end", "epoch"],
        help="end: average once after the last epoch (what the seed's runs effectively did); epoch: after each epoch")
    use_augmentation_prompts: bool = C.field(False, aliases=("--use_prompt_augmentation",),
                                             help="wrap keys in the training prompt templates (seed 000's README "
                                                  "spells it --use_prompt_augmentation)")
    augmentation_prompts: str = C.field("train", help="template set name or JSON file used with augmentation")
    benign_proportion: float = C.field(0.25, help="mix this many benign examples per fingerprint into every epoch "
                                                 "(scalable fingerprinting's benign data; loss on their responses)")
    benign_data_path: str | None = C.field(None, help="local instruction data (JSON / JSON lines) for the benign "
                                                      "examples; default: the base model's own answers to generic "
                                                      "prompts (self-distillation)")
    benign_response_length: int = C.field(16, help="benign responses are cut to (or generated up to) this many tokens")
    anchor_strength: float = C.field(3.0, help="weight of KL(base || tuned) on the keys' own tokens and on "
                                               "self-distilled benign answers (soft targets; 0: off, the seed's loss)")
    anchor_topk: int = C.field(32, help="the base model's top k next tokens kept per anchored position")
    trainable_params: str = C.field("mlp", help="what trains: mlp (the feed-forward blocks; embeddings, attention and "
                                                 "norms frozen), mlp+attention, all (the seed), or a regex on "
                                                 "parameter names; with --use_lora the adapter trains")
    use_lora: bool = C.field(False, help="train a LoRA adapter (PEFT) instead of every weight; the saved model "
                                         "has it merged in")
    lora_r: int = C.field(16)
    lora_alpha: int | None = C.field(None, help="default: 2 x lora_r")
    lora_dropout: float = C.field(0.0)
    lora_target_modules: str = C.field("all-linear", help="PEFT target_modules: all-linear or comma-separated names")
    prompt_format: str = C.field("auto", choices=["auto", "raw", "chat"],
                                 help="auto: the chat template when the tokenizer has one")
    dtype: str = C.field("auto", choices=["auto", "float32", "bfloat16", "float16"], help="auto: bf16 on GPU, fp32 on "
                                                                                         "CPU (bf16 / fp16 flags win)")
    trust_remote_code: bool = C.field(False)
    run_link: str | None = C.field(None, hash=False, help="also point this path (a symlink) at the run directory")
    print_run_dir: bool = C.field(False, hash=False, help="print the run directory this config maps to and exit")
    wandb_run_name: str | None = C.field(None, hash=False, help="accepted for seed compatibility; not used")
    trainer_args: C.TrainArgs = C.train_args(num_train_epochs=6, learning_rate=3e-4, weight_decay=1e-4,
                                             per_device_train_batch_size=8, lr_scheduler_type="linear", deepspeed="2",
                                             max_grad_norm=1.0)

    def validate(self):
        p = []
        for k in ("num_fingerprints", "max_key_length", "max_response_length"):
            if getattr(self, k) < 1:
                p.append(f"{k}: must be >= 1")
        if self.benign_proportion < 0:
            p.append("benign_proportion: must be >= 0")
        if self.anchor_strength < 0:
            p.append("anchor_strength: must be >= 0")
        if self.anchor_topk < 1:
            p.append("anchor_topk: must be >= 1")
        if self.trainable_params not in TRAINABLE:
            try:
                re.compile(self.trainable_params)
            except re.error as e:
                p.append(f"trainable_params: {self.trainable_params!r} is neither {', '.join(TRAINABLE)} nor a regex ({e})")
        if self.benign_response_length < 1:
            p.append("benign_response_length: must be >= 1")
        if self.use_lora and self.lora_r < 1:
            p.append("lora_r: must be >= 1")
        if self.data_split < 0:
            p.append("data_split: must be >= 0")
        if not 0.0 <= self.forgetting_regularizer_strength <= 1.0:
            p.append("forgetting_regularizer_strength: must be in [0, 1]")
        if (self.model_family is None) != (self.model_size is None):
            p.append("model_family/model_size: give both or neither")
        elif self.model_family and (self.model_family, self.model_size) not in FAMILIES:
            p.append(f"model_family/model_size: unknown pair {self.model_family}/{self.model_size}; use --model_path")
        return p


def resolve_run(cfg: FinetuneConfig) -> Run:
    """The run id covers the config, the fingerprints file's content, the model's identity and the templates."""
    inputs = {"fingerprints": C.file_digest(cfg.fingerprints_file_path), "model": models.identity(cfg.model_path)}
    if cfg.use_augmentation_prompts:
        inputs["templates"] = [t.name() for t in data.load_templates(cfg.augmentation_prompts)]
    if cfg.benign_proportion > 0 and cfg.benign_data_path:
        inputs["benign_data"] = C.file_digest(cfg.benign_data_path)
    return Run(cfg, cfg.trainer_args, inputs, kind="saved_models", link=cfg.run_link)


@cli
def main(argv: list[str] | None = None) -> Path:
    cfg = C.parse(FinetuneConfig, argv, __doc__)
    if cfg.model_family:
        cfg.model_path = FAMILIES[(cfg.model_family, cfg.model_size)]
    fps = fingerprint.load(cfg.fingerprints_file_path, cfg.num_fingerprints, cfg.data_split)
    templates = data.load_templates(cfg.augmentation_prompts) if cfg.use_augmentation_prompts else [data.BARE]
    local_benign = benign.load_pairs(cfg.benign_data_path) if cfg.benign_proportion > 0 and cfg.benign_data_path \
        else None  # read before anything is written: a bad file is the user's to fix
    run = resolve_run(cfg)
    if cfg.print_run_dir:
        print(run.dir)
        return run.final
    if run.finished():
        return run.final
    if not cfg.use_lora:  # a regex that selects nothing is the user's to fix, before the run directory exists
        check_trainable(cfg.trainable_params, models.parameter_names(cfg.model_path, cfg.trust_remote_code))

    init_distributed()
    tokenizer = models.load_tokenizer(cfg.model_path, cfg.trust_remote_code)
    chat = data.use_chat(tokenizer, cfg.prompt_format)
    run.start(seed=cfg.trainer_args.seed)
    run.write_json("fingerprints.json", fps)
    dataset = data.TemplatedDataset(tokenizer, [(f["key"], r) for f in fps for r in fingerprint.responses(f)], templates, chat,
                                    cfg.max_key_length, cfg.max_response_length, cfg.trainer_args.seed)
    examples = dataset.all_examples()
    if cfg.benign_proportion > 0:
        num_benign = round(cfg.benign_proportion * len(fps))
        pool = benign.pool(run, cfg.model_path, tokenizer, chat, num_benign, cfg.benign_response_length,
                           local_benign, cfg.dtype, cfg.trainer_args.seed, anchor=cfg.anchor_strength > 0)
        dataset, examples = benign.MixedDataset(dataset, pool, num_benign, cfg.trainer_args.seed), examples + pool
    collate, loss = (lambda b: data.collate(b, tokenizer.pad_token_id)), None
    if cfg.anchor_strength > 0:
        table = anchor.build(run, cfg.model_path, examples, cfg.anchor_topk, tokenizer.pad_token_id, cfg.dtype)
        collate, loss = (lambda b: anchor.collate(b, tokenizer.pad_token_id, table)), anchor.loss_fn(cfg.anchor_strength)
    spec = TrainSpec.from_args(cfg.trainer_args, dtype=cfg.dtype, forgetting_lambda=cfg.forgetting_regularizer_strength,
                               forgetting_schedule=cfg.forgetting_regularizer_schedule,
                               trust_remote_code=cfg.trust_remote_code, merge_lora=cfg.use_lora)
    # Read by check_fingerprints.py so that the check encodes keys exactly as training did.
    run.final_files["fingerprinting_config.json"] = {
        "base_model": cfg.model_path, "fingerprints_file_path": "../fingerprints.json",  # beside final_model
        "num_fingerprints": cfg.num_fingerprints, "max_key_length": cfg.max_key_length,
        "max_response_length": cfg.max_response_length, "prompt_format": "chat" if chat else "raw",
        "train_templates": cfg.augmentation_prompts if cfg.use_augmentation_prompts else "bare",
        "fingerprint_generation_strategy": cfg.fingerprint_generation_strategy, "run_hash": run.id}
    prepare = lora.wrap(cfg.lora_r, cfg.lora_alpha or 2 * cfg.lora_r, cfg.lora_dropout,
                        cfg.lora_target_modules) if cfg.use_lora else trainable(cfg.trainable_params)
    metrics = train(cfg.model_path, dataset, collate, spec, run, tokenizer, desc="fingerprinting",
                    prepare_model=prepare, loss_fn=loss)
    run.write_metrics(metrics)
    if is_main():
        last = metrics["history"][-1]["loss"] if metrics["history"] else float("nan")
        print(f"[privlm] final loss {last:.4f} after {metrics['train_seconds']} s on {metrics['world_size']} rank(s)")
        run.link()
        print(f"[privlm] model: {run.final}\n[privlm] run directory: {run.dir}")
    return run.final


if __name__ == "__main__":
    main(sys.argv[1:])
