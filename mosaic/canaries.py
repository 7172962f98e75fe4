"""Sample reference canaries (members and non-members, different seeds) from a model with an empty prompt.

    python -m mosaic canaries --config configs/mosaic/demo_canaries.yml
    python -m mosaic canaries --model meta-llama/Llama-2-7b-hf --target_tokenizer EleutherAI/gpt-neo-1.3B \
        --length 100 --num_members 100 --num_nonmembers 100 --temperature 1.0 --output data/canaries.json

Output JSON: {"model", "target_tokenizer", "length", ..., "members": [{"id", "text", "token_ids"}], "nonmembers": [...]}
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from privlm import config as C
from privlm import models
from privlm.errors import UserError, cli
from privlm.io import atomic_write_json, refuse_existing
from privlm.mosaic import canaries


@dataclass
class CanaryConfig:
    model: str = C.field("default", aliases=("--model_name",), help="model that writes the canaries")
    target_tokenizer: str | None = C.field(None, help="tokenizer of the model to be trained (default: --model's)")
    length: int = C.field(100, aliases=("--seq_len",), help="canary length L in target tokens")
    num_members: int = C.field(100)
    num_nonmembers: int = C.field(100)
    member_seed: int = C.field(42)
    nonmember_seed: int = C.field(420)
    temperature: float = C.field(1.0, aliases=("--temp",))
    batch_size: int = C.field(50)
    max_jaccard: float = C.field(0.2, help="reject a sample sharing more of its token set with an accepted one")
    extra_tokens: int = C.field(25, help="tokens sampled beyond L (re-tokenization may need them)")
    dtype: str = C.field("auto", choices=["auto", "float32", "bfloat16", "float16"])
    output: str = C.field("results/mosaic/canaries.json", hash=False)
    overwrite: bool = C.field(False, hash=False)

    def validate(self):
        p = [f"{k}: must be >= 1" for k in ("length", "num_members", "num_nonmembers", "batch_size")
             if getattr(self, k) < 1]
        if self.temperature <= 0:
            p.append("temperature: must be > 0")
        if not 0 <= self.max_jaccard <= 1:
            p.append("max_jaccard: must be in [0, 1]")
        return p


@cli
def main(argv=None) -> dict:
    cfg = C.parse(CanaryConfig, argv, __doc__)
    refuse_existing(cfg.output, cfg.overwrite)
    tok = models.load_tokenizer(cfg.model)
    target = models.load_tokenizer(cfg.target_tokenizer) if cfg.target_tokenizer else tok
    model = models.load_model(cfg.model, dtype=cfg.dtype)
    context = getattr(model.config, "max_position_embeddings", None)
    if context and cfg.length + cfg.extra_tokens + 1 > context:
        raise UserError(f"length: {cfg.length} tokens (+{cfg.extra_tokens} extra) is longer than the model "
                        f"context of {context} tokens")
    from tqdm.auto import tqdm

    out = {**C.to_dict(cfg), "target_tokenizer": cfg.target_tokenizer or cfg.model}  # the tokenizer actually used
    avoid: list[set] = []
    for name, n, seed in (("members", cfg.num_members, cfg.member_seed),
                          ("nonmembers", cfg.num_nonmembers, cfg.nonmember_seed)):
        with tqdm(total=n, desc=name, dynamic_ncols=True) as bar:
            got, rejected = canaries.sample(model, tok, target, n, cfg.length, cfg.temperature, seed,
                                            cfg.batch_size, cfg.max_jaccard, avoid, cfg.extra_tokens,
                                            progress=bar.update)
        avoid += [set(c["token_ids"]) for c in got]
        out[name] = got
        out[f"{name}_rejected"] = rejected
        print(f"[mosaic] {name}: {n} canaries of {cfg.length} tokens (rejected: {rejected})")
    atomic_write_json(cfg.output, out)
    print(f"[mosaic] wrote {cfg.output}\n  e.g. {out['members'][0]['text'][:100]!r}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
