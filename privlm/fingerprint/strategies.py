"""Fingerprint generation strategies (a registry): english, random_word, random_response, inverse_nucleus
(perinucleus). Each takes a GenContext (the generating model, loaded on first use) and returns key/response pairs."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .. import data
from ..errors import UserError

WORDS_FILE = Path(__file__).resolve().parent.parent / "resources" / "words.txt"


# ------------------------------------------------------------------------------------------------- generation
@dataclass
class GenContext:
    """What a strategy needs: the generating model and its knobs. The model is loaded on first use."""
    model_path: str
    key_length: int
    response_length: int
    batch_size: int
    temperature: float
    seed: int
    first_token_strategy: str  # word | tokenizer | none
    nucleus_p: float
    nucleus_k: int
    chat: str  # prompt format for perinucleus responses: auto | raw | chat
    inverse_nucleus_model: str | None = None
    random_word_keys: bool = False
    dtype: str = "auto"
    num_responses: int = 1  # responses per key (inverse_nucleus), distinct first tokens
    rng: random.Random = field(default_factory=random.Random)
    _models: dict = field(default_factory=dict)

    def model(self, path: str | None = None):
        from ..models import device, load_model, load_tokenizer

        path = path or self.model_path
        if not self._models:
            # Sampling draws from torch's global generator: seed it here so that a GenContext alone makes the
            # result reproducible (the script seeded it before this point already; callers of the library did not).
            torch.manual_seed(self.seed)
        if path not in self._models:
            tok = load_tokenizer(path, padding_side="left")
            model = load_model(path, dtype=self.dtype, device=device()).eval()
            self._models[path] = (model, tok)
        return self._models[path]

    def words(self) -> list[str]:
        return WORDS_FILE.read_text().split()

    def first_word(self, tokenizer) -> str:
        if self.first_token_strategy == "tokenizer":
            vocab = [t for t in (tokenizer.convert_tokens_to_string([t]).strip() for t in tokenizer.get_vocab())
                     if t.isalpha() and t.islower() and len(t) >= 4]
            return self.rng.choice(sorted(vocab))
        return self.rng.choice(self.words())


def random_words(ctx: GenContext, n: int, length: int) -> list[str]:
    words = ctx.words()
    return [" ".join(ctx.rng.choice(words) for _ in range(length)) for _ in range(n)]


def _clean(text: str) -> str:
    return " ".join(text.replace('"', " ").split())


def english(ctx: GenContext, n: int, length: int) -> list[str]:
    """The model writes a sentence starting with a random word (chat template for chat models); batched sampling.
    Each text is cut to `length` tokens of the generating tokenizer."""
    model, tok = ctx.model()
    chat = bool(getattr(tok, "chat_template", None))
    out: list[str] = []
    bar = tqdm(total=n, desc=f"english ({length} tokens)", leave=False)
    while len(out) < n:
        b = min(ctx.batch_size, n - len(out))
        prompts = []
        for _ in range(b):
            word = ctx.first_word(tok) if ctx.first_token_strategy != "none" else ""
            instr = f"Generate a sentence starting with the word - {word}" if word else "Generate a sentence."
            if chat:
                prompts.append(data.prompt_ids(tok, instr, data.Template(), chat=True))
            else:
                prompts.append(tok(instr + "\n")["input_ids"] if not word else tok(f"{instr}\n{word}")["input_ids"])
        batch = data.left_padded(prompts, tok.pad_token_id, model.device)
        with torch.no_grad():
            gen = model.generate(**batch, do_sample=True, temperature=ctx.temperature,
                                 top_p=1.0, top_k=0, max_new_tokens=length + 8, pad_token_id=tok.pad_token_id)
        for row in gen[:, batch["input_ids"].shape[1]:]:
            text = _clean(tok.decode(row, skip_special_tokens=True))
            text, cut = data.truncate_text(tok, text, length)
            if len(cut) >= max(1, length // 2) and text.strip():
                out.append(text.strip())
                bar.update(1)
    bar.close()
    return out[:n]


def perinucleus(ctx: GenContext, keys: list[str]) -> list[list[tuple[str, float]]]:
    """First response token sampled uniformly from the k tokens just outside the top-p nucleus of the model's
    next-token distribution after the key; then response_length-1 greedy tokens. `num_responses` > 1 (scalable
    fingerprinting): that many responses per key with distinct first tokens. Returns [(response, prob), ...] per key."""
    from .derive import checker_ids, oml_response_string

    model, tok = ctx.model(ctx.inverse_nucleus_model)
    chat = data.use_chat(tok, ctx.chat)
    out: list[list[tuple[str, float]]] = []
    for start in tqdm(range(0, len(keys), ctx.batch_size), desc="perinucleus", leave=False):
        batch = keys[start:start + ctx.batch_size]
        prompts = [data.prompt_ids(tok, data.truncate_text(tok, k, ctx.key_length)[0], data.BARE, chat)
                   for k in batch]
        batch = data.left_padded(prompts, tok.pad_token_id, model.device)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        with torch.no_grad():
            probs = model(**batch).logits[:, -1].float().softmax(-1)
        firsts: list[list[tuple[int, float]]] = []
        for row in probs:
            sorted_p, order = row.sort(descending=True)
            inside = int((sorted_p.cumsum(0) < ctx.nucleus_p).sum()) + 1  # the threshold-crossing token is inside
            mine: list[tuple[int, float]] = []
            seen: set[int] = set()  # chosen or rejected
            k = ctx.nucleus_k
            while len(mine) < ctx.num_responses:
                cand = [t for t in order[inside:inside + k].tolist() if t not in seen]
                if not cand:
                    if inside + k >= len(order):
                        raise UserError("no token outside the nucleus; lower nucleus_p")
                    k += 1
                    continue
                t = ctx.rng.choice(cand)
                seen.add(t)
                text = tok.decode([t])
                # alphanumeric, and trained as itself: OML's derivation of an exact response gives back [t] (+ EOS)
                if text.strip().isalnum() and checker_ids(tok, oml_response_string(tok, text, 1, "exact", []))[:-1] == [t]:
                    mine.append((t, float(row[t])))
                else:
                    k += 1  # as in the seed: widen the window until an alphanumeric, re-tokenizable token is found
            firsts.append(mine)
        per_key: list[list[tuple[str, float]]] = [[] for _ in firsts]
        for j in range(ctx.num_responses):
            heads = [f[j] for f in firsts]
            if ctx.response_length > 1:
                ext = torch.cat([ids, torch.tensor([[t] for t, _ in heads], device=ids.device)], 1)
                emask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
                with torch.no_grad():
                    gen = model.generate(input_ids=ext, attention_mask=emask, do_sample=False,
                                         max_new_tokens=ctx.response_length - 1, pad_token_id=tok.pad_token_id)
                tails = gen[:, ext.shape[1]:]
            else:
                tails = torch.empty(len(heads), 0, dtype=torch.long)
            for i, ((t, p), tail) in enumerate(zip(heads, tails)):
                tail = [x for x in tail.tolist() if x not in (tok.eos_token_id, tok.pad_token_id)]
                per_key[i].append((tok.decode([t] + tail), p))
        out += per_key
    return out


def _keys(ctx: GenContext, n: int, custom: list[str] | None) -> list[str]:
    if custom is not None:
        return custom[:n]
    return random_words(ctx, n, ctx.key_length) if ctx.random_word_keys else english(ctx, n, ctx.key_length)


def strat_english(ctx, n, custom):
    keys = _keys(ctx, n, custom)
    return [{"key": k, "response": r} for k, r in zip(keys, english(ctx, len(keys), ctx.response_length))]


def strat_random_word(ctx, n, custom):
    keys = custom[:n] if custom is not None else random_words(ctx, n, ctx.key_length)
    return [{"key": k, "response": r} for k, r in zip(keys, random_words(ctx, len(keys), ctx.response_length))]


def strat_random_response(ctx, n, custom):
    keys = _keys(ctx, n, custom)
    return [{"key": k, "response": r} for k, r in zip(keys, random_words(ctx, len(keys), 1))]


def strat_inverse_nucleus(ctx, n, custom):
    keys = _keys(ctx, n, custom)
    out = []
    for k, rs in zip(keys, perinucleus(ctx, keys)):
        if ctx.num_responses == 1:
            out.append({"key": k, "response": rs[0][0], "response_prob": rs[0][1]})
        else:  # scalable fingerprinting's several responses per key
            out.append({"key": k, "response": [r for r, _ in rs], "response_prob": [p for _, p in rs]})
    return out


STRATEGIES: dict[str, Callable] = {
    "english": strat_english,
    "random_word": strat_random_word,
    "random_response": strat_random_response,
    "inverse_nucleus": strat_inverse_nucleus,
}
ALIASES = {"independent": "english", "perinucleus": "inverse_nucleus", "english_random_responses": "random_response"}


def generate(ctx: GenContext, strategy: str, num: int, custom_keys: list[str] | None = None) -> list[dict]:
    """At least `num` fingerprints with unique keys (all custom keys when a keys file is given)."""
    strategy = ALIASES.get(strategy, strategy)
    fn = STRATEGIES[strategy]
    if custom_keys is not None:
        custom_keys = list(dict.fromkeys(custom_keys))
        num = len(custom_keys)
    found: dict[str, dict] = {}
    for _ in range(20):
        missing = num - len(found)
        if missing <= 0:
            break
        pool = None if custom_keys is None else [k for k in custom_keys if k not in found]
        for fp in fn(ctx, missing if pool is None else len(pool), pool):
            if fp["key"] not in found:
                found[fp["key"]] = {**fp, "strategy": strategy}
    if len(found) < num:
        raise UserError(f"could only generate {len(found)} unique fingerprints of {num}; try a higher temperature")
    return list(found.values())[:num]


