"""One DP-SGD logical step under DeepSpeed (ZeRO 0-3, any number of ranks).

Each rank runs its Poisson micro-batches (fixed shapes) forward and gets the clipped sum of its examples' gradients
of every trainable weight by ghost norms and book-keeping (privlm.dp.ghost: one backward to the layer outputs,
through `torch.autograd.grad`, so DeepSpeed's gradient hooks stay quiet; never a per-example gradient). The clipped
sums are fp32 and are summed across ranks in fp32. Noise N(0, sigma^2 C^2) is added exactly once per coordinate per
logical step, and the update is (sum over ranks of clipped sums + noise) / (q*N), the expected logical batch size
(fixed, as the analysis of Poisson sampling requires). How the sum reaches the optimizer depends on the stage:

* ZeRO 0-2: rank 0 adds the noise, and a surrogate loss <g, theta> (gradient exactly g) hands the sum to DeepSpeed,
  whose reduction, partitioning and optimizer step do the rest. Under bf16/fp16 weights that gradient would be
  rounded to the weights' dtype on each rank before the reduce, so there the fp32 sums are all-reduced first and
  DeepSpeed averages identical tensors: one rounding, after the reduce and the noise.
* ZeRO-3: no rank holds the model's whole gradient. Each layer's fp32 clipped sum exists in full only until it is
  reduce-scattered to the shard owners, as soon as it is book-kept; each rank adds its own independent
  N(0, sigma^2 C^2) to the shard it owns and writes it into DeepSpeed's gradient partition (`safe_set_local_grad`),
  then the optimizer steps.
"""
from __future__ import annotations

import torch

from .accountant import Ledger
from .clipping import per_example_engine, per_example_loss


NOISE_CHUNK = 1 << 20  # coordinates per generator: a 4 MB buffer each thread reuses, kept in cache


def _chunk(t: torch.Tensor, s: int | None) -> torch.Tensor:
    """Coordinates s .. s + NOISE_CHUNK of t (a view), or all of t where s is None (a non-contiguous tensor)."""
    return t if s is None else t.view(-1)[s:s + NOISE_CHUNK]


def add_gaussian_noise_(tensors: list[torch.Tensor], source, step: int, std: float, *key):
    """Add N(0, std^2) to each tensor in place. The coordinates are cut into chunks of NOISE_CHUNK, each drawn from its
    own generator keyed by (step, tensor index, offset, *key), so the result depends neither on the thread count nor on
    how the chunks are scheduled. On a CPU the chunks run in a thread pool (normal_ releases the GIL; noise was 1.2 s
    of an 8 s step of the default model before): each thread fills one small buffer in place and adds it, so no
    tensor-sized temporary is allocated (page faults on a fresh 100 MB buffer cost as much as drawing it). On a GPU
    each chunk is drawn on the device by its own Philox generator."""
    units = [(i, s) for i, t in enumerate(tensors)
             for s in (range(0, t.numel(), NOISE_CHUNK) if t.is_contiguous() else [None])]
    if any(t.is_cuda for t in tensors):
        for i, s in units:
            t, part = tensors[i], _chunk(tensors[i], s)
            gen = source.generator("noise", step, i, s, *key, device=t.device)
            part.add_(torch.randn(part.shape, generator=gen, device=t.device), alpha=std)
        return
    import threading
    from concurrent.futures import ThreadPoolExecutor

    local = threading.local()

    def one(u):
        i, s = u
        part = _chunk(tensors[i], s)
        if s is None:  # a non-contiguous tensor: one draw of its own shape
            buf = torch.empty(part.shape)
        else:
            if not hasattr(local, "buf"):
                local.buf = torch.empty(NOISE_CHUNK)
            buf = local.buf[:part.numel()]
        buf.normal_(generator=source.generator("noise", step, i, s, *key))
        part.add_(buf.view(part.shape), alpha=std)

    with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
        list(pool.map(one, units))


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
        self.params = self.per_example.params  # one order on every rank: the collectives below pair up by it
        self.zero3 = bool(engine.zero_optimization_partition_weights())
        self.low_precision = any(p.dtype != torch.float32 for p in self.params)
        self.last_norms: torch.Tensor | None = None
        self.canaries = plan.whitebox  # the white-box audit's gradient canaries: examples of every logical batch
        if self.canaries is not None:
            self.canaries.bind(self.params, plan.sample_rate, plan.max_grad_norm, plan.noise_multiplier)

    def __call__(self, micro_batches: list[dict[str, torch.Tensor]]) -> float:
        """Run one logical step; returns the mean per-example loss of the real (non-padding) rows."""
        eng, dev = self.engine, self.engine.device
        sums: dict = {}
        shards = _Shards(self.params, self.rank, self.world, dev) if self.zero3 else None
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
            s, n = self.per_example.clipped_sum(loss, self.plan.max_grad_norm,
                                                sink=shards.add if shards else None)
            for p, g in s.items():  # in place: one fp32 copy of the trainable weights, however many micro-batches
                if p in sums:
                    sums[p].add_(g)
                else:
                    sums[p] = g
            real = (mb["labels"] != -100).any(1)
            losses.append(loss.detach()[real])
            norms.append(n.detach()[real])
        std = self.plan.noise_multiplier * self.plan.max_grad_norm
        if self.zero3:
            shards.finish(self.source, self.ledger.steps, std, 1.0 / self.expected)
            eng.optimizer.independent_gradient_partition_epilogue()  # what a backward ends with: the step reads it
            eng.step()
        else:
            self._surrogate_step([sums[p] for p in self.params], std)
        self.ledger.step()
        self.last_norms = torch.cat(norms)
        loss = torch.cat(losses)
        return float(loss.mean()) if loss.numel() else float("nan")

    def _surrogate_step(self, sums: list[torch.Tensor], std: float):
        eng, step = self.engine, self.ledger.steps
        scale = self.world / self.expected  # DeepSpeed averages gradients over ranks
        if self.canaries is not None and self.rank == 0:  # examples of the batch: counted once, before the noise
            self.canaries.add_(sums, self.source, step)
        if self.rank == 0 and std > 0:  # once per logical step, across all ranks
            add_gaussian_noise_(sums, self.source, step, std)
        if self.canaries is not None:  # what the auditor sees: the released sum, along each canary
            self.canaries.observe(sums, self.world)
        if self.low_precision and self.world > 1:  # sum in fp32 here; DeepSpeed then averages identical tensors
            import torch.distributed as dist

            for g in sums:
                dist.all_reduce(g)
            scale = 1.0 / self.expected
        surrogate = sum((g.to(p.dtype) * p).sum() for p, g in zip(self.params, sums)) * scale  # d/dp = g * scale
        eng.backward(surrogate)
        eng.step()


