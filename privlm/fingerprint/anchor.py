"""Anchoring: while fingerprints are trained in, pull the tuned model's next-token distribution toward the base
model's everywhere the fine-tune is not meant to change it.

The anchored positions are every prompt position of every fingerprint example (the template and the key itself:
the model should still predict the key's own words as the base did, only the response after it changes) and, for
self-distilled benign examples, every position (prompt and answer). The base model's top-k next-token log-probs at
those positions are computed once, by rank 0, into the run directory (`anchor_teacher.pt`, so resume and every rank
agree), and the loss becomes

    CE(fingerprint responses [+ local benign responses]) + strength x mean KL(base || tuned) per anchored position

with the KL over the base's top k tokens and the rest of the vocabulary as one outcome. This is self-distillation with soft targets: greedy self-distilled targets
(the benign default without anchoring) teach the model its own argmax and sharpen its distribution, which shows up
as a perplexity rise on human text; soft targets carry the whole distribution at no extra forward pass for the
keys' positions, which are computed for the fingerprint loss anyway."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

from .. import data
from ..io import atomic_file

TEACHER_FILE = "anchor_teacher.pt"


def anchored(e: data.Encoded) -> list[bool]:
    """Per input position (predicting the next token): anchored or not. Prompt positions are, except the last one
    (it predicts the response: the fingerprint); a distilled example is anchored everywhere."""
    n = len(e.input_ids) - 1
    if e.distill:
        return [True] * n
    return [i < len(e.prompt) - 1 for i in range(n)]


@torch.no_grad()
def teacher_table(model, examples: Iterable[data.Encoded], k: int, pad_id: int,
                  batch_size: int = 16) -> dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]]:
    """{input_ids: (top-k token ids [L-1, k] int32, their log-probs [L-1, k] float16)} from `model`, for every
    distinct sequence in `examples`."""
    from tqdm.auto import tqdm

    model.eval()
    seqs = sorted({tuple(e.input_ids) for e in examples}, key=len)  # similar lengths batch with little padding
    table = {}
    for s in tqdm(range(0, len(seqs), batch_size), desc="anchor targets", leave=False):
        chunk = seqs[s:s + batch_size]
        batch = data.right_padded(chunk, pad_id, model.device)
        logp = model(**batch).logits.float().log_softmax(-1)
        top = logp.topk(min(k, logp.shape[-1]), dim=-1)
        for j, seq in enumerate(chunk):
            n = len(seq) - 1
            table[seq] = (top.indices[j, :n].to(torch.int32).cpu(), top.values[j, :n].to(torch.float16).cpu())
    return table


def build(run, model_path: str, examples: Sequence[data.Encoded], k: int, pad_id: int, dtype: str) -> dict:
    """The run's teacher table: computed by rank 0 from the base model into the run directory, read by every rank."""
    from .. import models
    from ..training import barrier, is_main

    path = run.dir / TEACHER_FILE
    if is_main() and not path.is_file():
        model = models.load_model(model_path, dtype=dtype, device=models.device())
        table = teacher_table(model, examples, k, pad_id)
        del model
        with atomic_file(path, "wb", private=True) as fh:  # holds the keys; killed: recomputed, never half read
            torch.save({"k": k, "table": table}, fh)
    barrier()
    return torch.load(path, weights_only=True)["table"]


def collate(examples: Sequence[data.Encoded], pad_id: int, table: dict) -> dict[str, torch.Tensor]:
    """data.collate's batch plus the teacher's top-k ids / log-probs and the anchored-position mask, all [B, T(, k)]."""
    batch = data.collate(examples, pad_id)
    b, t = batch["input_ids"].shape
    k = next(iter(table.values()))[0].shape[1]
    ids = torch.zeros((b, t, k), dtype=torch.long)
    logp = torch.zeros((b, t, k), dtype=torch.float32)
    mask = torch.zeros((b, t), dtype=torch.bool)
    for i, e in enumerate(examples):
        tid, tlp = table[tuple(e.input_ids)]
        n = tid.shape[0]
        ids[i, :n], logp[i, :n] = tid.long(), tlp.float()
        mask[i, :n] = torch.tensor(anchored(e), dtype=torch.bool)
    return {**batch, "teacher_ids": ids, "teacher_logp": logp, "anchor_mask": mask}


def _kl(logq: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """Per position KL(p || q) over k + 1 outcomes: the teacher's top k tokens and "any other token" (the tail's
    mass); `logq` is the model's log-probs of the teacher's top k, [M, k]."""
    logp = teacher_logp.float()
    p = logp.exp()
    kl = (p * (logp - logq)).sum(-1)
    p_tail = (1 - p.sum(-1)).clamp(min=0)
    q_tail = (1 - logq.exp().sum(-1)).clamp(min=1e-8)
    return kl + p_tail * (p_tail.clamp(min=1e-8).log() - q_tail.log())


def anchor_kl(logits: torch.Tensor, teacher_ids: torch.Tensor, teacher_logp: torch.Tensor,
              mask: torch.Tensor) -> torch.Tensor:
    """Mean over anchored positions of KL(p || q) over the teacher's top k and the tail. Exact when k is the
    vocabulary, zero iff the model puts the base's mass on those k tokens, and without the pull toward the top k (a
    sharpening) that renormalising the top k alone would add."""
    logq = logits[mask].float().log_softmax(-1).gather(-1, teacher_ids[mask])
    return _kl(logq, teacher_logp[mask]).sum() / mask.sum().clamp(min=1)


def loss_fn(strength: float):
    """The training step's loss: response cross-entropy (mean over labelled tokens, as Hugging Face's) plus
    `strength` x anchor_kl. One log-softmax over the positions either term uses (labelled or anchored; never the
    padding), which is most of the step's cost beyond the model itself."""

    def loss(engine, batch: dict) -> torch.Tensor:
        teacher_ids, teacher_logp, mask = batch.pop("teacher_ids"), batch.pop("teacher_logp"), batch.pop("anchor_mask")
        labels = batch.pop("labels")
        logits = engine(**batch).logits[:, :-1]  # position t predicts token t + 1
        target = labels[:, 1:]
        lab, anc = target != data.IGNORE_INDEX, mask[:, :-1]
        sel = lab | anc
        logp = logits[sel].float().log_softmax(-1)  # [M, V]
        lab_s, anc_s = lab[sel], anc[sel]
        ce = -logp[lab_s].gather(-1, target[sel][lab_s, None]).sum() / lab.sum().clamp(min=1)
        if strength == 0:
            return ce
        logq = logp[anc_s].gather(-1, teacher_ids[:, :-1][sel][anc_s])
        kl = _kl(logq, teacher_logp[:, :-1][sel][anc_s]).sum() / anc.sum().clamp(min=1)
        return ce + strength * kl

    return loss
