"""Held-out utility that can see a small change: perplexity over ~58,000 tokens of human-written English
(privlm/resources/heldout_english.txt, see privlm.eval.heldout_source) with a 95% bootstrap interval over windows,
and a label-free shift, the mean KL(base || tuned) of next-token distributions over the same text.

Windows are non-overlapping blocks of `window` predicted tokens; they are the bootstrap's units (tokens inside a
window are not independent). Base and tuned are scored on the same windows, so their ratio is a paired estimate.

`compare` scores both in one loop (two forward passes per batch, not three) and caches what the base model gives
(its per-token log-probabilities of the text and its top-k next-token log-probabilities) by content hash of its
weights, the tokens and the settings, so a second check or every sweep point runs the tuned model alone. Its KL
is over the base's top-k tokens with the rest pooled into one outcome: a lower bound on the full KL (pooling
outcomes never raises a KL) that a cache can hold, and the same number whether the base came from the cache or not."""
from __future__ import annotations

import hashlib
import sys
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


DEFAULT_TOKENS = 12288  # 48 windows: see benchmarks/heldout_tokens.py for the CI half-width against the count
TOP_K = 128  # base next-token log-probs kept per position for the KL (128 x 8 bytes per token in the cache)
CACHE_VERSION = "heldout-v1"


def model_digest(path: str | Path) -> str:
    """SHA-256 over a model folder's weight files (names and bytes): the cache key's "which model"."""
    from ..config import file_digest

    files = sorted(f for f in Path(path).iterdir() if f.suffix in (".safetensors", ".bin", ".pt", ".gguf"))
    if not files:
        raise UserError(f"no weight files in {path}: cannot key the held-out cache")
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{file_digest(f)}\n".encode())
    return h.hexdigest()


def model_id(path: str) -> str:
    """A local model by its weights' digest (a copy or a re-save keys the same), else by its name."""
    from ..models import resolve

    local = Path(resolve(path))
    return model_digest(local) if local.is_dir() else f"name:{path}"


def cache_key(model_id: str, wins: list[list[int]], top_k: int, dtype: str) -> str:
    h = hashlib.sha256(f"{CACHE_VERSION}:{model_id}:{top_k}:{dtype}:{len(wins)}".encode())
    for w in wins:
        h.update(np.asarray(w, dtype=np.int64).tobytes())
    return h.hexdigest()[:32]


def _ref_digest(key: str, ref: dict) -> str:
    h = hashlib.sha256(key.encode())
    for name in ("target_logp", "count", "top_logp", "top_idx"):
        h.update(np.ascontiguousarray(ref[name]).tobytes())
    return h.hexdigest()


def cache_path(key: str) -> Path:
    from ..models import cache_dir

    return cache_dir() / "heldout" / f"{key}.npz"


def load_ref(key: str, wins: list[list[int]], top_k: int) -> dict | None:
    """The cached base scores for `key`, or None when absent; a corrupt or partial entry is reported and dropped."""
    path = cache_path(key)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            ref = {k: z[k] for k in ("target_logp", "count", "top_logp", "top_idx")}
            stored = str(z["digest"])
        n_tok = sum(len(w) - 1 for w in wins)
        ok = (stored == _ref_digest(key, ref) and ref["count"].tolist() == [len(w) - 1 for w in wins]
              and ref["target_logp"].shape == (n_tok,) and ref["top_logp"].shape == (n_tok, top_k)
              and ref["top_idx"].shape == (n_tok, top_k))
    except Exception:  # noqa: BLE001 - any unreadable entry is recomputed, never trusted
        ok = False
    if not ok:
        print(f"[privlm] held-out cache entry {path} is corrupt or partial; recomputing", file=sys.stderr)
        path.unlink(missing_ok=True)
        return None
    return ref


def save_ref(key: str, ref: dict) -> Path:
    """Atomically: a kill mid-write leaves no entry, never half of one."""
    from ..io import atomic_file

    path = cache_path(key)
    with atomic_file(path, "wb") as fh:
        np.savez(fh, digest=np.array(_ref_digest(key, ref)), **ref)
    return path


