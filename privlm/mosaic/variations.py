"""Fuzzy duplicates of a canary (the Mosaic paper's variations).

Token replacement (`mlm`, `mlm_random`, `random`): R positions are replaced by candidates computed once from the
unmodified canary. `mlm` asks a model for the top-k tokens at each position, excluding the original: a masked LM
(RoBERTa, as in the paper) fills `prefix <mask> suffix`; a causal LM (the offline default) ranks next tokens
given the prefix. Candidates are re-encoded with the target tokenizer, so a replacement can span several tokens.
`mlm_random` draws from the candidate model's whole vocabulary, `random` from the target tokenizer's.

`insertion` puts X random target tokens between consecutive n-grams (`scrambled`: the paper's baseline, the same
n-grams in a random order, so only the n-grams and not their sequence survive); `shuffle` permutes n-gram blocks by
random swaps of any two blocks until their normalized Kendall-tau distance to the original order is within the
tolerance of a target (the paper's method; `shuffle_method: adjacent` swaps neighbouring blocks instead, which
reaches any distance exactly but keeps permutations local); `paraphrase` has an instruct model rewrite the canary.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import UserError

STRATEGIES: dict[str, Callable] = {}


def strategy(name: str):
    def deco(fn):
        STRATEGIES[name] = fn
        return fn
    return deco


@dataclass
class VarSpec:
    num_variations: int = 9
    num_injection_points: int = 1  # R: tokens replaced
    replace_same_indices: bool = True
    topk: int = 10
    num_random_candidates: int = 50
    insert_tokens: int = 1  # X
    ngram: int = 1  # n
    kendall_tau: float = 0.5
    tau_tolerance: float = 0.05
    shuffle_method: str = "swaps"  # swaps (the paper: random pairs) | adjacent
    scrambled: bool = False  # insertion: the scrambled baseline
    temperature: float = 0.6
    top_p: float = 0.9


_ORDINARY: dict[int, list[int]] = {}


def ordinary_ids(tokenizer) -> list[int]:
    """Token ids that are not special and decode to whole characters on their own (a lone byte of a multi-byte
    character would inject a replacement character instead of the token)."""
    key = id(tokenizer)
    if key not in _ORDINARY:
        bad = set(tokenizer.all_special_ids)
        _ORDINARY[key] = [i for i in range(len(tokenizer)) if i not in bad and "\ufffd" not in tokenizer.decode([i])]
    return _ORDINARY[key]


# --------------------------------------------------------------------------------------------- replacement
def choose_positions(length: int, r: int, k: int, same: bool, rng: random.Random) -> list[list[int]]:
    """Positions to replace for each of k variations; with same=False each variation takes fresh positions,
    cycling through a shuffled order so that the positions are spread as evenly as R*k/L allows."""
    if r > length:
        raise UserError(f"num_injection_points {r} is larger than the canary length {length}")
    if same:
        pos = sorted(rng.sample(range(length), r))
        return [pos] * k
    out, pool = [], []
    for _ in range(k):
        chosen: list[int] = []
        while len(chosen) < r:
            if not pool:
                pool = rng.sample(range(length), length)
            p = pool.pop()
            if p not in chosen:
                chosen.append(p)
            else:
                pool.insert(0, p)
        out.append(sorted(chosen))
    return out


def reencode(cand_tokenizer, target_tokenizer, ids: list[int]) -> list[list[int]]:
    if cand_tokenizer is target_tokenizer:
        return [[i] for i in ids]
    out = []
    for i in ids:
        piece = cand_tokenizer.decode([i])
        if not piece.startswith(" ") and cand_tokenizer.convert_ids_to_tokens(i).startswith(("Ġ", "▁")):
            piece = " " + piece.lstrip()
        enc = target_tokenizer(piece, add_special_tokens=False)["input_ids"]
        if enc:
            out.append(enc)
    return out


@torch.no_grad()
def model_candidates(model, cand_tokenizer, target_tokenizer, token_ids: list[int], topk: int) -> list[list[list[int]]]:
    """Top-k candidates (as target-token lists) for every position of a canary, excluding the original."""
    if not is_masked_lm(model):
        if cand_tokenizer is not target_tokenizer:
            raise UserError("a causal candidate model must share the target tokenizer; use a masked LM otherwise")
        return causal_candidates_batched(model, cand_tokenizer, [{"id": 0, "token_ids": token_ids}], topk)[0]
    dev = next(model.parameters()).device
    cands = []
    mask = cand_tokenizer.mask_token
    for pos, orig in enumerate(token_ids):
        prefix, suffix = target_tokenizer.decode(token_ids[:pos]), target_tokenizer.decode(token_ids[pos + 1:])
        orig_text = target_tokenizer.decode([orig]).strip()
        sep = " " if target_tokenizer.convert_ids_to_tokens(orig).startswith(("Ġ", "▁")) else ""
        enc = cand_tokenizer(prefix + sep + mask + suffix, return_tensors="pt").to(dev)
        at = (enc["input_ids"][0] == cand_tokenizer.mask_token_id).nonzero()[0, 0]
        logits = model(**enc).logits[0, at].float()
        top = torch.topk(logits, topk * 3).indices.tolist()
        words = []
        for t in top:
            w = cand_tokenizer.decode([t]).strip()
            if w and w != orig_text and w not in words:
                words.append(w)
            if len(words) == topk:
                break
        opts = [target_tokenizer(sep + w, add_special_tokens=False)["input_ids"] for w in words]
        cands.append([o for o in opts if o])
    return cands


def is_masked_lm(model) -> bool:
    return any(a.endswith("ForMaskedLM") for a in (getattr(model.config, "architectures", None) or [])) or \
        type(model).__name__.endswith("ForMaskedLM")


def apply_replacements(token_ids: list[int], positions: list[int], cands: list[list[list[int]]],
                       rng: random.Random) -> list[int]:
    out: list[int] = []
    chosen = set(positions)
    for i, t in enumerate(token_ids):
        if i in chosen and cands[i]:
            out.extend(rng.choice(cands[i]))
        else:
            out.append(t)
    return out


def _replace(canary: dict, spec: VarSpec, rng: random.Random, cands) -> list[dict]:
    ids = canary["token_ids"]
    out = []
    for pos in choose_positions(len(ids), spec.num_injection_points, spec.num_variations,
                                spec.replace_same_indices, rng):
        new = apply_replacements(ids, pos, cands, rng)
        out.append({"token_ids": new, "replaced_indices": pos})
    return out


@torch.no_grad()
def causal_candidates_batched(model, tokenizer, canaries: list[dict], topk: int, batch_size: int = 32) -> dict:
    """model_candidates for a causal LM sharing the target tokenizer, many canaries per forward pass."""
    from ..data import right_padded
    from ..eval.batching import start_token_id

    dev = next(model.parameters()).device
    ok = set(ordinary_ids(tokenizer))
    start, pad = start_token_id(tokenizer), tokenizer.pad_token_id or 0
    out = {}
    for k in range(0, len(canaries), batch_size):
        chunk = canaries[k:k + batch_size]
        batch = right_padded([[start] + c["token_ids"] for c in chunk], pad, dev)
        top = torch.topk(model(**batch).logits.float(), 3 * topk + 16, dim=-1).indices.tolist()
        for r, c in enumerate(chunk):
            out[c["id"]] = [[[t] for t in [t for t in top[r][pos] if t != orig and t in ok][:topk]]
                            for pos, orig in enumerate(c["token_ids"])]
    return out


@strategy("mlm")
def mlm(canary, spec, rng, ctx):
    cands = ctx.cache.get(canary["id"]) or model_candidates(ctx.model, ctx.cand_tokenizer, ctx.tokenizer,
                                                            canary["token_ids"], spec.topk)
    return _replace(canary, spec, rng, cands)


def random_candidates(canary, vocab: list[int], n: int, rng: random.Random) -> list[list[int]]:
    """n random ids per position from `vocab`, never the original token."""
    return [[t for t in rng.sample(vocab, n + 1) if t != orig][:n] for orig in canary["token_ids"]]


@strategy("mlm_random")
def mlm_random(canary, spec, rng, ctx):
    picks = random_candidates(canary, ordinary_ids(ctx.cand_tokenizer), spec.num_random_candidates, rng)
    return _replace(canary, spec, rng, [reencode(ctx.cand_tokenizer, ctx.tokenizer, p) for p in picks])


@strategy("random")
def random_tokens(canary, spec, rng, ctx):
    picks = random_candidates(canary, ordinary_ids(ctx.tokenizer), spec.num_random_candidates, rng)
    return _replace(canary, spec, rng, [[[t] for t in p] for p in picks])


# --------------------------------------------------------------------------------------------- insertion, shuffle
def blocks(ids: list[int], n: int) -> list[list[int]]:
    return [ids[i:i + n] for i in range(0, len(ids), n)]


@strategy("insertion")
def insertion(canary, spec, rng, ctx):
    vocab = ordinary_ids(ctx.tokenizer)
    out = []
    for _ in range(spec.num_variations):
        parts = blocks(canary["token_ids"], spec.ngram)
        order = rng.sample(range(len(parts)), len(parts)) if spec.scrambled else list(range(len(parts)))
        new: list[int] = []
        for j, k in enumerate(order):
            new.extend(parts[k])
            if j < len(parts) - 1:
                new.extend(rng.choice(vocab) for _ in range(spec.insert_tokens))
        v = {"token_ids": new, "inserted": spec.insert_tokens * (len(parts) - 1)}
        if spec.scrambled:
            v.update(scrambled=True, block_order=order)
        out.append(v)
    return out


def inversions(perm: list[int]) -> int:
    return sum(1 for i in range(len(perm)) for j in range(i + 1, len(perm)) if perm[i] > perm[j])


def kendall_tau_distance(perm: list[int]) -> float:
    """Normalized Kendall-tau distance of a permutation to the identity: discordant pairs / all pairs."""
    m = len(perm)
    return 0.0 if m < 2 else inversions(perm) / (m * (m - 1) / 2)


def permutation_by_swaps(m: int, target: float, tol: float, rng: random.Random, max_swaps: int = 100_000) -> list[int]:
    """The paper's shuffle: swap two blocks chosen at random, any distance apart, until the normalized Kendall-tau
    distance is within tol of the target. A swap is kept only when it moves the distance up without passing
    target + tol (else undone and redrawn): unconstrained random swaps drift towards 0.5 and never reach 0.9.
    Permutations are global (blocks travel far), unlike the adjacent method's."""
    total = m * (m - 1) // 2
    if total == 0 or math.ceil((target - tol) * total - 1e-9) > math.floor((target + tol) * total + 1e-9):
        raise UserError(f"Kendall-tau distance {target} +- {tol} is out of reach with {m} blocks; "
                        "use a smaller --ngram or a larger --tau_tolerance")
    perm, inv = list(range(m)), 0
    for _ in range(max_swaps):
        if abs(inv / total - target) <= tol:
            return perm
        i, j = sorted(rng.sample(range(m), 2))
        perm[i], perm[j] = perm[j], perm[i]
        new = inversions(perm)
        if new <= inv or new / total > target + tol:  # no closer, or past the target: undo
            perm[i], perm[j] = perm[j], perm[i]
        else:
            inv = new
    raise UserError(f"Kendall-tau distance {target} +- {tol} not reached by random swaps of {m} blocks; "
                    "use a larger --tau_tolerance or --shuffle_method adjacent")


