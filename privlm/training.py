"""The one training loop: DeepSpeed engine (ZeRO 0-3, optional CPU offload), forgetting regularizer,
checkpoint/resume, final save. Used by fingerprinting and private fine-tuning alike.

Runs under the `deepspeed` launcher (N ranks) and under plain `python` (one rank: the env a launcher would set
is filled in). On a machine without CUDA it trains on CPU with DeepSpeed's CPU accelerator.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .errors import UserError
from .models import load_model, pick_dtype


# ------------------------------------------------------------------------------------------------- distributed
def init_distributed() -> tuple[int, int]:
    """Initialise torch.distributed through DeepSpeed; works with or without a launcher. Returns (rank, world)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:  # plain `python script.py`: act as a one-rank launch
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        deepspeed.init_distributed(verbose=False)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    elif "OMP_NUM_THREADS" not in os.environ:  # CPU ranks on one machine share its cores; oversubscription is slow
        local = int(os.environ.get("LOCAL_SIZE", os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size())))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
    return dist.get_rank(), dist.get_world_size()


def release_shm_buffers():
    """Unlink this rank's DeepSpeed CPU shared-memory allreduce buffer (~70 MB in /dev/shm). DeepSpeed never does,
    so without this every CPU run leaves one per rank until reboot. Call after the last collective."""
    if torch.cuda.is_available():
        return
    import glob

    addr, port, r = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT"), os.environ.get("RANK")
    if addr and port and r is not None:
        for f in glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_*_{addr}_{port}_{r}"):
            with contextlib.suppress(OSError):
                os.unlink(f)


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))


def barrier():
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def is_main() -> bool:
    return rank() == 0


