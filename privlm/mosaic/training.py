"""Training the mosaic target: the injected corpus cut into blocks, and the loss-attack AUC logged during training
(overall and per canary group) through the training loop's on_step hook."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UserError
from ..mia import metrics
from ..mia.scoring import token_stats
from ..training import is_main


def corpus_file(path: str) -> Path:
    p = Path(path)
    p = p / "corpus.jsonl" if p.is_dir() else p
    if not p.is_file():
        raise UserError(f"corpus not found: {path} (run `python -m mosaic inject` first)")
    return p


def chunks(tokenizer, path: Path, block: int) -> list[torch.Tensor]:
    ids: list[int] = []
    with open(path) as fh:
        for n, line in enumerate(fh, 1):
            try:
                text = json.loads(line)["text"]
            except (ValueError, KeyError, TypeError):
                raise UserError(f"{path}:{n}: expected a JSON object with a \"text\" field") from None
            ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(ids) < block:
        raise UserError(f"corpus {path}: {len(ids)} tokens, fewer than one block of {block}")
    t = torch.tensor(ids[: len(ids) // block * block]).view(-1, block)
    return list(t)


def collate(batch):
    x = torch.stack(batch)
    return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()}


class AucLogger:
    """Loss-attack AUC of members (overall and per group) vs non-members, on every rank (ZeRO-3 needs all)."""

    def __init__(self, tokenizer, data: dict, groups: dict[str, set], every: int, run_dir: Path, batch_size: int):
        self.tok, self.every, self.run_dir, self.bs = tokenizer, every, run_dir, batch_size
        self.members, self.nonmembers = data["members"], data["nonmembers"]
        self.groups = groups
        self.history: list[dict] = []
        log = run_dir / "auc_log.jsonl"
        if (run_dir / "checkpoints" / "latest").is_file() and log.is_file():  # resuming: keep what was logged
            self.history = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        elif is_main() and log.exists():
            log.unlink()

    def __call__(self, engine, step: int, total: int):
        if not (step == 0 or step == total or (self.every and step % self.every == 0)):
            return
        model = engine.module
        was_training = model.training
        model.eval()
        texts = [c["text"] for c in self.members] + [c["text"] for c in self.nonmembers]
        stats = token_stats(model, self.tok, texts, self.bs, moments=False)
        model.train(was_training)
        scores = [-s.loss for s in stats]
        m, n = scores[:len(self.members)], scores[len(self.members):]
        rec = {"step": step, "auc": metrics.roc(m, n)["auc"]}
        for label, ids in self.groups.items():
            rec[f"auc/{label}"] = metrics.roc([s for c, s in zip(self.members, m) if c["id"] in ids], n)["auc"]
        self.history.append(rec)
        if is_main():
            with open(self.run_dir / "auc_log.jsonl", "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            from tqdm.auto import tqdm

            tqdm.write(f"[mosaic] step {step}: loss-attack AUC {rec['auc']:.3f}")


def canary_groups(corpus: Path, canaries: dict) -> tuple[dict, dict[str, set]]:
    """The member canaries actually injected into `corpus` (from its injection.json) and their groups by label."""
    from ..io import read_json

    injection = corpus.parent / "injection.json"
    if not injection.is_file():
        return canaries, {}
    groups = {g["label"]: set(g["canary_ids"]) for g in read_json(injection, "injection file")["groups"]}
    members = set().union(*groups.values())
    return {**canaries, "members": [c for c in canaries["members"] if c["id"] in members]}, groups
