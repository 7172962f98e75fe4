"""Fine-tune the target model on an injected corpus, logging the loss-attack AUC (members vs non-members).

    python -m mosaic train --config configs/mosaic/demo_train.yml
    deepspeed --num_gpus 8 --module mosaic train --model EleutherAI/gpt-neo-1.3B --corpus results/mosaic/corpus \
        --canaries results/mosaic/canaries.json --block_size 2048 --learning_rate 2e-5 --batch_size 2 --epochs 1

The corpus (a folder from `mosaic inject`, or a corpus.jsonl) is tokenized book by book, joined with EOS and cut
into block_size chunks. The run lives in --output_dir or <results_dir>/<hash>/ (hash of the config and the content
of the corpus and canaries); a finished run is skipped, a killed one resumes from its last checkpoint.
auc_log.jsonl holds the loss-attack AUC every eval_every steps, overall and per canary group.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from privlm import config as C
from privlm import models
from privlm.errors import cli
from privlm.mosaic import canaries as canary_lib
from privlm.mosaic.training import AucLogger, canary_groups, chunks, collate, corpus_file
from privlm.runs import Run
from privlm.training import TrainSpec, init_distributed, is_main, train


@dataclass
class MosaicTrainConfig:
    model: str = C.field("default", aliases=("--model_name", "--model_path"))
    corpus: str = C.field("results/mosaic/corpus", help="folder written by `mosaic inject` (or its corpus.jsonl)")
    canaries: str = C.field("results/mosaic/canaries.json")
    block_size: int = C.field(256, aliases=("--max_length",), help="tokens per training chunk")
    eval_every: int = C.field(10, help="loss-attack AUC every N optimizer steps (0: only at start and end)")
    eval_batch_size: int = C.field(16)
    dtype: str = C.field("auto", choices=["auto", "float32", "bfloat16", "float16"])
    run_link: str | None = C.field(None, hash=False, help="also point this path (a symlink) at the run directory")
    trainer_args: C.TrainArgs = C.train_args(num_train_epochs=1, learning_rate=2e-5, weight_decay=0.01,
                                             per_device_train_batch_size=2, lr_scheduler_type="linear", deepspeed="2",
                                             max_grad_norm=1.0, save_steps=100, results_dir="results/mosaic/models")

    def validate(self):
        p = [f"{k}: must be >= 1" for k in ("block_size", "eval_batch_size") if getattr(self, k) < 1]
        if self.eval_every < 0:
            p.append("eval_every: must be >= 0")
        return p


@cli
def main(argv=None) -> Path:
    cfg = C.parse(MosaicTrainConfig, argv, __doc__)
    corpus = corpus_file(cfg.corpus)
    data, groups = canary_groups(corpus, canary_lib.load(cfg.canaries))
    run = Run(cfg, cfg.trainer_args, {"corpus": C.file_digest(corpus), "canaries": C.file_digest(cfg.canaries),
                                      "model": models.identity(cfg.model)}, link=cfg.run_link, tag="[mosaic]")
    if run.finished():
        return run.final
    _, world = init_distributed()
    tok = models.load_tokenizer(cfg.model)
    dataset = chunks(tok, corpus, cfg.block_size)
    run.start(seed=cfg.trainer_args.seed)
    spec = TrainSpec.from_args(cfg.trainer_args, dtype=cfg.dtype).for_world(world)
    logger = AucLogger(tok, data, groups, cfg.eval_every, run.dir, cfg.eval_batch_size)
    if is_main():
        print(f"[mosaic] {len(dataset)} chunks of {cfg.block_size} tokens, "
              f"{spec.micro_batch_size * spec.grad_accum * world} per step, "
              f"{len(data['members'])} members / {len(data['nonmembers'])} non-members")
    run.final_files["mosaic_train.json"] = {"base_model": cfg.model, "corpus": str(corpus), "canaries": cfg.canaries,
                                            "run_hash": run.id}
    metrics = train(cfg.model, dataset, collate, spec, run, tok, desc="mosaic-train", on_step=logger)
    run.write_metrics({**metrics, "auc_history": logger.history})
    if is_main():
        run.link()
        print(f"[mosaic] model: {run.final}")
    return run.final


if __name__ == "__main__":
    main(sys.argv[1:])
