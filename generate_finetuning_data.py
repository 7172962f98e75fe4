"""Generate fingerprints: a JSON list of {"key", "response"} with unique keys.

    python generate_finetuning_data.py --num_fingerprints 32 --key_length 16 --response_length 8 \
        --key_response_strategy english --output_file_path generated_data/demo_fingerprints.json
    python generate_finetuning_data.py --key_response_strategy inverse_nucleus --response_length 1 \
        --model_used_for_key_generation meta-llama/Meta-Llama-3.1-8B-Instruct --nucleus_p 0.8 --nucleus_k 3

Strategies: english (the model writes sentences starting with a random word), random_word, inverse_nucleus
(perinucleus: the response starts with a token drawn from just outside the top-p nucleus, then greedy tokens),
random_response (english key, one random word). --keys_file supplies custom keys (JSON list of strings).

--commitment_file C.json publishes a commitment to the whole set before any model is trained (SHA-256 over the set,
the generation settings and a secret salt, which goes owner-only to C.salt.json); check_fingerprints.py --commitment
C.json later refuses to report on any other set. --secret_seed_file S derives the generation's seed and the salt
from one secret (HMAC-SHA256; S is created from the OS's secure randomness when missing) instead of --seed.
"""
from __future__ import annotations

import random
import sys
from dataclasses import dataclass

import torch

from privlm import config as C
from privlm import fingerprint
from privlm.errors import UserError, cli
from privlm.fingerprint import commit
from privlm.io import atomic_write_json, refuse_existing


@dataclass
class GenerateConfig:
    key_length: int = C.field(32, help="key length in tokens")
    response_length: int = C.field(32, help="response length in tokens (inverse_nucleus: 1 sampled + greedy rest)")
    num_fingerprints: int = C.field(8192, aliases=("--num_backdoors",))
    batch_size: int = C.field(128)
    temperature: float = C.field(0.5, help="sampling temperature of the english strategy")
    seed: int = C.field(42)
    key_response_strategy: str = C.field("english", choices=sorted(fingerprint.STRATEGIES) + sorted(fingerprint.ALIASES))
    model_used_for_key_generation: str = C.field("default", aliases=("--model_used",))
    inverse_nucleus_model: str | None = C.field(None, aliases=("--perinucleus_model",),
                                                help="model whose distribution defines the nucleus (default: the key "
                                                     "generation model; scalable fingerprinting: --perinucleus_model)")
    random_word_generation: bool = C.field(False, help="random words for keys (and responses with english)")
    first_token_strategy: str = C.field("word", choices=["word", "tokenizer", "none", ""],
                                        help="first word of english text: from a word list, the tokenizer, or none "
                                             "(OML's empty string)")
    keys_file: str | None = C.field(None, aliases=("--keys_path",), help="JSON list of custom keys")
    nucleus_p: float = C.field(0.8, aliases=("--nucleus_t",))
    nucleus_k: int = C.field(3)
    num_responses_per_fingerprint: int = C.field(1, help="inverse_nucleus: this many responses per key, with distinct "
                                                         "first tokens (a JSON list in \"response\")")
    prompt_format: str = C.field("raw", choices=["auto", "raw", "chat"],
                                 help="how keys are presented when computing the nucleus; match fine-tuning (raw, as "
                                      "OML prompts)")
    use_chat_template: bool = C.field(False, help="scalable fingerprinting's name for --prompt_format chat")
    dtype: str = C.field("auto", choices=["auto", "float32", "bfloat16", "float16"])
    output_file_path: str = C.field("generated_data/output_fingerprints.json")
    overwrite: bool = C.field(False, help="replace an existing output file")
    commitment_file: str | None = C.field(None, help="write a public commitment to the set here (its salt goes, "
                                                     "owner-only, to <name>.salt.json)")
    secret_seed_file: str | None = C.field(None, help="derive the seed and the commitment's salt from this secret "
                                                      "(HMAC-SHA256; created when missing) instead of --seed")

    def validate(self):
        p = [f"{k}: must be >= 1" for k in ("key_length", "response_length", "num_fingerprints", "batch_size",
                                           "nucleus_k", "num_responses_per_fingerprint") if getattr(self, k) < 1]
        if self.temperature <= 0:
            p.append("temperature: must be > 0")
        if not 0 < self.nucleus_p < 1:
            p.append("nucleus_p: must be in (0, 1)")
        return p


@cli
def main(argv: list[str] | None = None) -> list[dict]:
    cfg = C.parse(GenerateConfig, argv, __doc__)
    refuse_existing(cfg.output_file_path, cfg.overwrite)
    if cfg.commitment_file:
        refuse_existing(cfg.commitment_file, cfg.overwrite)
    settings = {k: getattr(cfg, k) for k in ("key_response_strategy", "model_used_for_key_generation",
                                             "inverse_nucleus_model", "key_length", "response_length",
                                             "num_fingerprints", "temperature", "first_token_strategy", "nucleus_p",
                                             "nucleus_k", "num_responses_per_fingerprint", "prompt_format",
                                             "use_chat_template", "random_word_generation", "keys_file")}
    secret = commit.load_or_create_secret(cfg.secret_seed_file) if cfg.secret_seed_file else None
    if secret is not None:
        cfg.seed = commit.derived_seed(secret, settings)
        settings["seed"] = "hmac-sha256(secret, settings)"
    else:
        settings["seed"] = cfg.seed
    strategy = fingerprint.ALIASES.get(cfg.key_response_strategy, cfg.key_response_strategy)
    if cfg.num_responses_per_fingerprint > 1 and strategy != "inverse_nucleus":
        raise UserError("num_responses_per_fingerprint > 1 needs --key_response_strategy inverse_nucleus (perinucleus)")
    if cfg.random_word_generation and strategy == "english":
        strategy = "random_word"  # seed 000's flag for the random-word strategy
    custom = fingerprint.load_keys(cfg.keys_file) if cfg.keys_file else None
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    ctx = fingerprint.GenContext(
        model_path=cfg.model_used_for_key_generation, key_length=cfg.key_length,
        response_length=cfg.response_length, batch_size=cfg.batch_size, temperature=cfg.temperature,
        seed=cfg.seed, first_token_strategy=cfg.first_token_strategy or "none", nucleus_p=cfg.nucleus_p,
        nucleus_k=cfg.nucleus_k, chat="chat" if cfg.use_chat_template else cfg.prompt_format,
        inverse_nucleus_model=cfg.inverse_nucleus_model, random_word_keys=cfg.random_word_generation, dtype=cfg.dtype,
        rng=random.Random(cfg.seed), num_responses=cfg.num_responses_per_fingerprint)
    fps = fingerprint.generate(ctx, strategy, cfg.num_fingerprints, custom)
    atomic_write_json(cfg.output_file_path, fps, private=True)  # the keys are the owner's secret
    print(f"[privlm] wrote {len(fps)} {strategy} fingerprints to {cfg.output_file_path}")
    if cfg.commitment_file:
        c = commit.write(cfg.commitment_file, fps, settings,
                         salt=commit.derived_salt(secret) if secret is not None else None, secret=secret)
        print(f"[privlm] commitment sha256 {c['sha256']} written to {cfg.commitment_file} (publish it; keep "
              f"{commit.salt_path(cfg.commitment_file)} and the fingerprints secret)")
    for fp in fps[:3]:
        print(f"  key: {fp['key'][:70]!r}\n  response: {fp['response'][:70]!r}")
    return fps


if __name__ == "__main__":
    main(sys.argv[1:])