# ------------------------------------------------------------------------------------------------- config
@dataclass
class TrainSpec:
    """What the loop needs, resolved from a TrainArgs section (`TrainSpec.from_args`) plus the script's own knobs."""
    epochs: float = 10
    max_steps: int = -1  # > 0 overrides epochs
    micro_batch_size: int = 8
    grad_accum: int = 1
    total_batch_size: int | None = None  # sets grad_accum once the world size is known
    lr: float = 1e-5
    weight_decay: float = 1e-4
    lr_scheduler: str = "linear"  # constant | linear | cosine
    warmup_steps: int = 0
    grad_clip: float = 1.0
    zero_stage: int = 2
    offload: bool = False
    dtype: str = "auto"
    seed: int = 42
    save_every_epochs: int = 1
    save_every_steps: int = 0  # also checkpoint every N steps inside an epoch (0: only at epoch ends)
    keep_checkpoints: bool = False
    forgetting_lambda: float = 0.0
    forgetting_schedule: str = "end"  # end: after the last epoch only; epoch: after every epoch
    trust_remote_code: bool = False
    warmup_ratio: float = 0.0
    logging_steps: int = 0
    report_to: str = "none"
    gradient_checkpointing: bool = False
    ds_json: dict | None = None  # the user's DeepSpeed JSON, laid over ours ("auto" values keep ours)
    pretrained: bool = True  # False: the architecture's random initialisation
    dp_step: bool = False  # the DP step writes the gradients (privlm.dp.step): see ds_config
    merge_lora: bool = False  # save a LoRA-trained model with its adapter merged in (a plain HF folder)
    export: Callable | None = None  # (module, state) -> (state, module) to save, e.g. an MLP expansion folded back
    early_stop_loss: float = 0.0  # > 0: stop after the epoch whose mean loss falls below it (scalable's 0.005)
    wrap_loss: Callable | None = None  # (engine, loss_fn) -> loss_fn, once the engine exists and before a resume

    @classmethod
    def from_args(cls, ta, dtype: str = "auto", **extra) -> "TrainSpec":
        """From a config.TrainArgs section; `extra` holds what the script decides (forgetting, DP's clip = 0...)."""
        kw = dict(epochs=ta.num_train_epochs, max_steps=ta.max_steps, micro_batch_size=ta.per_device_train_batch_size,
                  grad_accum=ta.gradient_accumulation_steps, total_batch_size=ta.total_train_batch_size,
                  lr=ta.learning_rate, weight_decay=ta.weight_decay, lr_scheduler=ta.lr_scheduler_type,
                  warmup_steps=ta.warmup_steps, warmup_ratio=ta.warmup_ratio, grad_clip=ta.max_grad_norm,
                  zero_stage=ta.zero_stage, offload=ta.offload, dtype=ta.precision(dtype), seed=ta.seed,
                  save_every_epochs=ta.save_every_epochs, save_every_steps=ta.save_steps,
                  keep_checkpoints=ta.keep_checkpoints, logging_steps=ta.logging_steps, report_to=ta.report_to,
                  gradient_checkpointing=ta.gradient_checkpointing, ds_json=ta.deepspeed_json())
        ds = kw["ds_json"] or {}
        if ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device") in ("cpu", "nvme"):
            kw["offload"] = True  # the JSON's offload needs DeepSpeed's CPU Adam, as --offload does
        kw.update(extra)
        return cls(**kw)

    def for_world(self, world: int) -> "TrainSpec":
        """total_batch_size -> gradient accumulation steps over `world` ranks."""
        from dataclasses import replace

        if self.total_batch_size:
            return replace(self, grad_accum=max(1, self.total_batch_size // (self.micro_batch_size * world)))
        return self


def planned_steps(epochs: float, max_steps: int, steps_per_epoch: int) -> int:
    """Optimizer steps a run takes: max_steps when > 0, else epochs x steps per epoch (a fraction trains part of
    the last epoch). DP plans its privacy budget with this same function."""
    if max_steps and max_steps > 0:
        return max_steps
    return max(1, math.ceil(epochs * steps_per_epoch - 1e-9))


def ds_config(spec: TrainSpec, world: int) -> dict:
    dt = pick_dtype(spec.dtype)
    zero: dict = {"stage": spec.zero_stage}
    if spec.zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True, stage3_param_persistence_threshold=0)
    if spec.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        if spec.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    cfg = {
        "train_micro_batch_size_per_gpu": spec.micro_batch_size,
        "gradient_accumulation_steps": spec.grad_accum,
        "train_batch_size": spec.micro_batch_size * spec.grad_accum * world,
        "gradient_clipping": spec.grad_clip,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": dt == torch.bfloat16},
        "fp16": {"enabled": dt == torch.float16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if spec.dp_step and spec.zero_stage == 3:
        # the DP step writes fp32 sums into the gradient partitions: keep them fp32 under bf16/fp16; and plain
        # F.linear, whose backward skips weight gradients nobody asked for (ZeRO-3's memory-efficient linear
        # forms them anyway, doubling the ghost pass)
        zero["memory_efficient_linear"] = False
        if dt != torch.float32:
            cfg["data_types"] = {"grad_accum_dtype": "fp32"}
    if spec.offload:  # DeepSpeed's CPU Adam is needed where the optimizer lives on the CPU
        cfg["optimizer"] = {"type": "AdamW", "params": {"lr": spec.lr, "weight_decay": spec.weight_decay}}
    if spec.ds_json:
        cfg = _overlay(cfg, spec.ds_json)
        cfg["train_batch_size"] = (cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"]
                                   * world)
    return cfg


def _overlay(ours: dict, theirs: dict) -> dict:
    """The user's DeepSpeed JSON over ours; "auto" (Hugging Face's placeholder) keeps our value."""
    out = dict(ours)
    for k, v in theirs.items():
        if v == "auto":
            continue
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _overlay(out[k], v)
        elif isinstance(v, dict):
            out[k] = {kk: vv for kk, vv in v.items() if vv != "auto"}
        else:
            out[k] = v
    return out


# ------------------------------------------------------------------------------------------------- regularizer
class ForgettingRegularizer:
    """Weight averaging toward the base model: theta <- (1 - lambda) theta + lambda theta0.

    Under ZeRO and bf16 the optimizer holds fp32 master weights and copies them over the model's weights at every
    step, so averaging only the model's weights (as the seed does) is lost. Here the fp32 master copy is averaged
    through DeepSpeed's tensor-fragment API and the model's (low-precision) weights are set to match, so the
    result survives the next step and is what gets saved. Each rank keeps theta0 for what it owns: the full
    tensor for ZeRO 0-2, its own partition for ZeRO-3.
    """

    def __init__(self, engine):
        self.engine = engine
        self.base = {}
        for name, p in engine.module.named_parameters():
            # LoRA: averaging B toward its zero start scales the learned delta B A by exactly (1 - lambda), as
            # averaging full weights would; averaging A too would scale it by (1 - lambda)^2.
            if p.requires_grad and ".lora_A." not in name:
                src = p.ds_tensor if hasattr(p, "ds_id") else p
                self.base[name] = src.detach().to("cpu", copy=True)

    @torch.no_grad()
    def apply(self, lam: float):
        from deepspeed.utils import (safe_get_full_fp32_param, safe_get_local_fp32_param, safe_set_full_fp32_param,
                                     safe_set_local_fp32_param)

        for name, p in self.engine.module.named_parameters():
            if name not in self.base:
                continue
            if hasattr(p, "ds_id"):  # ZeRO-3: this rank's partition of master and model weights
                hp = safe_get_local_fp32_param(p)
                new = hp.float().mul(1 - lam).add_(self.base[name].to(hp.device, torch.float32), alpha=lam)
                safe_set_local_fp32_param(p, new)
                p.ds_tensor.data.copy_(new.to(p.ds_tensor.dtype))
                continue
            full = safe_get_full_fp32_param(p)  # None when the optimizer works on the model's weights directly
            src = full if full is not None else p.data.float()
            new = src.mul(1 - lam).add_(self.base[name].to(src.device, torch.float32), alpha=lam)
            if full is not None:
                safe_set_full_fp32_param(p, new)
            p.data.copy_(new.to(p.dtype))


# ------------------------------------------------------------------------------------------------- trainable set
# Named sets of trainable parameters (a regex searched in each parameter's name otherwise). `mlp`: the feed-forward
# blocks only, where a fine-tune can store key -> response facts; frozen embeddings matter most, because the
# output head's gradient is dense over the whole vocabulary and Adam moves every row of a tied embedding by about
# the learning rate per step, which shifts every token's logit on text the fine-tune never saw.
NO_DECAY = ("bias", "norm")  # Hugging Face Trainer's rule: no weight decay on biases and normalisation weights


def decay_groups(model, weight_decay: float) -> list:
    """The trainable parameters as AdamW groups, weight decay off for biases and norms (as the HF Trainer, hence OML
    and scalable fingerprinting, do)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not weight_decay:
        return [p for _, p in named]
    quiet = [p for n, p in named if any(k in n.lower() for k in NO_DECAY)]
    loud = [p for n, p in named if not any(k in n.lower() for k in NO_DECAY)]
    return [g for g in ({"params": loud, "weight_decay": weight_decay}, {"params": quiet, "weight_decay": 0.0})
            if g["params"]]


TRAINABLE = {"all": None, "mlp": r"\.mlp\.", "mlp+attention": r"\.mlp\.|\.self_attn\.|\.attention\."}


def _trainable_regex(spec: str):
    import re

    pattern = TRAINABLE.get(spec, spec)
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise UserError(f"trainable_params {spec!r} is neither a known set ({', '.join(TRAINABLE)}) nor a regex "
                        f"({e})") from None


def check_trainable(spec: str, names: list[str]) -> None:
    """UserError unless `spec` selects at least one of these parameter names (see models.parameter_names)."""
    rx = _trainable_regex(spec)
    if rx is not None and not any(rx.search(n) for n in names):
        raise UserError(f"trainable_params {spec!r} matches no parameter of this model")


def trainable(spec: str):
    """A prepare_model hook that freezes every parameter whose name does not match `spec` (a TRAINABLE name or a
    regex); None for `all`."""
    rx = _trainable_regex(spec)
    if rx is None:
        return None

    def prepare(model):
        check_trainable(spec, [n for n, _ in model.named_parameters()])
        for name, p in model.named_parameters():
            p.requires_grad_(bool(rx.search(name)))
        return model
    return prepare


# ------------------------------------------------------------------------------------------------- loop
def _deepspeed_warmup_decay(warmup: int, total: int):
    """DeepSpeed's WarmupDecayLR as Hugging Face fills it for OML and scalable fingerprinting (min lr 0, log warm-up
    over max(2, warmup) iterations, then linear decay to 0), indexed as DeepSpeed steps it: it starts at the min lr
    and moves after each optimizer step, so the first two steps of such a run have learning rate 0."""
    w = max(2, warmup)

    def fn(step):  # LambdaLR's factor for optimizer step `step` (0-based)
        it = step - 1  # DeepSpeed's last_batch_iteration when that step is taken
        if it < 0:
            return 0.0
        if it < w:
            return math.log(it + 1) / math.log(w)
        return max(0.0, (total - it) / max(1, total - w))
    return fn


def _scheduler(name: str, warmup: int, total: int):
    if name == "warmup_decay":
        fn_ = _deepspeed_warmup_decay(warmup, total)
        return lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, fn_)

    def fn(step):
        if warmup and step < warmup:
            return (step + 1) / warmup
        if name in ("constant", "constant_with_warmup"):
            return 1.0
        frac = min(1.0, (step - warmup) / max(1, total - warmup))
        return 1.0 - frac if name == "linear" else 0.5 * (1 + math.cos(math.pi * frac))

    return lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, fn)


class MetricLogger:
    """Rank 0's record of training: JSON lines in log.txt, plus TensorBoard or Weights & Biases (report_to)."""

    def __init__(self, run_dir: Path, report_to: str = "none", name: str = "", config: dict | None = None,
                 enabled: bool = True):
        self.path, self.backend, self.writer = run_dir / "log.txt", report_to, None
        self.enabled = enabled
        if not enabled or report_to == "none":
            return
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        elif report_to == "wandb":
            import wandb

            self.writer = wandb.init(project=os.environ.get("WANDB_PROJECT", "privlm"), name=name, dir=str(run_dir),
                                     config=config or {}, resume="allow", id=name or None)

    def log(self, record: dict, step: int | None = None):
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        nums = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                and k not in ("step", "epoch")}
        if self.writer is not None and step is not None:
            if self.backend == "tensorboard":
                for k, v in nums.items():
                    self.writer.add_scalar(f"train/{k}", v, step)
            else:
                self.writer.log({f"train/{k}": v for k, v in nums.items()}, step=step)

    def close(self):
        if self.writer is not None:
            (self.writer.close if self.backend == "tensorboard" else self.writer.finish)()


class PlainSteps:
    """Shuffled fixed batches over the ranks (DistributedSampler); DeepSpeed accumulates `grad_accum`
    micro-batches into one optimizer step and averages over ranks."""

    def __init__(self, dataset, collate_fn: Callable, spec: TrainSpec, rank: int, world: int):
        from torch.utils.data import DataLoader, DistributedSampler

        self.dataset, self.grad_accum = dataset, spec.grad_accum
        self.loss_fn = lambda engine, batch: engine(**batch).loss  # train(loss_fn=...) replaces it
        self.sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=spec.seed)
        self.loader = DataLoader(dataset, batch_size=spec.micro_batch_size, sampler=self.sampler,
                                 collate_fn=collate_fn)

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.loader) / self.grad_accum)

    def bind(self, engine):
        self.engine = engine

    def epoch(self, epoch: int):
        self.sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        group = []
        for batch in self.loader:
            group.append(batch)
            if len(group) == self.grad_accum:
                yield group
                group = []
        if group:
            yield group

    def run(self, micro_batches: list[dict]) -> float:
        losses = []
        for batch in micro_batches:
            batch = {k: v.to(self.engine.device) for k, v in batch.items()}
            loss = self.loss_fn(self.engine, batch)
            self.engine.backward(loss)
            self.engine.step()
            losses.append(loss.item())
        return sum(losses) / len(losses)

    def state(self, brief: bool = False) -> dict:
        return {}

    def load_state(self, state: dict):
        pass


