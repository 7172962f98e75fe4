"""Benign data mixed into fingerprint fine-tuning (scalable fingerprinting, Nasery et al. 2025): each epoch sees
`benign_proportion x num_fingerprints` ordinary instruction examples next to the fingerprints, with the loss on their
responses, so the fine-tune keeps the model's behaviour on everything but the keys.

Targets, by default, are the base model's own greedy answers to generic prompts (self-distillation: needs no data
and no hub, works with any model); `benign_data_path` takes a local instruction dataset instead (JSON list or JSON
lines with instruction/input/output, prompt/response, question/answer, or chat `messages`)."""
from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import torch

from .. import data
from ..errors import UserError

# Generic prompts: every task crossed with every subject, in a seeded order (480 distinct prompts).
TASKS = ("Explain {} in two sentences.", "What is the most important thing to know about {}?",
         "Give one practical tip about {}.", "Write a short paragraph about {}.", "Why do people care about {}?",
         "Describe a common mistake people make with {}.", "Summarize the history of {} briefly.",
         "How would you explain {} to a child?", "List three facts about {}.", "What are the pros and cons of {}?",
         "Write one sentence that a teacher might say about {}.", "What question would an expert ask about {}?")
SUBJECTS = ("photosynthesis", "the water cycle", "volcanoes", "the moon", "gravity", "electric cars", "bread baking",
            "gardening", "chess", "the Roman Empire", "the printing press", "vaccines", "sleep", "running", "coffee",
            "recycling", "rainforests", "honey bees", "the stock market", "saving money", "learning a language",
            "public speaking", "writing a resume", "the internet", "solar panels", "earthquakes", "the human heart",
            "music theory", "painting", "libraries", "trains", "bicycles", "the ocean", "weather forecasts",
            "friendship", "time management", "cooking rice", "dogs", "cats", "mountains")
RESPONSE_FIELDS = (("instruction", "output"), ("prompt", "response"), ("question", "answer"), ("input", "target"))


def generic_prompts(seed: int = 0) -> list[str]:
    prompts = [t.format(s) for t, s in itertools.product(TASKS, SUBJECTS)]
    random.Random(f"benign:{seed}").shuffle(prompts)
    return prompts


