"""Fingerprint fine-tuning recipes (`--recipe`): the optimisation each system uses, so that a comparison with a paper
is like for like. A recipe sets defaults only; a flag, YAML key or override the user gives wins.

* `privlm` (default): what measurably helps on the default model (README, "Fingerprinting defaults"): MLP-only
  updates, the anchor loss, benign mixing, weight averaging once at the end, lr 3e-4 with linear decay.
* `oml`: OML 1.0's finetune_multigpu.py on GPUs, as published: every weight, cross-entropy on the responses only, no
  mixing, no anchor, lr 1e-5, 10 epochs, batch 8, weight decay 1e-4 (not on biases and norms), no gradient clipping
  (DeepSpeed's default under the HF Trainer), DeepSpeed's WarmupDecayLR, gradient accumulation
  max(N // (batch x ranks), 1) (about one optimizer step per epoch), its regularizer (lambda 0 by default; when set, it
  lands once, after the last epoch, as under ZeRO-2), OML's response derivation.
* `scalable`: scalable fingerprinting's finetune_multigpu.py: as `oml` but lr 5e-5, 30 epochs, accumulation
  ceil(N x responses / (batch x ranks)), early stop once the loss is below 0.005, 1024 fingerprints, perinucleus
  responses cut to max_response_length without EOS (its derivation, `--keep_eos_in_response` adds it).
"""
from __future__ import annotations

import math

OML = {"trainable_params": "all", "anchor_strength": 0.0, "benign_proportion": 0.0,
       "forgetting_regularizer_strength": 0.0, "forgetting_regularizer_schedule": "end", "response_semantics": "oml",
       "trainer_args.learning_rate": 1e-5, "trainer_args.num_train_epochs": 10.0,
       "trainer_args.per_device_train_batch_size": 8, "trainer_args.weight_decay": 1e-4,
       "trainer_args.lr_scheduler_type": "warmup_decay", "trainer_args.warmup_steps": 0,
       "trainer_args.max_grad_norm": 0.0, "early_stop_loss": 0.0}
SCALABLE = {**OML, "response_semantics": "scalable", "trainer_args.learning_rate": 5e-5,
            "trainer_args.num_train_epochs": 30.0, "early_stop_loss": 0.005, "num_fingerprints": 1024,
            "fingerprint_generation_strategy": "perinucleus"}
RECIPES = {"privlm": {}, "oml": OML, "scalable": SCALABLE}


def _set(cfg, path: str, value):
    *parents, leaf = path.split(".")
    for p in parents:
        cfg = getattr(cfg, p)
    setattr(cfg, leaf, value)


def apply(cfg) -> dict:
    """Set the recipe's values on `cfg` wherever the user gave none (`cfg.explicit`); returns what was set."""
    explicit = getattr(cfg, "explicit", set())
    done = {k: v for k, v in RECIPES[cfg.recipe].items() if k not in explicit}
    for k, v in done.items():
        _set(cfg, k, v)
    return done


def full_batch_accumulation(recipe: str, examples: int, micro_batch: int, world: int) -> int | None:
    """The seeds' gradient accumulation (one optimizer step per epoch, about), or None for privlm's fixed value."""
    if recipe == "oml":
        return max(examples // (micro_batch * world), 1)
    if recipe == "scalable":
        return max(math.ceil(examples / (micro_batch * world)), 1)
    return None
