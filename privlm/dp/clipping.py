"""Per-example gradients and flat clipping for models whose trainable weights are Linear layers (LoRA A/B).

Fast path written by hand, because no library does it well for LoRA under DeepSpeed: a forward hook keeps each
trainable Linear's input and output; one backward asks for the gradients of those outputs (not of the weights, so
the summed weight gradients are never formed) and turns them into per-example weight gradients (a batched matmul
over tokens). Only the small trainable matrices get per-example copies; frozen weights never do.
`tests/dp/test_clipping.py` proves the result equal to Opacus's per-sample gradients on the same batch.
The DP step itself uses privlm.dp.ghost (norms without per-example gradients, for LoRA and full fine-tuning);
these per-example engines are the references it is tested against.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError


class PerExampleGrads:
    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, nn.Linear) and m.weight.requires_grad]
        stray = self.unsupported(model)
        if stray:
            raise UserError(f"DP per-example gradients support trainable Linear layers (LoRA) only; also trainable: "
                            f"{', '.join(stray[:5])}{' ...' if len(stray) > 5 else ''}")
        if not self.layers:
            raise UserError("DP training found no trainable parameters")
        self.grads: dict[nn.Parameter, torch.Tensor] = {}
        self._records: list = []  # (layer, input, output) of the current forward pass
        self.enabled = False
        self._handles = [m.register_forward_hook(self._forward) for m in self.layers]

    @staticmethod
    def unsupported(model: nn.Module) -> list[str]:
        """Trainable tensors this path cannot handle: any used by a module other than a Linear (an embedding tied
        to lm_head, a norm's weight)."""
        out = set()
        for name, m in model.named_modules():
            if not isinstance(m, nn.Linear):
                out.update(f"{name}.{n}".lstrip(".") for n, p in m.named_parameters(recurse=False) if p.requires_grad)
        return sorted(out)

    @property
    def params(self) -> list[nn.Parameter]:
        out = []
        for m in self.layers:
            out.append(m.weight)
            if m.bias is not None and m.bias.requires_grad:
                out.append(m.bias)
        return out

    def _forward(self, module: nn.Linear, inputs, output):
        if self.enabled and output.requires_grad:
            self._records.append((module, inputs[0].detach(), output))

    def _add(self, p, gs):
        self.grads[p] = self.grads[p] + gs if p in self.grads else gs  # a layer used twice adds up

    def compute(self, per_example_loss: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
        """Per-example gradients of each example's loss (shape [B, *param.shape]) without touching .grad, so
        DeepSpeed's gradient hooks do not fire.

        The backward asks autograd for the gradients of the trainable layers' *outputs* only, so it never forms
        the summed weight gradients (which DP-SGD would throw away); each example's weight gradient is then
        g_i^T x_i, summed over its tokens."""
        records, self._records = self._records, []
        self.grads = {}
        outs = torch.autograd.grad(per_example_loss.sum(), [r[2] for r in records], allow_unused=True)
        for (module, x, _), g in zip(records, outs):
            if g is None:
                continue
            g2 = g.reshape(g.shape[0], -1, g.shape[-1])
            x2 = x.reshape(x.shape[0], -1, x.shape[-1])
            self._add(module.weight, torch.bmm(g2.transpose(1, 2).float(), x2.float()))
            if module.bias is not None and module.bias.requires_grad:
                self._add(module.bias, g2.float().sum(1))
        for p in self.params:  # unused in this forward pass: zero gradient
            if p not in self.grads:
                self.grads[p] = torch.zeros((per_example_loss.shape[0], *p.shape), device=p.device)
        return self.grads

    def remove(self):
        for h in self._handles:
            h.remove()


class OpacusPerExampleGrads:
    """For full fine-tuning (embeddings, norms, tied weights): Opacus's grad samplers fill `grad_sample`, with its
    functorch fallback for layers it has no sampler for (e.g. HF's RMSNorm). Same interface as PerExampleGrads."""

    def __init__(self, model: nn.Module):
        from opacus import GradSampleModule

        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise UserError("DP training found no trainable parameters")
        self._gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")  # hooks live on `model`
        self.enabled = True

    def compute(self, per_example_loss: torch.Tensor) -> dict:
        for p in self.params:
            p.grad_sample = None
        torch.autograd.grad(per_example_loss.sum(), self.params, allow_unused=True)
        out = {}
        for p in self.params:
            gs = p.grad_sample
            out[p] = gs if gs is not None else torch.zeros((per_example_loss.shape[0], *p.shape), device=p.device)
            p.grad_sample = None
        return out

    def remove(self):
        self._gsm._close()


def per_example_engine(model: nn.Module):
    """The DP step's clipping engine: ghost norms + book-keeping (privlm.dp.ghost), for LoRA and full fine-tuning
    alike. PerExampleGrads and OpacusPerExampleGrads stay as references for tests and benchmarks."""
    from .ghost import GhostClipping

    return GhostClipping(model)


def per_example_norms(grads: dict) -> torch.Tensor:
    """Flat (all-parameter) L2 norm of each example's gradient."""
    sq = None
    for g in grads.values():
        s = g.reshape(g.shape[0], -1).pow(2).sum(1)
        sq = s if sq is None else sq + s
    return sq.sqrt()


def clip_factors(norms: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    """min(1, C / ||g_i||): examples above C are scaled to norm C, the rest kept."""
    return (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)


def clipped_sum(grads: dict, max_grad_norm: float) -> tuple[dict, torch.Tensor]:
    """Sum over the batch of flat-clipped per-example gradients. Returns ({param: sum}, per-example norms)."""
    norms = per_example_norms(grads)
    c = clip_factors(norms, max_grad_norm)
    return {p: torch.einsum("b,b...->...", c, g) for p, g in grads.items()}, norms


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token loss of each example over its labelled tokens (0 for rows with none, e.g. padding rows)."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    tok = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                            ignore_index=ignore_index, reduction="none").view(labels.shape)
    count = (labels != ignore_index).sum(1)
    return tok.sum(1) / count.clamp(min=1)
