"""LoRA through PEFT, shared by fingerprinting and private fine-tuning: wrap a model for training, and merge a
trained adapter into plain weights (any ZeRO stage: the merge works on the gathered state dict)."""
from __future__ import annotations

import torch

from .errors import UserError


def wrap(r: int, alpha: int, dropout: float = 0.0, target_modules: str | list[str] = "all-linear"):
    """A prepare_model hook for training.train: the model with a LoRA adapter (only the adapter trains)."""
    if isinstance(target_modules, str) and target_modules != "all-linear":
        target_modules = [m.strip() for m in target_modules.split(",") if m.strip()]

    def prepare(model):
        from peft import LoraConfig, get_peft_model

        if isinstance(target_modules, list):
            missing = [m for m in target_modules if not any(n.endswith(m) for n, _ in model.named_modules())]
            if missing:
                raise UserError(f"target_modules: no module named {', '.join(missing)} in this model")
        return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                                target_modules=target_modules, task_type="CAUSAL_LM"))
    return prepare


def is_peft(module) -> bool:
    return hasattr(module, "peft_config") and hasattr(module, "get_base_model")


@torch.no_grad()
def merged_state(module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plain model's state dict from a PEFT model's: W + (alpha / r) B A for every adapted layer, adapter and
    PEFT prefixes gone. `state` may be a ZeRO-3 gathered one; `module` only supplies the adapter's scaling."""
    cfg = module.peft_config["default"]
    scale = cfg.lora_alpha / cfg.r
    out = {}
    for k, v in state.items():
        if ".lora_" in k:
            continue
        name = k.removeprefix("base_model.model.")
        if ".base_layer." in k:
            stem = k.split(".base_layer.")[0]
            name = name.replace(".base_layer.", ".")
            a, b = state.get(f"{stem}.lora_A.default.weight"), state.get(f"{stem}.lora_B.default.weight")
            if a is not None and b is not None and k.endswith(".weight"):
                v = (v.float() + scale * (b.float() @ a.float())).to(v.dtype)
        out[name] = v
    return out