class _Shards:
    """ZeRO-3: each rank's fp32 share of the clipped sums, reduced layer by layer into the shards it owns (DeepSpeed's
    layout: rank r owns elements [r*n, (r+1)*n) of the flattened weight, n = the local partition's size)."""

    def __init__(self, params, rank: int, world: int, device):
        import torch.distributed as dist

        self.params, self.rank, self.world = params, rank, world
        self.local = [torch.zeros(p.ds_tensor.numel(), dtype=torch.float32, device=device) for p in params]
        self.scatter = world > 1 and dist.get_backend() == "nccl"  # gloo has no reduce_scatter: all_reduce there

    def add(self, i: int, s: torch.Tensor):
        import torch.distributed as dist

        n = self.local[i].numel()
        flat = s.reshape(-1)
        if self.world == 1:
            self.local[i].add_(flat[:n])
            return
        full = torch.zeros(n * self.world, dtype=torch.float32, device=flat.device)
        full[:flat.numel()] = flat
        if self.scatter:
            out = torch.empty(n, dtype=torch.float32, device=flat.device)
            dist.reduce_scatter_tensor(out, full)
            self.local[i].add_(out)
        else:
            dist.all_reduce(full)
            self.local[i].add_(full[self.rank * n:(self.rank + 1) * n])

    def finish(self, source, step: int, std: float, scale: float):
        """Each rank adds its own N(0, std^2) to its shards (independent streams keyed by rank), scales to the
        update's 1/(q*N) and writes them into DeepSpeed's gradient partitions."""
        from deepspeed.utils import safe_set_local_grad

        if std > 0:
            add_gaussian_noise_(self.local, source, step, std, "shard", self.rank)
        for p, t in zip(self.params, self.local):
            safe_set_local_grad(p, t.mul_(scale))


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

    def state(self, brief: bool = False) -> dict:
        """The ledger (and the white-box canaries' scores, in checkpoints and the final metrics; `brief`: for
        the per-epoch history, without them)."""
        self.ledger.update_epsilon()
        out = {"privacy": self.ledger.to_dict()}
        if self.plan.whitebox is not None and not brief:
            out["whitebox"] = self.plan.whitebox.state()
        return out

    def load_state(self, state: dict):
        if self.plan.whitebox is not None:
            self.plan.whitebox.load_state(state.get("whitebox"))
        if "privacy" in state:
            restored = Ledger.from_dict(state["privacy"])
            self.ledger.steps, self.ledger.epsilon = restored.steps, restored.epsilon
