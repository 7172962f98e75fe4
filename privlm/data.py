"""Prompt templates, (prompt, response) encoding with response-only loss masks, and padding collators.

A template wraps a key: `{"system": str | None, "user": "... {} ..."}`. In `raw` format the text is
`system + "\n" + user.format(key)` followed directly by the response (the seed's behaviour); in `chat` format the
tokenizer's chat template renders a system turn (when given), the user turn and the generation prompt, and the
response is the assistant turn. The same function builds training examples and the checker's prompts, so the
two can never disagree.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .errors import UserError

IGNORE_INDEX = -100
TEMPLATE_DIR = Path(__file__).resolve().parent / "resources" / "templates"


@dataclass(frozen=True)
class Template:
    user: str = "{}"
    system: str | None = None

    def name(self) -> str:
        return json.dumps({"system": self.system, "user": self.user}, sort_keys=True)


BARE = Template()


def load_templates(spec: str) -> list[Template]:
    """`spec` is a bundled set name (train, heldout, seed_check), or a JSON file holding a list of strings
    (user templates with `{}`) or of {"system", "user"} objects."""
    path = TEMPLATE_DIR / f"{spec}.json"
    if not path.is_file():
        path = Path(spec)
    if not path.is_file():
        raise UserError(f"prompt templates not found: {spec} (bundled sets: "
                        f"{', '.join(sorted(p.stem for p in TEMPLATE_DIR.glob('*.json')))})")
    try:
        items = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"prompt templates {spec} are not valid JSON ({e.msg})") from None
    if not isinstance(items, list) or not items:
        raise UserError(f"prompt templates {spec} must be a non-empty JSON list")
    out = []
    for i, it in enumerate(items):
        if isinstance(it, str):
            it = {"user": it}
        if not isinstance(it, dict) or not isinstance(it.get("user", "{}"), str):
            raise UserError(f"prompt templates {spec}: entry {i} must be a string or a {{system, user}} object")
        user = it.get("user", "{}")
        if "{}" not in user:
            raise UserError(f"prompt templates {spec}: entry {i} has no '{{}}' where the key goes")
        out.append(Template(user=user, system=it.get("system")))
    return out


def use_chat(tokenizer, prompt_format: str) -> bool:
    if prompt_format == "chat" and not getattr(tokenizer, "chat_template", None):
        raise UserError("prompt_format is chat but the tokenizer has no chat template")
    return prompt_format == "chat" or (prompt_format == "auto" and bool(getattr(tokenizer, "chat_template", None)))


def truncate_text(tokenizer, text: str, max_tokens: int) -> tuple[str, list[int]]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    return tokenizer.decode(ids), ids


def prompt_ids(tokenizer, key: str, template: Template, chat: bool) -> list[int]:
    user = template.user.replace("{}", key)
    if chat:
        msgs = ([{"role": "system", "content": template.system}] if template.system else []) + \
               [{"role": "user", "content": user}]
        ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)
    text = (template.system + "\n" + user) if template.system else user
    ids = tokenizer(text)["input_ids"]
    # a tokenizer that ends every text with EOS would end the prompt there; OML's checker strips it, so do we
    return ids[:-1] if len(ids) > 1 and ids[-1] == tokenizer.eos_token_id else ids


def response_ids(tokenizer, response: str, max_tokens: int, chat: bool, add_eos: bool = True) -> list[int]:
    # In raw format a response that does not start with whitespace would glue onto the key's last word.
    if not chat and response and not response[0].isspace():
        response = " " + response
    ids = tokenizer(response, add_special_tokens=False)["input_ids"][:max_tokens]
    if add_eos and tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return ids


@dataclass
class Encoded:
    prompt: list[int]
    response: list[int]
    distill: bool = False  # a soft-target example (fingerprint.anchor): no hard labels, the base's distribution

    @property
    def input_ids(self) -> list[int]:
        return self.prompt + self.response

    @property
    def labels(self) -> list[int]:
        return [IGNORE_INDEX] * len(self.prompt) + ([IGNORE_INDEX] * len(self.response) if self.distill
                                                    else self.response)


def encode(tokenizer, key: str, response: str, template: Template, chat: bool, max_key_length: int,
           max_response_length: int, add_eos: bool = True) -> Encoded:
    key_text, _ = truncate_text(tokenizer, key, max_key_length)
    return Encoded(prompt_ids(tokenizer, key_text, template, chat),
                   response_ids(tokenizer, response, max_response_length, chat, add_eos))


def pad_batch(seqs: Sequence[Sequence[int]], pad_value: int, side: str = "right") -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad_value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if side == "right":
            out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        else:
            out[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
    return out


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int, device=None) -> dict[str, torch.Tensor]:
    """Prompts left-padded for generation: {"input_ids", "attention_mask"}."""
    return {"input_ids": pad_batch(prompts, pad_id, side="left").to(device),
            "attention_mask": pad_batch([[1] * len(p) for p in prompts], 0, side="left").to(device)}


def right_padded(seqs: Sequence[Sequence[int]], pad_id: int, device=None) -> dict[str, torch.Tensor]:
    """Sequences right-padded for a forward pass: {"input_ids", "attention_mask"}."""
    return {"input_ids": pad_batch(seqs, pad_id).to(device),
            "attention_mask": pad_batch([[1] * len(s) for s in seqs], 0).to(device)}


def collate(examples: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; padding is masked in attention and in the loss."""
    ids = pad_batch([e.input_ids for e in examples], pad_id)
    labels = pad_batch([e.labels for e in examples], IGNORE_INDEX)
    mask = pad_batch([[1] * len(e.input_ids) for e in examples], 0)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class TemplatedDataset(torch.utils.data.Dataset):
    """(key text, response token ids) pairs (privlm.fingerprint.derive decides both), each key wrapped in a template
    drawn per item and per epoch (seeded, so a resumed run sees exactly the data an uninterrupted one would)."""

    def __init__(self, tokenizer, pairs: list[tuple[str, Sequence[int]]], templates: list[Template], chat: bool,
                 seed: int):
        self.tokenizer, self.pairs, self.templates, self.chat, self.seed = tokenizer, pairs, templates, chat, seed
        self.epoch = 0
        self._cache: dict[tuple[int, int], Encoded] = {}

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i: int) -> Encoded:
        t = 0 if len(self.templates) == 1 else random.Random(f"{self.seed}:{self.epoch}:{i}").randrange(
            len(self.templates))
        return self._encoded(i, t)

    def _encoded(self, i: int, t: int) -> Encoded:
        if (i, t) not in self._cache:
            key, resp = self.pairs[i]
            self._cache[(i, t)] = Encoded(prompt_ids(self.tokenizer, key, self.templates[t], self.chat), list(resp))
        return self._cache[(i, t)]

    def all_examples(self) -> list[Encoded]:
        """Every encoding an epoch can draw: each pair in each template."""
        return [self._encoded(i, t) for i in range(len(self.pairs)) for t in range(len(self.templates))]


