"""Merge-aware fingerprinting (in the spirit of MergePrint, Yamabe et al. 2024): besides the loss at the trained
weights theta, train the loss at the weights a thief gets by merging the released model with the base,

    theta_merged = theta0 + s (theta - theta0),    s = (1 - alpha) (1 - lambda)

where alpha is the thief's merge weight on the base (attack_fingerprints.py's `merge`) and lambda the forgetting
regularizer's final averaging toward the base (the released model is already theta0 + (1 - lambda)(theta - theta0)).
The gradient flows through the interpolation, so the step pushes the fingerprint direction to work at a fraction of
its length. Each alpha adds one forward and backward pass per step.

ZeRO 0-2 (every rank holds full weights) and LoRA (the adapter's B scales the delta B A, as in the regularizer)."""
from __future__ import annotations

from typing import Callable

import torch


def scales(alphas: list[float], forgetting_lambda: float, schedule: str) -> list[float]:
    """The delta scales to train at for these thief merge weights; the end-of-run averaging shortens the delta by
    (1 - lambda) once (with the per-epoch schedule the trained weights are already averaged: no extra factor)."""
    keep = 1.0 - forgetting_lambda if schedule == "end" else 1.0
    return [(1.0 - a) * keep for a in alphas]


class _Merged:
    """Calls the module with its trainable weights replaced by theta0 + s (theta - theta0): a stand-in for the
    engine inside a loss function (which calls `engine(**batch)`)."""

    def __init__(self, module, base: dict, scale: float):
        self.module, self.base, self.scale = module, base, scale

    def __call__(self, **batch):
        params = {n: b + self.scale * (p - b) for n, p in self.module.named_parameters() if (b := self.base.get(n))
                  is not None}
        return torch.func.functional_call(self.module, params, args=(), kwargs=batch, strict=False)


def wrapper(scales_: list[float], strength: float) -> Callable:
    """A TrainSpec.wrap_loss hook: (engine, loss_fn) -> loss_fn + strength x mean over scales of loss_fn at the merged
    weights. theta0 is taken from the engine when the hook runs (before any checkpoint is resumed)."""

    def wrap(engine, loss_fn: Callable) -> Callable:
        module = engine.module
        if any(hasattr(p, "ds_id") for p in module.parameters()):
            raise RuntimeError("merge-aware training needs full weights on every rank (ZeRO 0-2)")
        base = {n: p.detach().clone() for n, p in module.named_parameters()
                if p.requires_grad and ".lora_A." not in n}
        merged = [_Merged(module, base, s) for s in scales_]

        def loss(eng, batch: dict) -> torch.Tensor:
            total = loss_fn(eng, dict(batch))  # loss functions pop what they read: each pass gets its own dict
            extra = sum(loss_fn(m, dict(batch)) for m in merged) / len(merged)
            return total + strength * extra

        return loss

    return wrap
