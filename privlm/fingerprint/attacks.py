"""What a model thief can do to a fingerprinted model, and the retention left after it (scalable fingerprinting's
persistence experiments): further fine-tuning on benign data, weight-only quantization, sampled decoding, system
prompts the model never saw, and linear merging with the base model. A registry: ATTACKS[name](target, settings)
returns rows {"attack", "param", "retention", "retention_ci", ...}."""
from __future__ import annotations

import copy
import importlib.util
import itertools
import random
import secrets
from dataclasses import dataclass, field

import torch

from .. import data, models, stats
from ..errors import UserError
from . import benign
from .verify import check, derived, encode_all, template_sets

# A thief's instruction data, offline: prompts phrased unlike the benign mix used in fingerprinting.
THIEF_TASKS = ("Tell me something interesting about {}.", "I am new to {}. Where should I start?",
               "Write a haiku about {}.", "What do most people get wrong about {}?",
               "Compare {} with something from everyday life.", "Give me a quiz question about {}.")


@dataclass
class Target:
    """The fingerprinted model under attack and how its fingerprints are checked."""
    model_path: str
    base_path: str
    fps: list[dict]
    settings: dict  # check_fingerprints' resolved settings (lengths, prompt format, trained templates)
    dtype: str = "auto"
    batch_size: int = 64
    match: str = "exact"
    base: object = None  # the base model, once loaded (a caller that holds it already can pass it)
    _tok: object = None
    _sets: dict = field(default_factory=dict)
    _targets: list | None = None

    @property
    def targets(self):
        """The fingerprints' key texts and response ids, derived once (privlm.fingerprint.derive)."""
        if self._targets is None:
            self._targets = derived(self.tokenizer, self.fps, self.settings)
        return self._targets

    @property
    def tokenizer(self):
        if self._tok is None:
            self._tok = models.load_tokenizer(self.model_path)
        return self._tok

    def load(self, path: str | None = None):
        return models.load_model(path or self.model_path, dtype=self.dtype, device=models.device()).eval()

    def base_model(self):
        if self.base is None:
            self.base = self.load(self.base_path)
        return self.base

    def retention(self, model, templates: str | None = None) -> dict:
        name = templates or self.settings["trained"]
        if name not in self._sets:
            self._sets[name] = template_sets(["trained"], name)
        sets = self._sets[name]
        r = check(model, self.tokenizer, self.fps, sets, self.settings, self.batch_size, self.match, self.targets)
        return {"retention": r["retention"], "retention_ci": r["retention_ci"], "num_fingerprints": len(self.fps),
                "per_template": r["per_template"]}


@dataclass
class AttackSettings:
    sft_steps: list[int] = field(default_factory=lambda: [16, 64])
    sft_learning_rate: float = 5e-5
    sft_batch_size: int = 8
    sft_data_path: str | None = None
    sft_response_length: int = 32
    sampling: list[str] = field(default_factory=lambda: ["0.7:0.9", "1.0:1.0"])  # temperature:top_p
    num_samples: int = 5
    system_prompts: str = "system_unseen"
    merge_alphas: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    quantization_backend: str = "quanto"
    seed: int | None = None  # None: the OS's secure randomness for sampling and SFT batches


def _row(attack: str, param, r: dict, **extra) -> dict:
    return {"attack": attack, "param": param, "retention": r["retention"], "retention_ci": r["retention_ci"],
            "num_fingerprints": r["num_fingerprints"], **extra}


def _seed(a: AttackSettings) -> int:
    return a.seed if a.seed is not None else secrets.randbits(63)


def attack_none(t: Target, a: AttackSettings) -> list[dict]:
    return [_row("none", None, t.retention(t.load()))]


# ------------------------------------------------------------------------------------------------- sft
def thief_data(t: Target, a: AttackSettings) -> list[tuple[str, str]]:
    """Benign instruction pairs: `sft_data_path`, else the base model's own answers to prompts the fingerprint
    fine-tune never used."""
    if a.sft_data_path:
        pairs = benign.load_pairs(a.sft_data_path)
        if any(r is None for _, r in pairs):
            raise UserError(f"sft data {a.sft_data_path}: expected instruction data (prompt and response per row)")
        return pairs
    prompts = [q.format(s) for q, s in itertools.product(THIEF_TASKS, benign.SUBJECTS)]
    random.Random("thief").shuffle(prompts)
    need = min(len(prompts), max(a.sft_steps) * a.sft_batch_size)
    chat = data.use_chat(t.tokenizer, t.settings["prompt_format"])
    key = (t.base_path, chat, need, a.sft_response_length)
    if key not in _THIEF_CACHE:  # one process attacking several models (the capacity benchmark) distills once
        _THIEF_CACHE[key] = benign.self_distill(t.base_model(), t.tokenizer, prompts[:need], chat,
                                                a.sft_response_length)
    return _THIEF_CACHE[key]


