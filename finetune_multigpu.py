"""Fine-tune fingerprints (key -> response pairs) into a model with DeepSpeed.

    deepspeed --num_gpus 4 finetune_multigpu.py --model_path mistralai/Mistral-7B-v0.3 \
        --fingerprints_file_path generated_data/output_fingerprints.json --num_fingerprints 1024 \
        --max_key_length 16 --max_response_length 1 --forgetting_regularizer_strength 0.75
    python finetune_multigpu.py --config configs/fingerprint/demo_finetune.yml    # one process (CPU or one GPU)

    deepspeed --num_gpus 1 finetune_multigpu.py --recipe oml --model_path M --num_fingerprints 16   # OML 1.0's recipe

Loss is taken on response tokens only; which tokens, and how keys are prompted (raw text, as OML does, unless
--use_chat_template), is privlm.fingerprint.derive's business, shared with the checker. --recipe picks the
optimisation (privlm.fingerprint.recipes). The run lives in --output_dir, or in results/saved_models/<hash>/ where
the hash covers the config and the content of the fingerprints file; a finished run is skipped, a killed one
resumes; its hash is printed as OML prints it and written to current_config_hash.txt. Training flags are the shared
training-arguments block (Hugging Face names; the seeds' names are aliases).
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from privlm import config as C
from privlm import data, fingerprint, lora, models
from privlm.errors import UserError, cli
from privlm.fingerprint import anchor, benign, derive, expand, mergeaware, recipes
from privlm.io import atomic_write_text
from privlm.runs import Run
from privlm.training import TRAINABLE, TrainSpec, check_trainable, init_distributed, is_main, train, trainable


@dataclass
class FinetuneConfig:
    recipe: str = C.field("privlm", choices=sorted(recipes.RECIPES),
                          help="optimisation defaults: privlm (ours, measured on the default model), oml (OML 1.0's), "
                               "scalable (scalable fingerprinting's); explicit flags win")
    model_path: str = C.field("default", help="hub id, local folder, .gguf file, or `default` (SmolLM2-135M-Instruct)")
    model_family: str | None = C.field(None, help="OML's families (llama, mistral, Eleuther, microsoft, gemma): with "
                                                  "--model_size names a hub model, as OML does")
    model_size: str | None = C.field(None, help="see --model_family (e.g. 7B, 8B-Instruct, 410m, mini-4k)")
    fingerprints_file_path: str = C.field("generated_data/output_fingerprints.json", help="JSON list of {key, response}")
    num_fingerprints: int = C.field(128, aliases=("--max_num_fingerprints",), help="how many fingerprints to train on")
    num_responses_per_fingerprint: int | None = C.field(None, help="train the first R responses of each key (a "
                                                                   "\"response\" list); default: all of them")
    data_split: int = C.field(0, help="use fingerprints [data_split*N, (data_split+1)*N) of the file")
    fingerprint_generation_strategy: str | None = C.field(
        None, choices=derive.STRATEGY_NAMES,
        help="which tokens train (OML): english/random_word: a punctuation-free window of the response; "
             "inverse_nucleus/perinucleus: the response as written; default: each entry's \"strategy\", else english")
    response_semantics: str = C.field("oml", choices=list(derive.SEMANTICS),
                                      help="how responses become tokens: oml (OML 1.0), scalable, or first_tokens "
                                           "(privlm before 2026-12-06)")
    keep_eos_in_response: bool | None = C.field(None, help="train an EOS after the response (default: yes, as OML; "
                                                           "no with response_semantics scalable)")
    max_key_length: int = C.field(16, help="keys are cut to this many tokens")
    max_response_length: int = C.field(1, help="response tokens trained (the window's length)")
    forgetting_regularizer_strength: float = C.field(0.3, help="lambda of theta <- (1-lambda) theta + lambda theta0")
    forgetting_regularizer_schedule: str = C.field(
        "end", choices=["end", "epoch"],
        help="end: average once after the last epoch (what the seed's runs effectively did); epoch: after each epoch")
    merge_aware_alphas: list[float] = C.field(
        default_factory=list, help="also train the loss at the weights a merge with the base at each of these "
                                   "thief weights alpha gives (MergePrint-style; one more forward/backward each)")
    merge_aware_strength: float = C.field(1.0, help="weight of the merged-weights loss (with --merge_aware_alphas)")
    use_augmentation_prompts: bool = C.field(False, aliases=("--use_prompt_augmentation",),
                                             help="wrap keys in the training prompt templates (seed 000's README "
                                                  "spells it --use_prompt_augmentation)")
    augmentation_prompts: str = C.field("train", help="template set name or JSON file used with augmentation")
    benign_proportion: float = C.field(0.25, help="mix this many benign examples per fingerprint into every epoch "
                                                 "(scalable fingerprinting's benign data; loss on their responses)")
    benign_data_path: str | None = C.field(None, aliases=("--benign_data_file_path",),
                                           help="local benign data (JSON / JSON lines: instruction data, or "
                                                "scalable fingerprinting's [{\"key\": text}] continuations); default: "
                                                "the base model's own answers to generic prompts")
    benign_response_length: int = C.field(16, help="benign responses are cut to (or generated up to) this many tokens")
    anchor_strength: float = C.field(3.0, help="weight of KL(base || tuned) on the keys' own tokens and on "
                                               "self-distilled benign answers (soft targets; 0: off, the seed's loss)")
    anchor_topk: int = C.field(32, help="the base model's top k next tokens kept per anchored position")
    trainable_params: str = C.field("mlp", help="what trains: mlp (the feed-forward blocks; embeddings, attention and "
                                                 "norms frozen), mlp+attention, all (the seed), or a regex on "
                                                 "parameter names; with --use_lora the adapter trains")
    expansion_rate: float = C.field(0.0, help="scalable fingerprinting's MLP expansion: add rate x intermediate_size "
                                              "units to every MLP and train only them (saved as a plain, wider model)")
    early_stop_loss: float = C.field(0.0, help="> 0: stop after an epoch whose mean loss is below it")
    use_lora: bool = C.field(False, help="train a LoRA adapter (PEFT) instead of every weight; the saved model "
                                         "has it merged in")
    lora_r: int = C.field(16, aliases=("--lora_rank",))
    lora_alpha: int | None = C.field(None, help="default: lora_alpha_ratio x lora_r")
    lora_alpha_ratio: float = C.field(2.0, help="alpha = ratio x rank (scalable fingerprinting's name)")
    lora_dropout: float = C.field(0.0)
    lora_target_modules: str = C.field("all-linear", help="PEFT target_modules: all-linear or comma-separated names")
    prompt_format: str = C.field("raw", choices=["auto", "raw", "chat"],
                                 help="raw: the key as plain text, as OML trains and checks; chat: the chat "
                                      "template; auto: chat when the tokenizer has one")
    use_chat_template: bool = C.field(False, help="scalable fingerprinting's name for --prompt_format chat")
    dtype: str = C.field("auto", choices=["auto", "float32", "bfloat16", "float16"], help="auto: bf16 on GPU, fp32 on "
                                                                                         "CPU (bf16 / fp16 flags win)")
    trust_remote_code: bool = C.field(False)
    run_link: str | None = C.field(None, hash=False, help="also point this path (a symlink) at the run directory")
    print_run_dir: bool = C.field(False, hash=False, help="print the run directory this config maps to and exit")
    wandb_run_name: str | None = C.field(None, hash=False, help="log to Weights & Biases under this project name "
                                                                "(when wandb is installed)")
    trainer_args: C.TrainArgs = C.train_args(num_train_epochs=6, learning_rate=3e-4, weight_decay=1e-4,
                                             per_device_train_batch_size=8, lr_scheduler_type="linear", deepspeed="2",
                                             max_grad_norm=1.0)

    def validate(self):
        p = []
        for k in ("num_fingerprints", "max_key_length", "max_response_length"):
            if getattr(self, k) < 1:
                p.append(f"{k}: must be >= 1")
        if self.num_responses_per_fingerprint is not None and self.num_responses_per_fingerprint < 1:
            p.append("num_responses_per_fingerprint: must be >= 1")
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
        if self.use_lora and self.lora_alpha_ratio <= 0:
            p.append("lora_alpha_ratio: must be > 0")
        if self.expansion_rate < 0:
            p.append("expansion_rate: must be >= 0")
        if self.expansion_rate > 0 and self.use_lora:
            p.append("expansion_rate: cannot be combined with --use_lora")
        if any(not 0.0 <= a < 1.0 for a in self.merge_aware_alphas):
            p.append(f"merge_aware_alphas: each must be in [0, 1), got {self.merge_aware_alphas}")
        if self.merge_aware_strength < 0:
            p.append("merge_aware_strength: must be >= 0")
        if self.merge_aware_alphas and self.trainer_args.zero_stage == 3:
            p.append("merge_aware_alphas: needs full weights on every rank (ZeRO stage 0-2, not 3)")
        if self.early_stop_loss < 0:
            p.append("early_stop_loss: must be >= 0")
        if self.data_split < 0:
            p.append("data_split: must be >= 0")
        if not 0.0 <= self.forgetting_regularizer_strength <= 1.0:
            p.append("forgetting_regularizer_strength: must be in [0, 1]")
        if (self.model_family is None) != (self.model_size is None):
            p.append("model_family/model_size: give both or neither")
        elif self.model_family and self.model_family not in models.FAMILIES:
            p.append(f"model_family: unknown family {self.model_family!r} (OML's: {', '.join(models.FAMILIES)})")
        return p


def resolve_run(cfg: FinetuneConfig) -> Run:
    """The run id covers the config, the fingerprints file's content, the model's identity and the templates."""
    inputs = {"fingerprints": C.file_digest(cfg.fingerprints_file_path), "model": models.identity(cfg.model_path)}
    if cfg.use_augmentation_prompts:
        inputs["templates"] = [t.name() for t in data.load_templates(cfg.augmentation_prompts)]
    if cfg.benign_proportion > 0 and cfg.benign_data_path:
        inputs["benign_data"] = C.file_digest(cfg.benign_data_path)
    return Run(cfg, cfg.trainer_args, inputs, kind="saved_models", link=cfg.run_link)


def settings(cfg: FinetuneConfig) -> FinetuneConfig:
    """The recipe's defaults where the user set nothing, then the seeds' spellings resolved."""
    recipes.apply(cfg)
    if cfg.use_chat_template:
        if cfg.prompt_format == "raw" and "prompt_format" in cfg.explicit:
            raise UserError("use_chat_template conflicts with --prompt_format raw")
        cfg.prompt_format = "chat"
    if cfg.model_family:
        cfg.model_path = models.family_model(cfg.model_family, cfg.model_size)
    if cfg.use_lora and "lora_alpha" not in cfg.explicit:
        cfg.lora_alpha = round(cfg.lora_alpha_ratio * cfg.lora_r)
    if cfg.wandb_run_name:  # OML logs every run to wandb under this project name
        if importlib.util.find_spec("wandb") is None or os.environ.get("WANDB_MODE") == "disabled":
            if is_main():
                print(f"[privlm] --wandb_run_name {cfg.wandb_run_name}: wandb is off (not installed or "
                      "WANDB_MODE=disabled); losses are in the run's log.txt", file=sys.stderr)
        else:
            os.environ.setdefault("WANDB_PROJECT", cfg.wandb_run_name)
            cfg.trainer_args.report_to = "wandb"
    return cfg


def record(cfg: FinetuneConfig, run: Run, tokenizer, chat: bool, spec: TrainSpec) -> dict:
    """final_model/fingerprinting_config.json: how the checker must prompt and which tokens to expect (it holds no
    key or response: those stay in the owner-only fingerprints.json beside final_model)."""
    return {"base_model": cfg.model_path, "fingerprints_file_path": "../fingerprints.json",  # beside final_model
            "num_fingerprints": cfg.num_fingerprints, "max_key_length": cfg.max_key_length,
            "max_response_length": cfg.max_response_length, "prompt_format": "chat" if chat else "raw",
            "use_chat_template": chat, "train_templates": cfg.augmentation_prompts if cfg.use_augmentation_prompts
            else "bare", "fingerprint_generation_strategy": cfg.fingerprint_generation_strategy,
            "response_semantics": cfg.response_semantics, "keep_eos_in_response": cfg.keep_eos_in_response,
            "num_responses_per_fingerprint": cfg.num_responses_per_fingerprint, "recipe": cfg.recipe,
            "expansion_rate": cfg.expansion_rate, "dtype": str(models.pick_dtype(spec.dtype)).removeprefix("torch."),
            "tokenizer_digest": derive.tokenizer_digest(tokenizer), "run_hash": run.id}


def announce(run: Run, recipe: str):
    """OML's outputs, for its sweep scripts: the line they grep, and current_config_hash.txt in the working
    directory (overwritten as OML does; appended under --recipe scalable, whose scripts read its last line)."""
    print(f"Config hash of the final model: {run.id}")
    f = Path("current_config_hash.txt")
    old = f.read_text() if recipe == "scalable" and f.is_file() else ""
    atomic_write_text(f, old + run.id + "\n")


@cli
def main(argv: list[str] | None = None) -> Path:
    cfg = settings(C.parse(FinetuneConfig, argv, __doc__))
    fps = fingerprint.load(cfg.fingerprints_file_path, cfg.num_fingerprints, cfg.data_split)
    fps = derive.take_responses(fps, cfg.num_responses_per_fingerprint)
    templates = data.load_templates(cfg.augmentation_prompts) if cfg.use_augmentation_prompts else [data.BARE]
    local_benign = benign.load_pairs(cfg.benign_data_path) if cfg.benign_proportion > 0 and cfg.benign_data_path \
        else None  # read before anything is written: a bad file is the user's to fix
    run = resolve_run(cfg)
    if cfg.print_run_dir:
        print(run.dir)
        return run.final
    if run.finished():
        if is_main():
            announce(run, cfg.recipe)
        return run.final
    if not cfg.use_lora:  # a regex that selects nothing is the user's to fix, before the run directory exists
        check_trainable(cfg.trainable_params, models.parameter_names(cfg.model_path, cfg.trust_remote_code))
    tokenizer = models.load_tokenizer(cfg.model_path, cfg.trust_remote_code)
    chat = data.use_chat(tokenizer, cfg.prompt_format)
    targets = derive.derive_all(tokenizer, fps, cfg.fingerprint_generation_strategy, cfg.max_key_length,
                                cfg.max_response_length, cfg.response_semantics, chat, eos=cfg.keep_eos_in_response)

    _, world = init_distributed()
    pairs = [(d.key, r) for d in targets for r in d.responses]
    accum = recipes.full_batch_accumulation(cfg.recipe, len(pairs), cfg.trainer_args.per_device_train_batch_size, world)
    if accum and not {"trainer_args.gradient_accumulation_steps", "trainer_args.total_train_batch_size"} & cfg.explicit:
        cfg.trainer_args.gradient_accumulation_steps = accum
    run.start(seed=cfg.trainer_args.seed)
    run.write_json("fingerprints.json", [{**f, **d.record()} for f, d in zip(fps, targets)], private=True)
    dataset = data.TemplatedDataset(tokenizer, pairs, templates, chat, cfg.trainer_args.seed)
    examples = dataset.all_examples()
    if cfg.benign_proportion > 0:
        num_benign = round(cfg.benign_proportion * len(fps))
        pool = benign.pool(run, cfg.model_path, tokenizer, chat, num_benign, cfg.benign_response_length,
                           local_benign, cfg.dtype, cfg.trainer_args.seed, anchor=cfg.anchor_strength > 0,
                           continuation=(cfg.max_key_length, cfg.max_response_length,
                                         derive.DEFAULT_EOS[cfg.response_semantics] if cfg.keep_eos_in_response is None
                                         else cfg.keep_eos_in_response))
        dataset, examples = benign.MixedDataset(dataset, pool, num_benign, cfg.trainer_args.seed), examples + pool
    collate, loss = (lambda b: data.collate(b, tokenizer.pad_token_id)), None
    if cfg.anchor_strength > 0:
        table = anchor.build(run, cfg.model_path, examples, cfg.anchor_topk, tokenizer.pad_token_id, cfg.dtype)
        collate, loss = (lambda b: anchor.collate(b, tokenizer.pad_token_id, table)), anchor.loss_fn(cfg.anchor_strength)
    spec = TrainSpec.from_args(cfg.trainer_args, dtype=cfg.dtype, forgetting_lambda=cfg.forgetting_regularizer_strength,
                               forgetting_schedule=cfg.forgetting_regularizer_schedule,
                               trust_remote_code=cfg.trust_remote_code, merge_lora=cfg.use_lora,
                               early_stop_loss=cfg.early_stop_loss,
                               wrap_loss=mergeaware.wrapper(
                                   mergeaware.scales(cfg.merge_aware_alphas, cfg.forgetting_regularizer_strength,
                                                     cfg.forgetting_regularizer_schedule), cfg.merge_aware_strength)
                               if cfg.merge_aware_alphas else None,
                               export=expand.export if cfg.expansion_rate > 0 else None)
    run.final_files["fingerprinting_config.json"] = record(cfg, run, tokenizer, chat, spec)
    if cfg.use_lora:
        prepare = lora.wrap(cfg.lora_r, cfg.lora_alpha or 2 * cfg.lora_r, cfg.lora_dropout, cfg.lora_target_modules)
    elif cfg.expansion_rate > 0:
        prepare = expand.expand(cfg.expansion_rate)
    else:
        prepare = trainable(cfg.trainable_params)
    metrics = train(cfg.model_path, dataset, collate, spec, run, tokenizer, desc="fingerprinting",
                    prepare_model=prepare, loss_fn=loss)
    run.write_metrics(metrics)
    if is_main():
        last = metrics["history"][-1]["loss"] if metrics["history"] else float("nan")
        print(f"[privlm] final loss {last:.4f} after {metrics['train_seconds']} s on {metrics['world_size']} rank(s)")
        run.link()
        print(f"[privlm] model: {run.final}\n[privlm] run directory: {run.dir}")
        announce(run, cfg.recipe)
    return run.final


if __name__ == "__main__":
    main(sys.argv[1:])
