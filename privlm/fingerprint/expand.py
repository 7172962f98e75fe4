"""MLP expansion (scalable fingerprinting's --expansion_rate): every gated feed-forward block (gate_proj, up_proj,
down_proj: Llama, Mistral, Qwen, SmolLM, Gemma) gets int(rate x intermediate_size) new hidden units, and only they
train. The new down_proj columns start at zero, so the expanded model computes exactly what the base model did
(scalable fingerprinting draws them at random, which moves the model before any training); gate and up rows are drawn
from N(0, 0.02^2) as there. The saved model is a plain one whose intermediate_size has grown, loadable anywhere."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError


class ExpandedMLP(nn.Module):
    """base(x) + down_extra(act(gate_extra(x)) * up_extra(x)): a gated MLP is a sum over its hidden units, so this is
    the MLP with `extra` units appended."""

    def __init__(self, mlp: nn.Module, extra: int):
        super().__init__()
        self.base, self.act = mlp, mlp.act_fn
        w = mlp.gate_proj.weight
        d = w.shape[1]
        self.gate_extra = nn.Linear(d, extra, bias=False, device=w.device, dtype=w.dtype)
        self.up_extra = nn.Linear(d, extra, bias=False, device=w.device, dtype=w.dtype)
        self.down_extra = nn.Linear(extra, d, bias=False, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            self.gate_extra.weight.normal_(0, 0.02)
            self.up_extra.weight.normal_(0, 0.02)
            self.down_extra.weight.zero_()

    def forward(self, x):
        return self.base(x) + self.down_extra(self.act(self.gate_extra(x)) * self.up_extra(x))


def _blocks(model):
    return [(name, m) for name, m in model.named_modules()
            if all(hasattr(m, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn"))]


def expand(rate: float):
    """A prepare_model hook: freeze everything, append the new units to every gated MLP."""
    def prepare(model):
        blocks = _blocks(model)
        if not blocks:
            raise UserError("expansion_rate: the model has no gated MLP blocks (gate_proj, up_proj, down_proj)")
        if any(getattr(m.gate_proj, "bias", None) is not None for _, m in blocks):
            raise UserError("expansion_rate: MLPs with biases are not supported")
        extra = int(model.config.intermediate_size * rate)
        if extra < 1:
            raise UserError(f"expansion_rate {rate}: adds no unit to an intermediate size of "
                            f"{model.config.intermediate_size}")
        for p in model.parameters():
            p.requires_grad_(False)
        for name, m in blocks:
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, ExpandedMLP(m, extra))
        model.expansion_units = extra
        return model
    return prepare


def export(module, state: dict) -> tuple[dict, nn.Module]:
    """The saved form: each expanded MLP's weights concatenated into plain gate/up/down projections, and the
    model's config grown by the new units. `state` is the training module's state dict (gathered under ZeRO-3)."""
    out, extra = {}, getattr(module, "expansion_units", 0)
    for k, v in state.items():
        if ".base." in k:
            out[k.replace(".base.", ".")] = v
    for k, v in state.items():
        if k.endswith(("gate_extra.weight", "up_extra.weight")):
            tgt = k.replace("gate_extra", "gate_proj").replace("up_extra", "up_proj")
            out[tgt] = torch.cat([out[tgt], v.to(out[tgt].dtype)], 0)
        elif k.endswith("down_extra.weight"):
            tgt = k.replace("down_extra", "down_proj")
            out[tgt] = torch.cat([out[tgt], v.to(out[tgt].dtype)], 1)
        elif ".base." not in k and "_extra." not in k:
            out[k] = v
    module.config.intermediate_size += extra
    for name, m in list(module.named_modules()):
        if isinstance(m, ExpandedMLP):  # put the plain block back so save_pretrained sees the original layout
            parent, _, leaf = name.rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, leaf, m.base)
    return out, module
