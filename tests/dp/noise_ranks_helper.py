"""Launched by tests/dp/test_zero_stages.py with 1 or 2 ranks: two DP steps under a given ZeRO stage, SGD lr=1 (so an
update is minus the gradient): one without noise (the clipped sum / 8), one with sigma*C = 1 (noise / 8). Rank 0 saves
both updates per trainable weight, by name.

usage: noise_ranks_helper.py MODEL_DIR OUT STAGE lora|full MAX_GRAD_NORM [DTYPE]"""
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1]),
                str(Path(__file__).resolve().parent)]


def full(p):
    """A trainable weight as a whole, also under ZeRO-3 (a collective: every rank calls it)."""
    import deepspeed

    with deepspeed.zero.GatheredParameters([p], enabled=hasattr(p, "ds_id")):
        return p.detach().float().flatten().clone()


def main(model_dir: str, out: str, stage: int, mode: str, C: float, dtype: str = "float32"):
    import deepspeed

    from privlm.dp.ghost import prepare_full_dp
    from privlm.dp.plan import fixed_plan
    from privlm.dp.step import DPStep
    from privlm.models import load_model
    from privlm.training import TrainSpec, barrier, ds_config, init_distributed, release_shm_buffers
    from test_clipping import batch, lora_model

    rank, world = init_distributed()
    if mode == "lora":
        model = lora_model(model_dir)
    else:
        model = load_model(model_dir, dtype="float32")
        prepare_full_dp(model)
    model = model.to(getattr(torch, dtype))
    params = [p for p in model.parameters() if p.requires_grad]
    spec = TrainSpec(zero_stage=stage, micro_batch_size=4, grad_clip=0.0, dtype=dtype, dp_step=True)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, optimizer=torch.optim.SGD(params, lr=1.0),
                                      config=ds_config(spec, world))
    step = DPStep(engine, fixed_plan(noise_multiplier=0.0, max_grad_norm=C, dataset_size=8), 3, rank=rank,
                  world=world)
    names = {id(p): n for n, p in engine.module.named_parameters()}
    ids, mask, labels = batch(b=8, seed=5)
    mine = list(range(rank, 8, world))  # the 8 examples split over the ranks
    mbs = [{"input_ids": ids[mine[i:i + 4]], "attention_mask": mask[mine[i:i + 4]], "labels": labels[mine[i:i + 4]]}
           for i in range(0, len(mine), 4)]
    updates = {}
    for kind, plan in (("clipped", step.plan), ("noise", fixed_plan(noise_multiplier=1e4, max_grad_norm=1e-4,
                                                                     dataset_size=8))):
        step.plan = plan  # the second step: noise of std 1 swamps a clipped sum of norm <= 8e-4
        before = [full(p) for p in step.params]
        step(mbs)
        updates[kind] = {names[id(p)]: b - full(p) for p, b in zip(step.params, before)}
    if rank == 0:
        torch.save(updates, out)
    barrier()
    release_shm_buffers()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # the deepspeed launcher adds it
    main(args[0], args[1], int(args[2]), args[3], float(args[4]), *args[5:])