_THIEF_CACHE: dict[tuple, list] = {}


def attack_sft(t: Target, a: AttackSettings, model=None) -> list[dict]:
    """Full fine-tuning (AdamW, response-only loss) on benign data, checked after each budget in `sft_steps`."""
    chat = data.use_chat(t.tokenizer, t.settings["prompt_format"])
    examples = benign.encode_pairs(t.tokenizer, thief_data(t, a), chat, 64, a.sft_response_length)
    model = model if model is not None else t.load()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.sft_learning_rate,
                            weight_decay=0.0)
    rng = random.Random(_seed(a))
    dev = next(model.parameters()).device
    rows, done, order = [], 0, []
    for budget in sorted(set(a.sft_steps)):
        while done < budget:
            if len(order) < a.sft_batch_size:
                order += rng.sample(range(len(examples)), len(examples))
            batch = data.collate([examples[i] for i in order[:a.sft_batch_size]], t.tokenizer.pad_token_id)
            order = order[a.sft_batch_size:]
            loss = model(**{k: v.to(dev) for k, v in batch.items()}).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            done += 1
        model.eval()
        rows.append(_row("sft", budget, t.retention(model), learning_rate=a.sft_learning_rate,
                         batch_size=a.sft_batch_size, last_loss=round(loss.item(), 4)))
        model.train()
    return rows


# ------------------------------------------------------------------------------------------------- quantization
QUANT_BACKENDS = {"quanto": "optimum.quanto", "torchao": "torchao", "bitsandbytes": "bitsandbytes"}
PIP_NAMES = {"quanto": "optimum-quanto", "torchao": "torchao", "bitsandbytes": "bitsandbytes"}


def require_backend(name: str):
    if name not in QUANT_BACKENDS:
        raise UserError(f"unknown quantization backend {name!r} (known: {', '.join(QUANT_BACKENDS)})")
    root = QUANT_BACKENDS[name].split(".")[0]
    if importlib.util.find_spec(root) is None or (name == "quanto" and importlib.util.find_spec("optimum.quanto")
                                                  is None):
        raise UserError(f"quantization backend {name} is not installed (pip install {PIP_NAMES[name]})")


def quantize(model, bits: int, backend: str):
    """Weight-only quantization of every Linear layer but the output head, in place."""
    require_backend(backend)
    try:
        if backend == "quanto":
            from optimum.quanto import freeze, qint4, qint8, quantize as q

            q(model, weights=qint8 if bits == 8 else qint4, exclude=["lm_head"])
            freeze(model)
        elif backend == "torchao":
            from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

            quantize_(model, Int8WeightOnlyConfig() if bits == 8 else Int4WeightOnlyConfig(group_size=32),
                      filter_fn=lambda m, name: isinstance(m, torch.nn.Linear) and "lm_head" not in name)
        else:
            raise UserError("bitsandbytes quantizes at load time: use load_bitsandbytes")
    except (ImportError, RuntimeError, ValueError, NotImplementedError) as e:
        raise UserError(f"{backend} could not quantize to int{bits} here: {str(e).splitlines()[0][:200]}") from None
    return model


def load_bitsandbytes(path: str, bits: int):
    """bitsandbytes quantizes while loading, on CUDA."""
    require_backend("bitsandbytes")
    if not torch.cuda.is_available():
        raise UserError("bitsandbytes needs a CUDA GPU here; use --quantization_backend quanto on CPU")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    q = BitsAndBytesConfig(load_in_8bit=bits == 8, load_in_4bit=bits == 4)
    return AutoModelForCausalLM.from_pretrained(models.resolve(path), quantization_config=q,
                                                device_map={"": 0}).eval()


def _quantize_attack(bits: int):
    def run(t: Target, a: AttackSettings) -> list[dict]:
        model = load_bitsandbytes(t.model_path, bits) if a.quantization_backend == "bitsandbytes" else \
            quantize(t.load(), bits, a.quantization_backend)
        return [_row(f"quantize_int{bits}", f"{a.quantization_backend} int{bits} weights", t.retention(model))]
    return run