def train(model_path: str, dataset, collate_fn: Callable, spec: TrainSpec, run, tokenizer, desc: str = "train",
          steps_factory: Callable | None = None, prepare_model: Callable | None = None,
          on_step: Callable | None = None, loss_fn: Callable | None = None) -> dict:
    """Train `model_path` on `dataset` into `run` (a privlm.runs.Run): checkpoints in run.checkpoints, the final HF
    folder (with run.final_files inside) in run.final. A killed run resumes from its last checkpoint (or from
    --resume_from_checkpoint). Returns metrics (rank 0's view); after a resume `train_seconds` includes the training
    time of the killed process(es), up to the checkpoint resumed from (`resumed_after_seconds`).

    `steps_factory(dataset, collate_fn, spec, rank, world)` chooses how logical steps are drawn and taken
    (PlainSteps by default; the DP plan's factory for DP-SGD); `prepare_model(model)` can wrap the model (LoRA);
    `on_step(engine, step, total_steps)` runs on every rank before the first step (step 0) and after each logical
    step; `loss_fn(engine, batch)` replaces the model's own loss (with the default steps)."""
    import deepspeed
    from tqdm.auto import tqdm

    rank_, world = init_distributed()
    spec = spec.for_world(world)
    torch.manual_seed(spec.seed)
    cfg = ds_config(spec, world)
    if spec.zero_stage == 3:  # build the model already partitioned, as a 70B model needs
        from transformers.integrations import HfDeepSpeedConfig

        _ds_cfg = HfDeepSpeedConfig(cfg)  # noqa: F841 (a weak global reference: must outlive from_pretrained)
    model = load_model(model_path, dtype=spec.dtype, trust_remote_code=spec.trust_remote_code,
                       pretrained=spec.pretrained)
    model.config.use_cache = False
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # frozen embeddings (LoRA) would cut the graph otherwise
    if prepare_model is not None:
        model = prepare_model(model)
    params = decay_groups(model, spec.weight_decay)
    optimizer = None if "optimizer" in cfg else torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)

    steps = (steps_factory or PlainSteps)(dataset, collate_fn, spec, rank_, world)
    steps_per_epoch = steps.steps_per_epoch()
    total_steps = planned_steps(spec.epochs, spec.max_steps, steps_per_epoch)
    epochs = math.ceil(total_steps / steps_per_epoch)
    warmup = spec.warmup_steps or int(spec.warmup_ratio * total_steps)
    scheduler = None if "scheduler" in cfg else _scheduler(spec.lr_scheduler, warmup, total_steps)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, optimizer=optimizer, config=cfg,
                                           lr_scheduler=scheduler)
    steps.bind(engine)
    if loss_fn is not None:
        steps.loss_fn = loss_fn
    if spec.wrap_loss is not None:  # before load_checkpoint: it may read the starting weights (merge-aware theta0)
        steps.loss_fn = spec.wrap_loss(engine, steps.loss_fn)
    reg = ForgettingRegularizer(engine) if spec.forgetting_lambda > 0 else None
    run_dir, ckpt_dir = run.dir, run.checkpoints
    logger = MetricLogger(run_dir, spec.report_to, run.id, {"spec": spec.__dict__}, enabled=rank_ == 0)

    start_epoch, skip, history, carried, before = 0, 0, [], [], 0.0
    resume = run.resume_checkpoint()
    if resume is not None:
        load_dir, tag = (resume, None) if (resume / "latest").is_file() else (resume.parent, resume.name)
        _, client = engine.load_checkpoint(str(load_dir), tag=tag, load_module_strict=True)
        start_epoch, history = client["epoch"], client.get("history", [])
        skip, carried = client.get("step_in_epoch", 0), client.get("epoch_losses", [])
        before = client.get("train_seconds", 0.0)  # training time of the killed process(es), so totals stay true
        steps.load_state(client.get("steps", {}))
        if rank_ == 0:
            print(f"[privlm] resuming from {resume} at epoch {start_epoch + 1}, step {skip}", flush=True)
            logger.log({"event": "resume", "from": str(resume), "epoch": start_epoch, "step_in_epoch": skip})

    t0 = time.time()
    elapsed = lambda: round(before + time.time() - t0, 2)  # noqa: E731
    if on_step is not None and start_epoch == 0 and skip == 0:
        on_step(engine, 0, total_steps)
    done = start_epoch * steps_per_epoch + skip
    bar = tqdm(total=total_steps, initial=done, desc=desc, disable=rank_ != 0, dynamic_ncols=True)
    for epoch in range(start_epoch, epochs):
        engine.train()
        losses = carried if epoch == start_epoch else []
        in_epoch = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)  # a fractional last epoch stops early
        for i, micro_batches in enumerate(steps.epoch(epoch)):
            if i >= in_epoch:
                break
            if epoch == start_epoch and i < skip:  # done before the checkpoint we resumed from
                continue
            losses.append(steps.run(micro_batches))
            step = epoch * steps_per_epoch + i + 1
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.4f}")
            if spec.logging_steps and step % spec.logging_steps == 0:
                logger.log({"step": step, "epoch": round(epoch + (i + 1) / steps_per_epoch, 4), "loss": losses[-1],
                            "lr": engine.get_lr()[0]}, step)
            if on_step is not None:
                on_step(engine, step, total_steps)
            if spec.save_every_steps and (i + 1) % spec.save_every_steps == 0 and i + 1 < in_epoch:
                _save_checkpoint(engine, ckpt_dir, f"epoch{epoch}_step{i + 1}",
                                 {"epoch": epoch, "step_in_epoch": i + 1, "epoch_losses": losses,
                                  "history": history, "steps": steps.state(), "train_seconds": elapsed()})
        mean = torch.tensor(sum(losses) / max(1, len(losses)))
        if world > 1:
            torch.distributed.all_reduce(mean)
            mean /= world
        history.append({"epoch": epoch + 1, "loss": mean.item(), "lr": engine.get_lr()[0],
                        "elapsed_s": elapsed(), **steps.state(brief=True)})
        last = epoch + 1 == epochs
        if spec.early_stop_loss and history[-1]["loss"] < spec.early_stop_loss and not last:
            last = True  # scalable fingerprinting's early stop: the fingerprints are learnt
            history[-1]["early_stop"] = True
            if rank_ == 0:
                print(f"\n[privlm] early stop after epoch {epoch + 1}: loss {history[-1]['loss']:.4g} < "
                      f"{spec.early_stop_loss}", flush=True)
        if reg is not None and (spec.forgetting_schedule == "epoch" or last):
            reg.apply(spec.forgetting_lambda)
        logger.log(history[-1], (epoch + 1) * steps_per_epoch if not last else total_steps)
        if not last and (epoch + 1) % spec.save_every_epochs == 0:
            _save_checkpoint(engine, ckpt_dir, f"epoch{epoch + 1}",
                             {"epoch": epoch + 1, "history": history, "steps": steps.state(),
                              "train_seconds": history[-1]["elapsed_s"]})
        if last:
            break
    bar.close()
    logger.close()

    save_final(engine, tokenizer, run.final, run.final_files, merge_lora=spec.merge_lora, export=spec.export)
    barrier()
    release_shm_buffers()
    if rank_ == 0 and not spec.keep_checkpoints:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    taken = min(total_steps, len(history) * steps_per_epoch)  # fewer after an early stop
    return {"history": history, "train_seconds": elapsed(), "resumed_after_seconds": before, "world_size": world,
            "optimizer_steps": taken, **steps.state()}