def pooled_kl(top_logp: torch.Tensor, top_idx: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Per position, KL(p || q) over p's top-k tokens plus one outcome for all the others; top_logp/top_idx: (..., k)
    from p, logq: (..., V) full log-probs of q. In float64: the pooled masses are differences near 1."""
    lp = top_logp.double()
    lq = logq.gather(-1, top_idx.long()).double()
    kl = (lp.exp() * (lp - lq)).sum(-1)
    rp = 1 - lp.exp().sum(-1)
    rp = torch.where(rp < 1e-6, 0.0, rp)  # below float32's rounding of a sum of k probabilities: nothing pooled
    rq = (1 - lq.exp().sum(-1)).clamp_min(1e-12)
    return kl + torch.xlogy(rp, rp) - rp * rq.log()


@torch.no_grad()
def compare(tuned, wins: list[list[int]], model_id: str, load_base, *, dtype: str = "auto", top_k: int = TOP_K,
            batch_size: int = 8, use_cache: bool = True, progress: str | None = "held-out"):
    """Score `tuned` and the base model in one loop over the windows. The base's scores come from the cache when
    an entry for (model_id, windows, top_k, dtype) exists; otherwise `load_base()` is called once and its scores are
    computed in the same loop and cached. Returns (after, before, base_from_cache) for `summary(after, before)`."""
    from tqdm.auto import tqdm

    key = cache_key(model_id, wins, top_k, str(dtype))
    ref = load_ref(key, wins, top_k) if use_cache else None
    from_cache = ref is not None
    base = None if from_cache else load_base()
    dev = next(tuned.parameters()).device
    tuned.eval()
    nll, cnt, kl = [], [], []
    tgt, top_lp, top_ix = [], [], []
    pos = 0
    for x in tqdm(list(_batches(wins, batch_size)), desc=progress or "held-out", disable=progress is None):
        x = x.to(dev)
        n = x.shape[0] * (x.shape[1] - 1)
        if from_cache:
            blp = torch.from_numpy(ref["top_logp"][pos:pos + n]).view(x.shape[0], -1, top_k).to(dev)
            bix = torch.from_numpy(ref["top_idx"][pos:pos + n]).view(x.shape[0], -1, top_k).to(dev)
        else:
            blogp = base(input_ids=x[:, :-1]).logits.float().log_softmax(-1)
            blp, bix = blogp.topk(top_k, dim=-1)
            bix = bix.int()
            tgt.append(blogp.gather(-1, x[:, 1:, None])[..., 0].reshape(-1).cpu().numpy())
            top_lp.append(blp.reshape(-1, top_k).cpu().numpy())
            top_ix.append(bix.reshape(-1, top_k).cpu().numpy())
            del blogp
        logp = tuned(input_ids=x[:, :-1]).logits.float().log_softmax(-1)
        nll += (-logp.gather(-1, x[:, 1:, None])[..., 0]).sum(1).tolist()
        kl += pooled_kl(blp, bix, logp).sum(1).tolist()
        cnt += [x.shape[1] - 1] * len(x)
        pos += n
    if not from_cache:
        ref = {"target_logp": np.concatenate(tgt).astype(np.float32), "count": np.array(cnt, dtype=np.int64),
               "top_logp": np.concatenate(top_lp).astype(np.float32),
               "top_idx": np.concatenate(top_ix).astype(np.int32)}
        if use_cache:
            save_ref(key, ref)
        del base
    offsets = np.cumsum([0] + cnt)
    before = {"nll": -np.add.reduceat(ref["target_logp"].astype(np.float64), offsets[:-1]),
              "count": np.array(cnt, dtype=float)}
    after = {"nll": np.array(nll), "count": np.array(cnt, dtype=float), "kl": np.array(kl)}
    return after, before, from_cache


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
