"""Launched by test_dp_finetune.py with 1 or 2 ranks: one DP step with huge noise, SGD lr=1; rank 0 saves the update."""
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1]),
                str(Path(__file__).resolve().parent)]


def main(model_dir: str, out: str):
    import deepspeed

    from privlm.dp.plan import fixed_plan
    from privlm.dp.step import DPStep
    from privlm.training import TrainSpec, ds_config, init_distributed
    from test_clipping import batch, lora_model

    rank, world = init_distributed()
    model = lora_model(model_dir)
    params = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, optimizer=torch.optim.SGD(params, lr=1.0),
                                      config=ds_config(TrainSpec(zero_stage=2, micro_batch_size=4, grad_clip=0.0),
                                                       world))
    before = torch.cat([p.detach().flatten().clone() for p in params])
    ids, mask, labels = batch(b=8, seed=5)
    mine = list(range(rank, 8, world))  # the 8 examples split over the ranks
    mbs = [{"input_ids": ids[mine[i:i + 4]], "attention_mask": mask[mine[i:i + 4]], "labels": labels[mine[i:i + 4]]}
           for i in range(0, len(mine), 4)]
    DPStep(engine, fixed_plan(noise_multiplier=1e4, max_grad_norm=1e-4, dataset_size=8), 3, rank=rank,
           world=world)(mbs)
    after = torch.cat([p.detach().flatten().clone() for p in params])
    if rank == 0:
        torch.save(before - after, out)
    from privlm.training import barrier, release_shm_buffers

    barrier()
    release_shm_buffers()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # the deepspeed launcher adds it
    main(args[0], args[1])
