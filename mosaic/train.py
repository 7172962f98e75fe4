"""Fine-tune the target model on an injected corpus, logging the loss-attack AUC (members vs non-members).

    python -m mosaic train --config configs/mosaic/demo_train.yml
    deepspeed --num_gpus 8 --module mosaic train --model EleutherAI/gpt-neo-1.3B --corpus results/mosaic/corpus \
        --canaries results/mosaic/canaries.json --block_size 2048 --learning_rate 2e-5 --batch_size 2 --epochs 1

The corpus (a folder from `mosaic inject`, or a corpus.jsonl) is tokenized book by book, joined with EOS and cut
into block_size chunks. The run lives in <results_dir>/<hash>/ (hash of the config and the content of the corpus and
canaries); a finished run is skipped, a killed one resumes from its last epoch checkpoint. auc_log.jsonl holds the
loss-attack AUC every eval_every steps, overall and per canary group.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from privlm import config as C
from privlm import models
from privlm.errors import UserError, cli
from privlm.io import atomic_write_json, provenance, read_json
from privlm.mia import metrics
from privlm.mia.scoring import token_stats
from privlm.mosaic import canaries as canary_lib
from privlm.training import TrainSpec, init_distributed, is_main, link_run, train


@dataclass
class MosaicTrainConfig:
    model: str = C.field("default", aliases=("--model_name", "--model_path"))
    corpus: str = C.field("results/mosaic/corpus", help="folder written by `mosaic inject` (or its corpus.jsonl)")
    canaries: str = C.field("results/mosaic/canaries.json")
    block_size: int = C.field(256, aliases=("--max_length",), help="tokens per training chunk")
    epochs: int = C.field(1, aliases=("--num_train_epochs",))
    learning_rate: float = C.field(2e-5, aliases=("--lr",))
    weight_decay: float = C.field(0.01)
    batch_size: int = C.field(2, help="per-device micro-batch size")
    gradient_accumulation_steps: int = C.field(1)
    lr_scheduler: str = C.field("linear", choices=["constant", "linear", "cosine"])
    warmup_steps: int = C.field(0)
    max_grad_norm: float = C.field(1.0)
    eval_every: int = C.field(10, help="loss-attack AUC every N optimizer steps (0: only at start and end)")
    eval_batch_size: int = C.field(16)
    deepspeed_stage: int = C.field(2, choices=[0, 1, 2, 3])
    offload: bool = C.field(False)
    dtype: str = C.field("auto", choices=["auto", "float32", "bfloat16", "float16"])
    seed: int = C.field(42)
    save_every_steps: int = C.field(100, hash=False, help="DeepSpeed checkpoint every N steps, so a killed run "
                                                          "resumes mid-epoch (0: only at epoch ends)")
    results_dir: str = C.field("results/mosaic/models", hash=False)
    run_link: str | None = C.field(None, hash=False, help="also point this path (a symlink) at the run directory")
    overwrite: bool = C.field(False, hash=False)

    def validate(self):
        p = [f"{k}: must be >= 1" for k in ("block_size", "epochs", "batch_size", "gradient_accumulation_steps",
                                           "eval_batch_size") if getattr(self, k) < 1]
        if self.learning_rate <= 0:
            p.append("learning_rate: must be > 0")
        if self.eval_every < 0 or self.save_every_steps < 0:
            p.append("eval_every/save_every_steps: must be >= 0")
        return p


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


@cli
def main(argv=None) -> Path:
    cfg = C.parse(MosaicTrainConfig, argv, __doc__)
    corpus = corpus_file(cfg.corpus)
    data = canary_lib.load(cfg.canaries)
    injection = corpus.parent / "injection.json"
    groups = {}
    if injection.is_file():
        groups = {g["label"]: set(g["canary_ids"]) for g in read_json(injection, "injection file")["groups"]}
        members = set().union(*groups.values())
        data = {**data, "members": [c for c in data["members"] if c["id"] in members]}
    run_hash = C.run_hash(cfg, {"corpus": C.file_digest(corpus), "canaries": C.file_digest(cfg.canaries),
                                "model": models.identity(cfg.model)})
    run_dir = Path(cfg.results_dir) / run_hash
    final = run_dir / "final_model"
    if final.is_dir() and not cfg.overwrite:
        print(f"[mosaic] run {run_hash} is already finished: {final}")
        link_run(cfg.run_link, run_dir)
        return final
    init_distributed()
    tok = models.load_tokenizer(cfg.model)
    dataset = chunks(tok, corpus, cfg.block_size)
    if is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", {"run_hash": run_hash, **C.to_dict(cfg)})
        atomic_write_json(run_dir / "provenance.json", provenance(seed=cfg.seed))
    spec = TrainSpec(epochs=cfg.epochs, micro_batch_size=cfg.batch_size, grad_accum=cfg.gradient_accumulation_steps,
                     lr=cfg.learning_rate, weight_decay=cfg.weight_decay, lr_scheduler=cfg.lr_scheduler,
                     warmup_steps=cfg.warmup_steps, grad_clip=cfg.max_grad_norm, zero_stage=cfg.deepspeed_stage,
                     offload=cfg.offload, dtype=cfg.dtype, seed=cfg.seed, save_every_steps=cfg.save_every_steps)
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    per_step = cfg.batch_size * cfg.gradient_accumulation_steps * world
    logger = AucLogger(tok, data, groups, cfg.eval_every, run_dir, cfg.eval_batch_size)
    if is_main():
        print(f"[mosaic] {len(dataset)} chunks of {cfg.block_size} tokens, {per_step} per step, "
              f"{len(data['members'])} members / {len(data['nonmembers'])} non-members")
    metrics_ = train(cfg.model, dataset, collate, spec, run_dir, tok, desc="mosaic-train", on_step=logger,
                     extra_files={"mosaic_train.json": {"base_model": cfg.model, "corpus": str(corpus),
                                                        "canaries": cfg.canaries, "run_hash": run_hash}})
    if is_main():
        atomic_write_json(run_dir / "metrics.json", {**metrics_, "auc_history": logger.history})
        link_run(cfg.run_link, run_dir)
        print(f"[mosaic] model: {final}")
    return final


if __name__ == "__main__":
    main(sys.argv[1:])