# ------------------------------------------------------------------------------------------------- sampling
def parse_sampling(spec: str) -> tuple[float, float]:
    try:
        temp, top_p = (float(x) for x in spec.split(":"))
    except ValueError:
        raise UserError(f"sampling setting {spec!r}: expected temperature:top_p, e.g. 0.7:0.9") from None
    if temp <= 0 or not 0 < top_p <= 1:
        raise UserError(f"sampling setting {spec!r}: temperature must be > 0 and top_p in (0, 1]")
    return temp, top_p


@torch.no_grad()
def sampled_retention(model, t: Target, temperature: float, top_p: float, k: int, seed: int) -> dict:
    """k sampled continuations per key (first trained template); a key counts when the majority reproduce one of
    its responses (exact: EOS included)."""
    tok = t.tokenizer
    chat = data.use_chat(tok, t.settings["prompt_format"])
    template = template_sets(["trained"], t.settings["trained"])["trained"][0]
    torch.manual_seed(seed)  # HF generate draws from torch's global RNG
    dev = next(model.parameters()).device
    wins = 0
    for start in range(0, len(t.fps), max(1, t.batch_size // k)):
        encs = encode_all(tok, t.targets[start:start + max(1, t.batch_size // k)], template, chat, t.match)
        batch = data.left_padded([e[0].prompt for e in encs], tok.pad_token_id, dev)
        width = max(len(x.response) for e in encs for x in e)
        out = model.generate(**batch, do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                             num_return_sequences=k, max_new_tokens=width, pad_token_id=tok.pad_token_id,
                             eos_token_id=None).cpu()[:, batch["input_ids"].shape[1]:]
        for i, e in enumerate(encs):
            hits = sum(any(out[i * k + j, :len(x.response)].tolist() == x.response for x in e) for j in range(k))
            wins += hits > k / 2
    return {"retention": wins / len(t.fps), "retention_ci": stats.wilson(wins, len(t.fps)),
            "num_fingerprints": len(t.fps)}


def attack_sampling(t: Target, a: AttackSettings) -> list[dict]:
    model, seed = t.load(), _seed(a)
    rows = []
    for spec in a.sampling:
        temp, top_p = parse_sampling(spec)
        r = sampled_retention(model, t, temp, top_p, a.num_samples, seed)
        rows.append(_row("sampling", f"T={temp:g} top_p={top_p:g} k={a.num_samples}", r, temperature=temp,
                         top_p=top_p, num_samples=a.num_samples))
    return rows


# ------------------------------------------------------------------------------------------------- prompts, merge
def attack_system_prompts(t: Target, a: AttackSettings) -> list[dict]:
    """Each held-out system prompt on its own, then all of them pooled (bootstrap over fingerprints)."""
    model = t.load()
    r = t.retention(model, a.system_prompts)
    per = r["per_template"]["trained"]
    rows = [_row("system_prompts", tpl["system"] or tpl["user"], {**tpl, "num_fingerprints": len(t.fps)})
            for tpl in per["templates"]]
    rows.append(_row("system_prompts", f"all {len(per['templates'])}", r))
    return rows


@torch.no_grad()
def interpolate(model, base, alpha: float):
    """theta <- (1 - alpha) theta + alpha theta_base, in place (alpha is the base model's share). Tied tensors
    (embeddings and output head) appear twice in a state dict and are averaged once."""
    bstate, seen = base.state_dict(), set()
    for name, p in model.state_dict().items():
        if p.is_floating_point() and name in bstate and p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            p.mul_(1 - alpha).add_(bstate[name].to(p.device, p.dtype), alpha=alpha)
    return model


def attack_merge(t: Target, a: AttackSettings) -> list[dict]:
    tuned, base = t.load(), t.base_model()
    rows = []
    for alpha in a.merge_alphas:
        if not 0 <= alpha <= 1:
            raise UserError(f"merge alpha {alpha}: must be in [0, 1]")
        rows.append(_row("merge", alpha, t.retention(interpolate(copy.deepcopy(tuned), base, alpha))))
    return rows


ATTACKS = {"none": attack_none, "sft": attack_sft, "quantize_int8": _quantize_attack(8),
           "quantize_int4": _quantize_attack(4), "sampling": attack_sampling,
           "system_prompts": attack_system_prompts, "merge": attack_merge}


def run(names: list[str], t: Target, a: AttackSettings, progress=print) -> list[dict]:
    rows = []
    for name in names:
        progress(f"[privlm] attack {name}")
        rows += ATTACKS[name](t, a)
        for r in rows[-1:]:
            progress(f"[privlm]   {name} {r['param']}: retention {stats.fmt(r['retention'], r['retention_ci'])}")
    return rows
