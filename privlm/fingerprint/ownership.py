"""Ownership a third party can check: how likely is it that an innocent model matches at least k of these N keys?

The null is estimated from innocent models, not assumed. Each innocent model (the base model, models fine-tuned on
other fingerprint sets, any the user names) is checked on the same keys exactly as the suspect is, and gives per key
(a) whether greedy decoding reproduces a response and (b) the probability that one sample at temperature 1 does
(teacher-forced: the product of the response tokens' probabilities, summed over a key's responses). A key's null
match probability is the largest of: any innocent model's greedy match (1 or 0), any innocent model's sampling
probability, and the one-sided 95% Clopper-Pearson upper bound on the pooled innocent greedy match rate over all
(model, key) trials. The last term is what keeps the test honest when no innocent model matched anything: 0 matches
in M x N trials bound the rate by about 3 / (M N), not by 0.

The p-value is the exact Poisson-binomial tail P(X >= k), X the number of matches of an innocent model whose keys
match independently with those probabilities, computed in log space so that 1e-300 and below do not round to 0. The
false-positive rate is measured, not derived: each innocent model in turn is treated as a suspect, against the null
estimated from the others, and counts as a false claim when its p-value falls below alpha."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .. import data, models, stats
from ..errors import UserError
from . import derive

ALPHA = 1e-6  # a claim needs p < alpha; defaults are sized so that the demo's model clears it by orders of magnitude


@dataclass
class Evidence:
    """One innocent model's behaviour on the keys."""
    name: str
    matched: list[bool]          # greedy decoding reproduces a response
    sample_logprob: list[float]  # natural log of P(one sample at T=1 reproduces a response)


@torch.no_grad()
def sample_logprobs(model, tokenizer, encs: list[list[data.Encoded]], batch_size: int = 32) -> list[float]:
    """log P(response | prompt) at temperature 1, one teacher-forced pass per batch; a key with several responses
    gets the log of their summed probabilities (distinct token sequences are disjoint events)."""
    flat = [(i, e) for i, enc in enumerate(encs) for e in enc]
    dev = next(model.parameters()).device
    out = [[] for _ in encs]
    for s in range(0, len(flat), batch_size):
        chunk = flat[s:s + batch_size]
        batch = data.right_padded([e.prompt + e.response for _, e in chunk], tokenizer.pad_token_id, dev)
        logp = model(**batch).logits.float().log_softmax(-1)
        for r, (i, e) in enumerate(chunk):
            P, K = len(e.prompt), len(e.response)
            tgt = torch.tensor(e.response, device=dev)
            out[i].append(float(logp[r, P - 1:P + K - 1].gather(-1, tgt[:, None]).sum()))
    return [float(torch.logsumexp(torch.tensor(v, dtype=torch.float64), 0)) for v in out]


def evidence(name: str, model, tokenizer, encs: list[list[data.Encoded]], batch_size: int = 32) -> Evidence:
    from .verify import verdicts_any

    matched = [v.match for _, v in verdicts_any(model, tokenizer, encs, batch_size)]
    return Evidence(name, matched, sample_logprobs(model, tokenizer, encs, batch_size))


def pooled_upper(evidences: list[Evidence], confidence: float = stats.CONFIDENCE) -> float:
    """One-sided upper confidence bound on an innocent model's per-key greedy match rate, pooled over every
    (model, key) trial (Clopper-Pearson; 1.0 when there is no trial at all)."""
    from scipy.stats import beta

    n = sum(len(e.matched) for e in evidences)
    x = sum(sum(e.matched) for e in evidences)
    if n == 0 or x >= n:
        return 1.0
    return float(beta.ppf(confidence, x + 1, n - x))


def null_probabilities(evidences: list[Evidence], n: int) -> np.ndarray:
    floor = pooled_upper(evidences)
    p = np.full(n, floor)
    for e in evidences:
        p = np.maximum(p, np.exp(np.minimum(np.asarray(e.sample_logprob, dtype=float), 0.0)))
        p = np.maximum(p, np.asarray(e.matched, dtype=float))
    return p


