"""Private fine-tuning: undefended or DP-SGD (per-example clipping, Gaussian noise, Poisson sampling), with LoRA,
under DeepSpeed. The same training loop as fingerprinting.

    deepspeed --num_gpus 4 dp_finetune.py --config configs/dp/echr_llama2_dp8.yml [key=value ...]
    python dp_finetune.py --config configs/dp/demo_dp8.yml                               # one process
    python dp_finetune.py --privacy_report --noise_multiplier 1.0 --sample_rate 0.01 --steps 1000 --delta 1e-5
    python dp_finetune.py --privacy_report --target_epsilon 8 --sample_rate 0.01 --steps 1000 --delta 1e-5

Privacy: target_epsilon > 0 turns DP on; sigma is calibrated from (epsilon, delta, q, steps) by Opacus's PRV
accountant (RDP with accountant=rdp) unless noise_multiplier is given. q = expected logical batch / N. Every
privacy setting is checked (privlm.dp.make_private) before the data is scrubbed or a model is loaded.
"""
from __future__ import annotations

import json
import sys

from privlm import config as C
from privlm.dp.finetune import DPFinetuneConfig, privacy_report, report_args, run
from privlm.errors import cli


@cli
def main(argv: list[str] | None = None) -> dict:
    cfg, extra = C.parse(DPFinetuneConfig, argv, __doc__, extra_args=report_args)
    if extra.privacy_report:
        out = privacy_report(cfg, extra.sample_rate, extra.steps)
        print(json.dumps(out))
        return out

    return run(cfg)


if __name__ == "__main__":
    main(sys.argv[1:])