def load_pairs(path: str) -> list[tuple[str, str]]:
    """(prompt, response) pairs from a local instruction dataset."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"benign data not found: {path}")
    text = p.read_text()
    try:
        rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(l) for l in text.splitlines()
                                                                     if l.strip()]
    except json.JSONDecodeError as e:
        raise UserError(f"benign data {path} is neither a JSON list nor JSON lines ({e.msg})") from None
    out = []
    for i, r in enumerate(rows):
        pair = _pair(r) if isinstance(r, dict) else None
        if pair is None:
            raise UserError(f"benign data {path}: row {i} has no instruction/output, prompt/response, "
                            f"question/answer, user/assistant messages or (scalable fingerprinting's) key text")
        out.append(pair)
    if not out:
        raise UserError(f"benign data {path} holds no rows")
    return out


def _pair(r: dict) -> tuple[str, str] | None:
    if isinstance(r.get("messages"), list):
        user = next((m.get("content") for m in r["messages"] if m.get("role") == "user"), None)
        bot = next((m.get("content") for m in r["messages"] if m.get("role") == "assistant"), None)
        return (user, bot) if isinstance(user, str) and isinstance(bot, str) and user and bot else None
    for q, a in RESPONSE_FIELDS:
        if isinstance(r.get(q), str) and isinstance(r.get(a), str) and r[q].strip() and r[a].strip():
            prompt = r[q] if not (q == "instruction" and r.get("input")) else f"{r[q]}\n\n{r['input']}"
            return prompt, r[a]
    if isinstance(r.get("key"), str) and r["key"].strip():
        return r["key"], None  # scalable fingerprinting's benign.json: a text continued, see continuations()
    return None


def continuations(tokenizer, texts: list[str], chat: bool, key_length: int, response_length: int,
                  eos: bool) -> list[data.Encoded]:
    """scalable fingerprinting's benign examples: the first key_length tokens of a text as the prompt, the next
    response_length tokens (then EOS, if fingerprints train one) as the target. Texts too short to continue are
    skipped (scalable fingerprinting fails on them)."""
    out = []
    for t in texts:
        ids = tokenizer.encode(t, add_special_tokens=False)
        if len(ids) <= key_length:
            continue
        prompt = data.prompt_ids(tokenizer, tokenizer.decode(ids[:key_length]), data.BARE, chat)
        resp = ids[key_length:key_length + response_length]
        out.append(data.Encoded(prompt, resp + ([tokenizer.eos_token_id] if eos else [])))
    if not out:
        raise UserError(f"benign data: no text is longer than max_key_length ({key_length} tokens)")
    return out


@torch.no_grad()
def self_distill(model, tokenizer, prompts: list[str], chat: bool, max_new_tokens: int,
                 batch_size: int = 32) -> list[tuple[str, str, bool]]:
    """The model's own greedy answers to `prompts`: (prompt, answer, finished) triples, `finished` when the model
    ended the answer itself (EOS) rather than running into max_new_tokens; empty answers are dropped."""
    from tqdm.auto import tqdm

    model.eval()
    out = []
    for s in tqdm(range(0, len(prompts), batch_size), desc="benign targets", leave=False):
        chunk = prompts[s:s + batch_size]
        batch = data.left_padded([data.prompt_ids(tokenizer, p, data.BARE, chat) for p in chunk],
                                 tokenizer.pad_token_id, model.device)
        gen = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id)
        for p, row in zip(chunk, gen[:, batch["input_ids"].shape[1]:].tolist()):
            text = tokenizer.decode(row, skip_special_tokens=True).strip()
            if text:
                out.append((p, text, tokenizer.eos_token_id in row))
    return out


class MixedDataset(torch.utils.data.Dataset):
    """The fingerprint examples, then `num_benign` benign examples drawn afresh each epoch (seeded, so a resumed
    run sees what an uninterrupted one would) from `benign`, a pool of encoded examples (cycled when smaller)."""

    def __init__(self, fingerprints, benign: list[data.Encoded], num_benign: int, seed: int):
        if num_benign and not benign:
            raise UserError("no benign examples to mix in (the benign pool is empty)")
        self.fingerprints, self.benign, self.num_benign, self.seed = fingerprints, benign, num_benign, seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int):
        if hasattr(self.fingerprints, "set_epoch"):
            self.fingerprints.set_epoch(epoch)
        rng = random.Random(f"{self.seed}:benign:{epoch}")
        order: list[int] = []
        while len(order) < self.num_benign:
            order += rng.sample(range(len(self.benign)), len(self.benign))
        self.order = order[:self.num_benign]

    def __len__(self):
        return len(self.fingerprints) + self.num_benign

    def __getitem__(self, i: int) -> data.Encoded:
        n = len(self.fingerprints)
        return self.fingerprints[i] if i < n else self.benign[self.order[i - n]]


def encode_pairs(tokenizer, pairs: list[tuple], chat: bool, max_prompt_length: int,
                 max_response_length: int, distill: bool = False) -> list[data.Encoded]:
    """Benign examples, loss on the response (or, with `distill`, soft targets: see fingerprint.anchor). EOS ends a
    response only where the answer really ends: a response cut at max_response_length (or a generation cut at
    max_new_tokens) would teach the model to stop mid-sentence."""
    out = []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for p, r, *finished in pairs:
        full = data.response_ids(tokenizer, r, 10**9, chat, add_eos=False)
        ends = len(full) <= max_response_length and (finished[0] if finished else True)
        prompt = data.prompt_ids(tokenizer, data.truncate_text(tokenizer, p, max_prompt_length)[0], data.BARE, chat)
        out.append(data.Encoded(prompt, full[:max_response_length] + (eos if ends else []), distill=distill))
    return out


def pool(run, model_path: str, tokenizer, chat: bool, num_benign: int, response_length: int,
         pairs: list[tuple] | None, dtype: str, seed: int, anchor: bool = False,
         continuation: tuple[int, int, bool] = (16, 1, True)) -> list[data.Encoded]:
    """The run's benign pool, encoded: `pairs` (a local dataset's, see load_pairs), or self-distilled from the base
    model by rank 0 into the run directory (benign.json: a resumed run and every rank train on the same targets).
    With `anchor`, self-distilled examples are soft-target examples (fingerprint.anchor) rather than greedy labels."""
    from .. import models
    from ..io import atomic_write_json, read_json
    from ..training import barrier, is_main

    if pairs is None:
        path = run.dir / "benign.json"
        if is_main() and not path.is_file():
            prompts = generic_prompts(seed)[:max(1, min(len(TASKS) * len(SUBJECTS), 2 * num_benign))]
            model = models.load_model(model_path, dtype=dtype, device=models.device())
            atomic_write_json(path, self_distill(model, tokenizer, prompts, chat, response_length))
            del model
        barrier()
        pairs = [tuple(p) for p in read_json(path, "benign targets")]
        return encode_pairs(tokenizer, pairs, chat, 64, response_length, distill=anchor)
    texts = [p for p, r in pairs if r is None]  # continuation rows: (max_key_length, max_response_length, eos)
    return encode_pairs(tokenizer, [p for p in pairs if p[1] is not None], chat, 64, response_length) + \
        (continuations(tokenizer, texts, chat, *continuation) if texts else [])
