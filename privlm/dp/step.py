"""One DP-SGD logical step under DeepSpeed (ZeRO 0-2, any number of ranks).

Each rank runs its Poisson micro-batches (fixed shapes) forward, gets per-example gradients of the trainable LoRA
weights from hooks (one backward, through `torch.autograd.grad`, so DeepSpeed's gradient hooks stay quiet), clips
each example to norm C and sums. Rank 0 adds N(0, sigma^2 C^2) once per logical step. The sum then reaches
DeepSpeed through a surrogate loss <g, theta> whose gradient is exactly g, so DeepSpeed's own reduction across
ranks, ZeRO partitioning and optimizer step do the rest: the update is (sum over ranks of clipped sums + noise)
divided by the expected logical batch size q*N (fixed, as the analysis of Poisson sampling requires).
"""
from __future__ import annotations

import torch

from .accountant import Ledger
from .clipping import per_example_engine, per_example_loss


def add_gaussian_noise_(tensors: list[torch.Tensor], source, step: int, std: float):
    """Add N(0, std^2) to each tensor in place, each from its own keyed generator (so the result does not depend on
    the thread count), in a thread pool: randn releases the GIL, and on a CPU it is a real share of a DP step
    (0.6 s for 135M coordinates on one core). In place: no second copy of the gradient."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i):
        t = tensors[i]
        t.add_((torch.randn(t.shape, generator=source.generator("noise", step, i)) * std).to(t.device, t.dtype))

    with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
        list(pool.map(one, range(len(tensors))))


class DPStep:
    """sigma and C come from the plan (fixed before training); the ledger only records the steps taken."""

    def __init__(self, engine, plan, source, rank: int, world: int):
        """`source`: the run's privlm.dp.randomness.NoiseSource (an int seed means reproducible, for tests)."""
        from .randomness import NoiseSource

        self.engine, self.plan, self.ledger = engine, plan, plan.ledger
        self.expected = plan.expected_batch_size
        self.source = NoiseSource(True, source) if isinstance(source, int) else source
        self.rank, self.world = rank, world
        self.per_example = per_example_engine(engine.module)
        self.per_example.enabled = True
        self.last_norms: torch.Tensor | None = None

    def __call__(self, micro_batches: list[dict[str, torch.Tensor]]) -> float:
        """Run one logical step; returns the mean per-example loss of the real (non-padding) rows."""
        eng, dev = self.engine, self.engine.device
        sums: dict | None = None
        losses, norms = [], []
        for mb in micro_batches:
            mb = {k: v.to(dev) for k, v in mb.items()}
            # the module itself, not the engine: the engine's output hooks would scale these gradients for
            # accumulation and refuse a backward that is not engine.backward
            # position ids with the batch dimension: a position embedding's per-example gradients survive
            pos = torch.arange(mb["input_ids"].shape[1], device=dev).expand_as(mb["input_ids"])
            logits = eng.module(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"],
                                position_ids=pos).logits
            loss = per_example_loss(logits, mb["labels"])
            s, n = self.per_example.clipped_sum(loss, self.plan.max_grad_norm)
            if sums is None:
                sums = s
            else:  # in place: one fp32 copy of the trainable weights, however many micro-batches
                for p in s:
                    sums[p].add_(s[p])
            real = (mb["labels"] != -100).any(1)
            losses.append(loss.detach()[real])
            norms.append(n.detach()[real])
        step = self.ledger.steps
        if self.rank == 0 and self.plan.noise_multiplier > 0:  # once per logical step, across all ranks
            add_gaussian_noise_(list(sums.values()), self.source, step,
                                self.plan.noise_multiplier * self.plan.max_grad_norm)
        scale = self.world / self.expected  # DeepSpeed averages gradients over ranks
        surrogate = sum((g.detach().to(p.dtype) * p).sum() for p, g in sums.items()) * scale  # d/dp = g * scale
        eng.backward(surrogate)
        eng.step()
        self.ledger.step()
        self.last_norms = torch.cat(norms)
        loss = torch.cat(losses)
        return float(loss.mean()) if loss.numel() else float("nan")


class DPSteps:
    """The DP-SGD way of drawing and taking logical steps, for `training.train(steps_factory=...)`: Poisson
    batches (or shuffled fixed ones on request), DPStep, and the privacy ledger carried in checkpoints."""

    def __init__(self, dataset, collate_fn, spec, rank: int, world: int, *, plan, pad_example):
        self.dataset, self.collate_fn, self.pad_example = dataset, collate_fn, pad_example
        self.plan, self.ledger, self.seed, self.rank, self.world = plan, plan.ledger, spec.seed, rank, world
        self.dataset_len, self.micro = len(dataset), spec.micro_batch_size
        self.batches = None  # made in bind(), once ranks can share the secret root

    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch

    def bind(self, engine):
        from .randomness import NoiseSource
        from .sampling import PoissonBatches

        # after distributed init: the secure root is drawn on rank 0 and shared (in memory only)
        self.source = NoiseSource(self.plan.reproducible_noise, self.seed, engine.device)
        self.batches = PoissonBatches(self.dataset_len, self.plan.sample_rate, self.source, self.rank, self.world,
                                      self.micro, self.plan.sampling == "shuffle")
        self.step = DPStep(engine, self.plan, self.source, self.rank, self.world)

    def epoch(self, epoch: int):
        spe = self.steps_per_epoch()
        for k in range(spe):
            yield [self.collate_fn([self.dataset[i] if i is not None else self.pad_example for i in mb])
                   for mb in self.batches.micro_batches(epoch * spe + k)]

    def run(self, micro_batches) -> float:
        return self.step(micro_batches)

    def state(self) -> dict:
        self.ledger.update_epsilon()
        return {"privacy": self.ledger.to_dict()}

    def load_state(self, state: dict):
        if "privacy" in state:
            restored = Ledger.from_dict(state["privacy"])
            self.ledger.steps, self.ledger.epsilon = restored.steps, restored.epsilon
