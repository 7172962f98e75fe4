"""Fuzzy duplicates of member canaries.

    python -m mosaic variations --canaries results/mosaic/canaries.json --candidate-gen-strategy mlm \
        --candidate_model FacebookAI/roberta-base --topk 10 --num-injection-points 10 --no-replace-same-indices \
        --num-variations 9 --output results/mosaic/variations_mlm_R10.json
    python -m mosaic variations --candidate-gen-strategy shuffle --ngram 5 --kendall_tau 0.3 ...
    python -m mosaic variations --candidate-gen-strategy insertion --ngram 5 --insert_tokens 1 ...
    python -m mosaic variations --candidate-gen-strategy insertion --ngram 5 --insert_tokens 1 --scrambled ...
    python -m mosaic variations --candidate-gen-strategy paraphrase --candidate_model default ...

Strategies: mlm (top-k of a masked LM, or of a causal LM given the prefix: `default` works offline), mlm_random,
random, insertion (`--scrambled`: the paper's baseline, the n-grams in a random order), shuffle (random swaps of
any two blocks, the paper's; `--shuffle_method adjacent` for neighbouring swaps), paraphrase. `--candidate_model
auto` (the default) takes the paper's masked LM, FacebookAI/roberta-base, when it is installed (in the Hugging Face
cache) and otherwise the default causal model; the output's `candidate_model_kind` says which (masked_lm |
causal). Output JSON: {"strategy", parameters..., "canaries": [{"id", "original",
"variations": [{"text", "token_ids", "replaced_indices" | "inserted" | "block_order"/"kendall_tau"}]}]}.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from privlm import config as C
from privlm import models
from privlm.errors import UserError, cli
from privlm.io import atomic_write_json, refuse_existing
from privlm.mosaic import canaries as canary_lib
from privlm.mosaic import variations as V


@dataclass
class VariationsConfig:
    canaries: str = C.field("results/mosaic/canaries.json", help="output of `python -m mosaic canaries`")
    candidate_gen_strategy: str = C.field("mlm", aliases=("--candidate-gen-strategy",), choices=sorted(V.STRATEGIES))
    num_variations: int = C.field(9, aliases=("--num-variations",))
    num_injection_points: int = C.field(1, aliases=("--num-injection-points",), help="R: tokens replaced")
    no_replace_same_indices: bool = C.field(False, aliases=("--no-replace-same-indices",),
                                            help="each variation replaces different positions")
    topk: int = C.field(10, help="mlm: candidates per position")
    num_random_candidates: int = C.field(50, help="mlm_random / random: candidates per position")
    candidate_model: str = C.field("auto", aliases=("--mlm_model",),
                                   help="mlm / mlm_random / paraphrase model: a masked LM or a causal (instruct) LM; "
                                        "auto: roberta-base when installed, else the default causal model")
    target_tokenizer: str | None = C.field(None, help="default: the canaries file's target tokenizer")
    insert_tokens: int = C.field(1, help="insertion: X random tokens between consecutive n-grams")
    ngram: int = C.field(1, help="insertion / shuffle: n-gram (block) size")
    kendall_tau: float = C.field(0.5, help="shuffle: target normalized Kendall-tau distance")
    tau_tolerance: float = C.field(0.05)
    shuffle_method: str = C.field("swaps", choices=["swaps", "adjacent"],
                                  help="shuffle: random swaps of any two blocks (the paper) or of neighbours")
    scrambled: bool = C.field(False, help="insertion: the scrambled baseline (n-grams in a random order)")
    temperature: float = C.field(0.6, help="paraphrase sampling")
    top_p: float = C.field(0.9, help="paraphrase sampling")
    first: int | None = C.field(None, help="only the first N member canaries")
    seed: int = C.field(0)
    output: str = C.field("results/mosaic/variations.json", hash=False)
    overwrite: bool = C.field(False, hash=False)

    def validate(self):
        p = [f"{k}: must be >= 1" for k in ("num_variations", "num_injection_points", "topk",
                                           "num_random_candidates", "insert_tokens", "ngram") if getattr(self, k) < 1]
        if not 0 <= self.kendall_tau <= 1:
            p.append("kendall_tau: must be in [0, 1]")
        return p


@cli
def main(argv=None) -> dict:
    cfg = C.parse(VariationsConfig, argv, __doc__)
    refuse_existing(cfg.output, cfg.overwrite)
    data = canary_lib.load(cfg.canaries)
    members = data["members"][:cfg.first] if cfg.first else data["members"]
    if not members:
        raise UserError(f"{cfg.canaries}: no member canaries")
    target = models.load_tokenizer(cfg.target_tokenizer or data.get("target_tokenizer") or "default")
    ctx = V.Context(tokenizer=target, cand_tokenizer=target)
    kind = None
    if cfg.candidate_gen_strategy in V.NEEDS_MODEL:
        name = V.resolve_candidate_model(cfg.candidate_model, cfg.candidate_gen_strategy)
        ctx.cand_tokenizer = models.load_tokenizer(name)
        if ctx.cand_tokenizer.get_vocab() == target.get_vocab():
            ctx.cand_tokenizer = target  # same tokenizer: candidates need no re-encoding
        ctx.model = models.load_model(name, masked_lm=cfg.candidate_gen_strategy != "paraphrase")
        kind = "masked_lm" if V.is_masked_lm(ctx.model) else "causal"
        print(f"[mosaic] candidates from {name} ({kind}"
              + (", the offline fallback: no masked LM installed)" if cfg.candidate_model == "auto"
                 and kind == "causal" else ")"))
    spec = V.VarSpec(num_variations=cfg.num_variations, num_injection_points=cfg.num_injection_points,
                     replace_same_indices=not cfg.no_replace_same_indices, topk=cfg.topk,
                     num_random_candidates=cfg.num_random_candidates, insert_tokens=cfg.insert_tokens,
                     ngram=cfg.ngram, kendall_tau=cfg.kendall_tau, tau_tolerance=cfg.tau_tolerance,
                     shuffle_method=cfg.shuffle_method, scrambled=cfg.scrambled,
                     temperature=cfg.temperature, top_p=cfg.top_p)
    from tqdm.auto import tqdm

    with tqdm(total=len(members), desc=cfg.candidate_gen_strategy, dynamic_ncols=True) as bar:
        out = V.make(members, cfg.candidate_gen_strategy, spec, ctx, cfg.seed, progress=bar.update)
    result = {"strategy": cfg.candidate_gen_strategy, "canaries_file": cfg.canaries, **C.to_dict(cfg),
              "candidate_model_kind": kind, "canaries": out}
    atomic_write_json(cfg.output, result)
    ex = out[0]["variations"][0]["text"]
    print(f"[mosaic] wrote {len(out)} x {cfg.num_variations} {cfg.candidate_gen_strategy} variations to {cfg.output}"
          f"\n  original:  {out[0]['original'][:90]!r}\n  variation: {ex[:90]!r}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