def _save_checkpoint(engine, ckpt_dir: Path, tag: str, client_state: dict):
    """DeepSpeed checkpoint (weights, optimizer, scheduler) plus where training stands (`client_state`).

    DeepSpeed writes `latest` with a plain open/write: a crash (or a kill) at that moment leaves it empty and the
    run cannot resume. Here `latest` is written only after every rank has finished, by rename, so it always names
    a complete checkpoint."""
    from .io import atomic_write_text

    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    barrier()
    if is_main():
        atomic_write_text(ckpt_dir / "latest", tag)
        for old in ckpt_dir.iterdir():  # keep only the newest checkpoint: a 7B model's optimizer state is ~100 GB
            if old.is_dir() and old.name != tag:
                shutil.rmtree(old, ignore_errors=True)
    barrier()


def save_final(engine, tokenizer, out: Path, extra_files: dict[str, object], merge_lora: bool = False,
               export: Callable | None = None):
    """Save an HF folder loadable with from_pretrained (gathering ZeRO-3 partitions), atomically on rank 0; with
    merge_lora, a PEFT model is saved as the plain model with its adapter merged in."""
    from . import lora
    from .io import atomic_dir

    if engine.zero_optimization_partition_weights():
        state = engine._zero3_consolidated_16bit_state_dict()  # collective: every rank takes part
    else:
        state = engine.module.state_dict()
    if is_main():
        module = engine.module
        if merge_lora and lora.is_peft(module):
            state, module = lora.merged_state(module, state), module.get_base_model()
        if export is not None:
            state, module = export(module, state)
        module.config.use_cache = True  # training turned it off; generation wants it back
        with atomic_dir(out) as tmp:
            module.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            for name, obj in extra_files.items():
                (tmp / name).write_text(json.dumps(obj, indent=2, default=str) + "\n")
    barrier()