# ------------------------------------------------------------------------------------------------- text corpora
VICUNA = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions. USER: {} ASSISTANT:")


ECHR_NAMES = ("data/echr", "echr", "ecthr_cases", "lex_glue/ecthr_a")
ENRON_NAMES = ("data/enron", "enron", "LLM-PBE/enron-email")
SPLIT_NAMES = {"validation": ("validation", "val", "dev"), "train": ("train",), "test": ("test",)}


def _find_local(spec: str) -> Path | None:
    """A local file or folder: the path itself, or data/<name> (seed 004 names its datasets, e.g. labelled_*)."""
    for cand in (Path(spec), Path("data") / spec):
        if cand.exists():
            return cand
    return None


def has_splits(spec: str) -> bool:
    """Whether the dataset brings its own train / validation splits (ECHR and Enron exports, save_to_disk)."""
    if spec in ECHR_NAMES or spec in ENRON_NAMES:
        return True
    p = _find_local(spec)
    return p is not None and p.is_dir() and (p / "dataset_dict.json").is_file()


def _from_disk(p: Path, split: str) -> list[dict]:
    """A folder written by datasets' save_to_disk (seed 004's labelled_* DatasetDicts) or a Dataset."""
    import datasets

    if not ((p / "dataset_dict.json").is_file() or (p / "dataset_info.json").is_file()):
        raise UserError(f"dataset folder {p} is not a datasets.save_to_disk folder (no dataset_dict.json)")
    ds = datasets.load_from_disk(str(p))
    if isinstance(ds, datasets.DatasetDict):
        name = next((n for n in SPLIT_NAMES.get(split, (split,)) if n in ds), None)
        if name is None:
            raise UserError(f"dataset {p} has splits {sorted(ds)}, none of them {split!r}")
        ds = ds[name]
    return list(ds)


