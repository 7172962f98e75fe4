"""DP full fine-tuning without per-example gradients: ghost norms (Li et al. 2021) and book-keeping (Bu et al. 2023,
fastDP), written for Hugging Face causal LMs.

One forward keeps every trainable layer's input `a` (activations; token ids for an embedding) and output; one
backward asks autograd for the gradients `g` of those outputs only (so no weight gradient is ever formed). Then:

* per-example gradient norms, per layer, by the cheaper of two exact formulas (fastDP's mixed choice):
  ghost  ||g_i^T a_i||^2 = <a_i a_i^T, g_i g_i^T>   costs ~ T^2 (d + p) per example;
  explicit  form g_i^T a_i (p x d) and take its norm  costs ~ T p d.
  An embedding's per-example gradient scatters g rows to the token ids: its norm is sum_{t,s} [x_t = x_s] g_t.g_s.
  A weight used twice (an embedding tied to lm_head) adds the cross term 2 <G_emb, G_head>, computed the same way.
* clip factors c_i = min(1, C / ||G_i||) over the flat norm of all trainable weights;
* the clipped sum, book-kept from the same a and g: sum_i c_i g_i^T a_i is one matmul (c-scaled g against a), an
  embedding's is one index_add. Everything in fp32, whatever the model's dtype.

Supported trainable layers: nn.Linear (LoRA's A and B too), transformers' Conv1D (GPT-2), nn.Embedding (a position
embedding needs position ids with the batch dimension: the DP step passes them). Norm layers are frozen under DP full fine-tuning (a documented
choice: their per-example gradients need the normalised input, and they hold ~0.01% of the weights); any other
trainable layer type is refused with its name before training. LoRA and full fine-tuning share this path.
Works with gradient checkpointing: recomputed forwards during the backward are not recorded.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.autograd.graph import get_gradient_edge

from ..errors import UserError

NORM_HINT = "Norm"  # LayerNorm, LlamaRMSNorm, ...: frozen under DP full fine-tuning


def _conv1d_type():
    try:
        from transformers.pytorch_utils import Conv1D

        return Conv1D
    except ImportError:  # pragma: no cover
        return ()


def prepare_full_dp(model: nn.Module) -> list[str]:
    """Freeze norm layers; refuse (one line naming them) any other trainable layer type we cannot clip. Returns the
    names of the frozen parameters."""
    frozen, bad = [], set()
    supported = (nn.Linear, nn.Embedding, _conv1d_type())
    for name, m in model.named_modules():
        own = [(n, p) for n, p in m.named_parameters(recurse=False) if p.requires_grad]
        if not own or isinstance(m, supported):
            continue
        if NORM_HINT in type(m).__name__:
            for n, p in own:
                p.requires_grad_(False)
                frozen.append(f"{name}.{n}")
        else:
            bad.add(type(m).__name__)
    if bad:
        raise UserError(f"DP cannot clip per example the trainable layer type(s) {', '.join(sorted(bad))}; freeze "
                        "them or use peft: lora")
    return frozen


class _Rec:
    __slots__ = ("module", "kind", "a", "out")

    def __init__(self, module, kind, a, out):
        self.module, self.kind, self.a, self.out = module, kind, a, out


class GhostClipping:
    """Same role as clipping.PerExampleGrads (`enabled`, `params`), but returns clipped sums directly."""

    def __init__(self, model: nn.Module):
        conv1d = _conv1d_type()
        self.layers = []
        for m in model.modules():
            if isinstance(m, nn.Embedding) and m.weight.requires_grad:
                self.layers.append((m, "embedding"))
            elif isinstance(m, nn.Linear) and m.weight.requires_grad:
                self.layers.append((m, "linear"))
            elif conv1d and isinstance(m, conv1d) and m.weight.requires_grad:
                self.layers.append((m, "conv1d"))
        covered = {id(p) for m, _ in self.layers for p in m.parameters(recurse=False) if p.requires_grad}
        stray = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
        if stray:
            raise UserError(f"DP clipping has no rule for trainable {', '.join(stray[:5])}"
                            f"{' ...' if len(stray) > 5 else ''}; call prepare_full_dp(model) first")
        if not self.layers:
            raise UserError("DP training found no trainable parameters")
        self.enabled, self.recording = False, True
        self._records: list[_Rec] = []
        self._handles = [m.register_forward_hook(self._hook(kind)) for m, kind in self.layers]

    @property
    def params(self) -> list[nn.Parameter]:
        seen, out = set(), []
        for m, _ in self.layers:
            for p in m.parameters(recurse=False):
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    def _hook(self, kind):
        def fn(module, inputs, output):
            if self.enabled and self.recording and output.requires_grad:
                # the output's gradient edge, not the output: autograd frees what no later op saved (the logits,
                # o_proj's and down_proj's outputs: 5% of the step's peak at 8 x 64), and an in-place op on the output
                # cannot redirect the gradient asked for
                self._records.append(_Rec(module, kind, inputs[0].detach(), get_gradient_edge(output)))
        return fn

    def remove(self):
        for h in self._handles:
            h.remove()

    # ------------------------------------------------------------------------------------------------ the step
    def clipped_sum(self, per_example_loss: torch.Tensor, max_grad_norm: float, sink=None, scale: float = 1.0
                    ) -> tuple[dict[nn.Parameter, torch.Tensor], torch.Tensor]:
        """{param: scale * sum_i c_i grad_i (fp32)} and the per-example flat norms, from one backward to layer outputs.
        `scale` (e.g. 1/B for a mean) is folded into the clip factors: no extra pass over the weights' size.

        With `sink(index, partial_sum)` (index into `params`) the sums are handed over layer by layer instead of kept (a weight used
        twice arrives twice), in the same order on every rank, each unused trainable weight once as zeros: ZeRO-3
        reduces each one to its owner's shard at once, so no rank ever holds a full copy of the gradient."""
        records, self._records = self._records, []
        B = per_example_loss.shape[0]
        self.recording = False  # a checkpointed model re-runs forwards inside this backward: not new records
        try:
            outs = torch.autograd.grad(per_example_loss.sum(), [r.out for r in records], allow_unused=True)
        finally:
            self.recording = True
        for r in records:
            r.out = None  # the gradient edges (and the graph they hold) are not needed past this backward
        items, inputs = [], {}  # layers fed the same tensor (q, k, v; gate, up) share one fp32 copy of it
        for r, g in zip(records, list(outs)):
            if g is None:
                continue
            if g.shape[0] != B:  # e.g. GPT-2's position embedding of (1, T) position ids, broadcast over the batch
                raise UserError(f"DP clipping: a {type(r.module).__name__} ran on a batch of {g.shape[0]}, not {B}; "
                                "its per-example gradients are summed away (pass position_ids of shape (B, T))")
            g = g.float().reshape(B, -1, g.shape[-1])
            if r.kind == "embedding":
                a = r.a.reshape(B, -1)
            else:
                key = (r.a.data_ptr(), r.a.shape, r.a.stride(), r.a.dtype)
                if key not in inputs:
                    inputs[key] = r.a.float().reshape(B, -1, r.a.shape[-1])
                a = inputs[key]
            items.append((r, a, g))
        del outs, records, inputs  # the items hold the only references: each is freed once book-kept below
        sq = torch.zeros(B, device=per_example_loss.device, dtype=torch.float32)
        by_param: dict[int, list] = {}
        grams: dict[int, torch.Tensor] = {}  # a a^T once per shared input
        for it in items:
            sq += _norm_sq(*it, grams)
            w = it[0].module.weight
            by_param.setdefault(id(w), []).append(it)
        for uses in by_param.values():  # a weight used by several layers: cross terms of its per-example sum
            for i in range(len(uses)):
                for j in range(i + 1, len(uses)):
                    sq += 2 * _cross(uses[i], uses[j])
        del grams
        norms = sq.clamp(min=0).sqrt()
        c = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0) * scale
        sums: dict[nn.Parameter, torch.Tensor] = {}
        seen: set[int] = set()
        index = {id(p): i for i, p in enumerate(self.params)}
        by_param.clear()
        while items:  # pop: each layer's activations and output gradients are released once book-kept
            r, a, g = items.pop()
            for p, s in _clipped(r, a, g, c):
                seen.add(id(p))
                if sink is not None:
                    sink(index[id(p)], s)
                elif p in sums:
                    sums[p].add_(s)
                else:
                    sums[p] = s
            del r, a, g
        for p in self.params:  # unused in this forward pass
            if id(p) not in seen:
                z = torch.zeros(full_shape(p), device=per_example_loss.device, dtype=torch.float32)
                if sink is not None:
                    sink(index[id(p)], z)
                else:
                    sums[p] = z
        return sums, norms