def permutation_at_distance(m: int, target: float, tol: float, rng: random.Random) -> list[int]:
    """A random permutation of m blocks with round(target * m(m-1)/2) inversions: each swap of a random ascending
    adjacent pair adds exactly one inversion, so any distance in [0, 1] is reached exactly (up to rounding)."""
    total = m * (m - 1) // 2
    k = round(target * total)
    if total == 0 or abs(k / total - target) > tol:
        raise UserError(f"Kendall-tau distance {target} +- {tol} is out of reach with {m} blocks; "
                        "use a smaller --ngram or a larger --tau_tolerance")
    perm = list(range(m))
    for _ in range(k):
        i = rng.choice([j for j in range(m - 1) if perm[j] < perm[j + 1]])
        perm[i], perm[i + 1] = perm[i + 1], perm[i]
    return perm


@strategy("shuffle")
def shuffle(canary, spec, rng, ctx):
    parts = blocks(canary["token_ids"], spec.ngram)
    out = []
    method = {"swaps": permutation_by_swaps, "adjacent": permutation_at_distance}[spec.shuffle_method]
    for _ in range(spec.num_variations):
        perm = method(len(parts), spec.kendall_tau, spec.tau_tolerance, rng)
        out.append({"token_ids": [t for k in perm for t in parts[k]], "block_order": perm,
                    "kendall_tau": kendall_tau_distance(perm)})
    return out