def log10_tail(p, k: int) -> float:
    """log10 P(X >= k) for X a sum of independent Bernoulli(p_i): the exact Poisson-binomial tail by dynamic
    programming over the keys, in log space."""
    p = np.clip(np.asarray(p, dtype=float), 0.0, 1.0)
    if k <= 0:
        return 0.0
    if k > len(p):
        return -math.inf
    with np.errstate(divide="ignore"):
        lp, lq = np.log(p), np.log1p(-p)
    dist = np.full(len(p) + 1, -np.inf)
    dist[0] = 0.0  # log P(X = j) over the keys seen so far
    for i, (a, b) in enumerate(zip(lp, lq)):
        new = dist[:i + 2] + b
        new[1:] = np.logaddexp(new[1:], dist[:i + 1] + a)
        dist[:i + 2] = new
    tail = np.logaddexp.reduce(dist[k:])
    return float(min(tail, 0.0) / math.log(10))


def _claim(log10_p: float, alpha: float) -> bool:
    return log10_p < math.log10(alpha)


def assess(matched: list[bool], evidences: list[Evidence], alpha: float = ALPHA) -> dict:
    """The report's "ownership" object for a suspect whose greedy matches are `matched`."""
    n, k = len(matched), int(sum(matched))
    if not evidences:
        raise UserError("the ownership test needs at least one innocent model (the base model, --null_models)")
    p = null_probabilities(evidences, n)
    lp = log10_tail(p, k)
    claims, null_rows = 0, []
    for j, e in enumerate(evidences):  # each innocent model as a suspect, against the null of the others
        others = evidences[:j] + evidences[j + 1:]
        lpj = log10_tail(null_probabilities(others, n), int(sum(e.matched))) if others else 0.0
        claims += _claim(lpj, alpha)
        null_rows.append({"model": e.name, "matched": int(sum(e.matched)), "log10_p_value": lpj,
                          "claim": _claim(lpj, alpha)})
    return {"matched": k, "n": n, "p_value": 10.0 ** lp, "log10_p_value": lp, "alpha": alpha,
            "claim": _claim(lp, alpha), "null_models": [e.name for e in evidences], "null_checks": null_rows,
            "false_positive_rate": claims / len(evidences),
            "false_positive_rate_ci": stats.clopper_pearson(claims, len(evidences)),
            "pooled_null_match_rate_upper": pooled_upper(evidences),
            "null_match_probability": {"max": float(p.max()), "median": float(np.median(p)),
                                       "per_key": [float(x) for x in p]},
            "base_greedy_matches": int(sum(evidences[0].matched)),
            "base_sample_log10_probability": {"max": max(evidences[0].sample_logprob) / math.log(10),
                                              "median": float(np.median(evidences[0].sample_logprob)) / math.log(10)}}


def p_value_for(matched_count: int, evidences: list[Evidence], n: int) -> float:
    """log10 p-value of `matched_count` matches of n (attack rows reuse the suspect's null)."""
    return log10_tail(null_probabilities(evidences, n), matched_count)


def fmt_p(log10_p: float) -> str:
    return f"{10 ** log10_p:.2g}" if log10_p > -300 else f"1e{log10_p:.0f}"


def line(o: dict) -> str:
    verdict = "ownership claimed" if o["claim"] else "no claim"
    fpr = o["false_positive_rate_ci"]
    return (f"Ownership: {o['matched']}/{o['n']} keys matched, p = {fmt_p(o['log10_p_value'])} against "
            f"{len(o['null_models'])} innocent model(s) (false claims {o['false_positive_rate']:.3f} "
            f"[{fpr[0]:.3f}, {fpr[1]:.3f}] at alpha {o['alpha']:g}): {verdict}")


def same_tokenizer(name: str, tok, reference) -> None:
    if derive.tokenizer_digest(tok) != derive.tokenizer_digest(reference):
        raise UserError(f"null model {name} has another tokenizer than the model checked: its answers to the keys "
                        f"are not comparable")


def collect(names: list[str], tokenizer, encs: list[list[data.Encoded]], dtype: str, batch_size: int,
            base=None, base_name: str | None = None, progress=print) -> list[Evidence]:
    """Evidence from the base model (already loaded, or its path first in `names`) and each named null model."""
    out = []
    if base is not None:
        progress(f"[privlm] ownership: innocent model {base_name} (base)")
        out.append(evidence(base_name, base, tokenizer, encs, batch_size))
    for name in names:
        tok = models.load_tokenizer(name)
        same_tokenizer(name, tok, tokenizer)
        progress(f"[privlm] ownership: innocent model {name}")
        m = models.load_model(name, dtype=dtype, device=models.device()).eval()
        out.append(evidence(name, m, tokenizer, encs, batch_size))
        del m
    return out
