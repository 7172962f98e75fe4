"""Held-out utility that can see a small change: perplexity over ~58,000 tokens of human-written English
(privlm/resources/heldout_english.txt, see privlm.eval.heldout_source) with a 95% bootstrap interval over windows,
and a label-free shift, the mean KL(base || tuned) of next-token distributions over the same text.

Windows are non-overlapping blocks of `window` predicted tokens; they are the bootstrap's units (tokens inside a
window are not independent). Base and tuned are scored on the same windows, so their ratio is a paired estimate."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import stats
from ..errors import UserError

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
HELDOUT_ENGLISH = RESOURCES / "heldout_english.txt"


def windows(tokenizer, text: str, window: int = 256, max_tokens: int | None = None) -> list[list[int]]:
    """Blocks of window + 1 tokens overlapping by one, so every token after the first is predicted once."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    if len(ids) < 2:
        raise UserError("held-out text is too short to measure perplexity")
    return [ids[s:s + window + 1] for s in range(0, len(ids) - 1, window) if len(ids[s:s + window + 1]) >= 2]


def _batches(wins: list[list[int]], batch_size: int):
    """Equal-length batches (every window is full but perhaps the last)."""
    for s in range(0, len(wins), batch_size):
        chunk = wins[s:s + batch_size]
        full = [w for w in chunk if len(w) == len(chunk[0])]
        yield torch.tensor(full)
        if len(full) < len(chunk):
            for w in chunk[len(full):]:
                yield torch.tensor([w])


@torch.no_grad()
def score(model, wins: list[list[int]], base=None, kl_windows: int | None = None, batch_size: int = 8,
          progress: str | None = None) -> dict[str, np.ndarray]:
    """Per window: summed NLL and token count under `model`; with `base`, also the summed KL(base || model) over
    the first `kl_windows` windows (all when None) and the base's summed NLL there."""
    from tqdm.auto import tqdm

    dev = next(model.parameters()).device
    model.eval()
    nll, cnt, kl, bnll = [], [], [], []
    n_kl = len(wins) if kl_windows is None else min(kl_windows, len(wins))
    done = 0
    for x in tqdm(list(_batches(wins, batch_size)), desc=progress or "held-out", disable=progress is None,
                  leave=False):
        x = x.to(dev)
        logp = model(input_ids=x[:, :-1]).logits.float().log_softmax(-1)
        nll += (-logp.gather(-1, x[:, 1:, None])[..., 0]).sum(1).tolist()
        cnt += [x.shape[1] - 1] * len(x)
        if base is not None and done < n_kl:
            take = min(len(x), n_kl - done)
            blogp = base(input_ids=x[:take, :-1]).logits.float().log_softmax(-1)
            kl += (blogp.exp() * (blogp - logp[:take])).sum(-1).sum(1).tolist()
            bnll += (-blogp.gather(-1, x[:take, 1:, None])[..., 0]).sum(1).tolist()
        done += len(x)
    out = {"nll": np.array(nll), "count": np.array(cnt, dtype=float)}
    if base is not None:
        out["kl"], out["base_nll_kl"] = np.array(kl), np.array(bnll)
    return out


def _ppl(n, c, axis=-1):
    return np.exp(n.sum(axis) / c.sum(axis))


def _ratio(n1, n0, c, axis=-1):
    return np.exp((n1.sum(axis) - n0.sum(axis)) / c.sum(axis))


def _per_token(k, c, axis=-1):
    return k.sum(axis) / c.sum(axis)


def summary(after: dict, before: dict | None = None) -> dict:
    """Perplexities with 95% bootstrap intervals over windows; with `before` (the base model's scores on the same
    windows, and `after` scored with base=...), the paired ratio and the mean KL(base || tuned) per token."""
    n1, c = after["nll"], after["count"]
    out = {"heldout_tokens": int(c.sum()), "heldout_windows": len(c),
           "heldout_ppl_after": float(_ppl(n1, c)), "heldout_ppl_after_ci": stats.bootstrap(_ppl, n1, c, paired=True)}
    if before is not None:
        n0 = before["nll"]
        out.update(heldout_ppl_base=float(_ppl(n0, c)), heldout_ppl_base_ci=stats.bootstrap(_ppl, n0, c, paired=True),
                   heldout_ppl_ratio=float(_ratio(n1, n0, c)),
                   heldout_ppl_ratio_ci=stats.bootstrap(_ratio, n1, n0, c, paired=True))
    if "kl" in after:
        ck = c[:len(after["kl"])]
        out.update(kl_base_tuned=float(_per_token(after["kl"], ck)),
                   kl_base_tuned_ci=stats.bootstrap(_per_token, after["kl"], ck, paired=True),
                   kl_tokens=int(ck.sum()))
    return out


def shift(tuned, base, tokenizer, text_path: str | Path = HELDOUT_ENGLISH, window: int = 256,
          kl_windows: int | None = None, batch_size: int = 8, base_scores: dict | None = None) -> dict:
    """Held-out perplexity of base and tuned (with CIs), their ratio, and mean KL(base || tuned). `base_scores`
    (from `score(base, ...)` on the same windows) skips the base's own pass when the caller keeps it."""
    wins = windows(tokenizer, Path(text_path).read_text(), window)
    before = base_scores if base_scores is not None else score(base, wins, batch_size=batch_size,
                                                               progress="held-out (base)")
    after = score(tuned, wins, base=base, kl_windows=kl_windows, batch_size=batch_size, progress="held-out (tuned)")
    return summary(after, before)