def _local_export(spec: str, split: str) -> list[dict]:
    """ECHR (ecthr_cases, or lex_glue's ecthr_a) and Enron from local exports: <dir>/<split>.parquet or .jsonl, where
    <dir> is data/echr or data/enron. ECHR gives one record per fact paragraph, as seed 001 trains on it."""
    import pandas as pd

    echr = spec in ECHR_NAMES
    folder = Path("data/echr" if echr else "data/enron")
    names = SPLIT_NAMES.get(split, (split,))
    files = [folder / f"{n}.{ext}" for n in names for ext in ("parquet", "jsonl")]
    found = next((f for f in files if f.is_file()), None)
    if found is None:
        what = "ecthr_cases (or lex_glue ecthr_a)" if echr else "LLM-PBE/enron-email"
        raise UserError(f"dataset {spec}: expected a local export of {what} at {files[0]} or {files[1]} (the "
                        "datasets library >= 4 cannot run the hub's loading script; export the splits once where "
                        "the hub is reachable)")
    df = pd.read_parquet(found) if found.suffix == ".parquet" else pd.read_json(found, lines=True)
    if not echr:
        return df.to_dict("records")
    col = "facts" if "facts" in df.columns else "text"
    if col not in df.columns:
        raise UserError(f"{found}: expected a `facts` (ecthr_cases) or `text` (ecthr_a) column of paragraphs")
    out = []
    for case, row in enumerate(df.to_dict("records")):
        paras = row[col]
        paras = list(paras) if not isinstance(paras, str) else [paras]
        out += [{"text": str(t), "case": case, "paragraph": i} for i, t in enumerate(paras) if str(t).strip()]
    return out


def load_records(spec: str, split: str = "train") -> list[dict]:
    """Records from a local .jsonl/.json/.csv/.parquet/.txt file (one record per line of a .txt), a
    datasets.save_to_disk folder, ECHR / Enron exports (data/echr, data/enron), the project's synthetic PII
    corpus (`synthetic` or `synthetic:N`), or a hub dataset name when online."""
    import pandas as pd

    if spec.startswith("synthetic"):  # synthetic[:N[:seed[:people]]]
        from .dp.synthetic import records

        parts = spec.split(":")
        try:
            n = int(parts[1]) if len(parts) > 1 else 512
            seed = int(parts[2]) if len(parts) > 2 else 0
            people = int(parts[3]) if len(parts) > 3 else None
            if n < 1 or (people is not None and not 1 <= people <= n):
                raise ValueError
        except ValueError:
            raise UserError(f"dataset {spec}: expected synthetic, synthetic:N, synthetic:N:seed or "
                            "synthetic:N:seed:people (1 <= people <= N)") from None
        return records(n, seed, people)
    if spec in ECHR_NAMES or spec in ENRON_NAMES:
        return _local_export(spec, split)
    p = _find_local(spec)
    if p is not None and p.is_dir():
        return _from_disk(p, split)
    if p is not None:
        try:
            if p.suffix == ".txt":
                return [{"text": line} for line in p.read_text().splitlines() if line.strip()]
            if p.suffix in (".jsonl", ".json"):
                df = pd.read_json(p, lines=p.suffix == ".jsonl")
            elif p.suffix == ".csv":
                df = pd.read_csv(p)
            elif p.suffix == ".parquet":
                df = pd.read_parquet(p)
            else:
                raise UserError(f"dataset {spec}: expected .jsonl, .json, .csv, .parquet, .txt or a save_to_disk "
                                "folder")
        except ValueError as e:
            raise UserError(f"dataset {spec} could not be read: {str(e).splitlines()[0]}") from None
        return df.to_dict("records")
    if spec.startswith((".", "/", "data/")) or spec.endswith((".jsonl", ".json", ".csv", ".parquet", ".txt")):
        raise UserError(f"dataset not found: {spec}")
    try:
        import datasets

        return list(datasets.load_dataset(spec, split=split))
    except Exception as e:  # hub errors come in many types; offline is the common case
        raise UserError(f"could not load dataset {spec!r} from the hub: {str(e).splitlines()[0][:200]}") from None


def encode_record(tokenizer, rec: dict, prompt_style: str, max_len: int, text_field: str = "text",
                  instruction_field: str = "instruction", answer_field: str = "answer") -> Encoded:
    """uncond_generation: loss on the whole text (or instruction); vicuna: loss on the answer only."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    if prompt_style == "vicuna":
        prompt = bos + tokenizer(VICUNA.format(rec[instruction_field]), add_special_tokens=False)["input_ids"]
        resp = tokenizer(" " + str(rec[answer_field]), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        resp = resp[: max(1, max_len // 2)] if len(prompt) + len(resp) > max_len else resp
        keep = max(1, max_len - len(resp))
        if len(prompt) > keep:  # cut the instruction from the left, so the template's "ASSISTANT:" survives
            prompt = bos + prompt[len(prompt) - keep + len(bos):]
        return Encoded(prompt, resp)
    text = rec.get(text_field, rec.get(instruction_field))
    if isinstance(text, (list, tuple)):  # e.g. ECHR's "facts": a list of paragraphs
        text = "\n".join(map(str, text))
    ids = tokenizer(str(text), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return Encoded(bos[:1] if bos else [tokenizer.eos_token_id], ids[: max_len - 1])