def full_shape(p: nn.Parameter) -> torch.Size:
    """A parameter's shape, also when ZeRO-3 has partitioned it away (its local tensor is then empty)."""
    return getattr(p, "ds_shape", p.shape)


def _norm_sq(r, a, g, grams: dict) -> torch.Tensor:
    """Per-example squared norm of this layer's weight (and bias) gradient. `grams` caches a a^T by input tensor."""
    if r.kind == "embedding":
        same = (a[:, :, None] == a[:, None, :]).float()  # [x_t == x_s]
        return (same * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
    T = g.shape[1]
    p, d = g.shape[-1], a.shape[-1]
    if 2 * T * T <= p * d:  # ghost norm
        aat = grams.get(id(a))
        if aat is None:
            aat = grams[id(a)] = torch.bmm(a, a.transpose(1, 2))
        out = (aat * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
    else:  # explicit per-example gradient, one layer at a time
        out = torch.bmm(g.transpose(1, 2), a).pow(2).sum((1, 2))
    bias = getattr(r.module, "bias", None)
    if bias is not None and bias.requires_grad:
        out = out + g.sum(1).pow(2).sum(1)
    return out


def _cross(u, v) -> torch.Tensor:
    """Per-example <G_u, G_v> for two uses of one weight (same orientation: rows = output or vocabulary index)."""
    (ru, au, gu), (rv, av, gv) = u, v
    if ru.kind == "embedding" and rv.kind == "embedding":
        same = (au[:, :, None] == av[:, None, :]).float()
        return (same * torch.bmm(gu, gv.transpose(1, 2))).sum((1, 2))
    if rv.kind == "embedding":
        (ru, au, gu), (rv, av, gv) = v, u
    if ru.kind == "embedding":  # G_emb = onehot(x)^T g_e ; G_lin = g_l^T a_l (rows = vocabulary)
        if rv.kind != "linear":
            raise UserError(f"DP clipping: a weight shared by an embedding and a {rv.kind} layer")
        gl_at_x = gv.gather(2, au[:, None, :].expand(-1, gv.shape[1], -1))  # [b, t, s] = g_l[t, x_s]
        return (gl_at_x * torch.bmm(av, gu.transpose(1, 2))).sum((1, 2))  # sum_t,s g_l[t,x_s] (a_l[t] . g_e[s])
    if ru.kind != rv.kind:
        raise UserError("DP clipping: a weight shared by a Linear and a Conv1D layer")
    return (torch.bmm(au, av.transpose(1, 2)) * torch.bmm(gu, gv.transpose(1, 2))).sum((1, 2))


def _clipped(r, a, g, c) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """Book-keeping: sum_i c_i G_i for this layer, from the same a and g: one matmul, with c folded into the
    narrower of the two (for lm_head, the 576-wide input instead of the 49,152-wide logit gradient)."""
    w = r.module.weight
    if r.kind == "embedding":
        s = torch.zeros(full_shape(w), device=g.device, dtype=torch.float32)
        s.index_add_(0, a.reshape(-1), (g * c[:, None, None]).reshape(-1, g.shape[-1]))
        return [(w, s)]
    p, d = g.shape[-1], a.shape[-1]
    if p <= d:
        s = torch.mm((g * c[:, None, None]).reshape(-1, p).t(), a.reshape(-1, d))
    else:
        s = torch.mm(g.reshape(-1, p).t(), (a * c[:, None, None]).reshape(-1, d))
    out = [(w, s if r.kind == "linear" else s.t())]  # Conv1D stores its weight as (in, out)
    bias = getattr(r.module, "bias", None)
    if bias is not None and bias.requires_grad:
        out.append((bias, torch.mv(g.sum(1).t(), c)))
    return out