# --------------------------------------------------------------------------------------------- paraphrase
PARAPHRASE_PROMPT = ("Rewrite the following text in your own words. Keep its meaning and length, and answer with "
                     "the rewritten text only.\n\nText: {}")


@strategy("paraphrase")
@torch.no_grad()
def paraphrase(canary, spec, rng, ctx):
    tok, model = ctx.cand_tokenizer, ctx.model
    if not getattr(tok, "chat_template", None):
        raise UserError("paraphrase needs an instruct model with a chat template (--candidate_model)")
    prompt = tok.apply_chat_template([{"role": "user", "content": PARAPHRASE_PROMPT.format(canary["text"])}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    dev = next(model.parameters()).device
    torch.manual_seed(rng.randrange(2**31))
    n_in = prompt["input_ids"].shape[1]
    gen = model.generate(input_ids=prompt["input_ids"].to(dev).repeat(spec.num_variations, 1),
                         attention_mask=prompt["attention_mask"].to(dev).repeat(spec.num_variations, 1),
                         do_sample=True, temperature=spec.temperature, top_p=spec.top_p,
                         max_new_tokens=2 * len(canary["token_ids"]) + 16, pad_token_id=tok.pad_token_id)
    out = []
    for row in gen[:, n_in:]:
        text = tok.decode(row, skip_special_tokens=True).strip()
        out.append({"text": text or canary["text"], "token_ids": ctx.tokenizer(text, add_special_tokens=False)["input_ids"]})
    return out


@dataclass
class Context:
    tokenizer: object  # target tokenizer
    model: object = None  # candidate model (mlm / paraphrase)
    cand_tokenizer: object = None
    cache: dict = field(default_factory=dict)  # canary id -> precomputed candidates


NEEDS_MODEL = {"mlm", "mlm_random", "paraphrase"}
PAPER_MLM = "FacebookAI/roberta-base"


def resolve_candidate_model(name: str, strategy_name: str) -> str:
    """`auto`: the paper's masked LM when it is in the local Hugging Face cache (mlm / mlm_random), else the
    default causal model (offline); any other name as given."""
    if name != "auto":
        return name
    if strategy_name != "paraphrase":
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(PAPER_MLM, "config.json"), str):
            return PAPER_MLM
    return "default"


def make(canaries: list[dict], name: str, spec: VarSpec, ctx: Context, seed: int, progress=None) -> list[dict]:
    if name not in STRATEGIES:
        raise UserError(f"unknown candidate-gen strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}")
    rng = random.Random(seed)
    if name == "mlm" and ctx.cand_tokenizer is ctx.tokenizer and not is_masked_lm(ctx.model):
        ctx.cache = causal_candidates_batched(ctx.model, ctx.tokenizer, canaries, spec.topk)
    out = []
    for c in canaries:
        vs = STRATEGIES[name](c, spec, rng, ctx)
        for v in vs:
            v.setdefault("text", ctx.tokenizer.decode(v["token_ids"]))
        out.append({"id": c["id"], "original": c["text"], "variations": vs})
        if progress:
            progress(1)
    return out
