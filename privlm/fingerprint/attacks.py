"""What a model thief can do to a fingerprinted model, and the retention left after it (scalable fingerprinting's
persistence experiments, and attacks that know the scheme): further full or LoRA fine-tuning on benign data,
weight-only quantization, sampled decoding, system prompts the model never saw, merging (linear with the base, TIES
and task arithmetic with another fine-tune), input filtering by prompt perplexity and suppression of abnormally
confident first tokens (privlm.fingerprint.adaptive). A registry: ATTACKS[name](target, settings) returns rows
{"attack", "param", "retention", "retention_ci", "matched", ...}; `run` adds to each the ownership p-value of what
is left (against the innocent models in `Target.evidences`) and `thief_ppl_ratio`, the held-out perplexity of the
attacked model over the unattacked one (paired bootstrap CI; 1.0 where the weights are left as they are)."""
from __future__ import annotations

import copy
import importlib.util
import itertools
import random
import secrets
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import data, lora, models, stats
from ..errors import UserError
from ..eval import heldout
from . import adaptive, benign, ownership
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
    evidences: list | None = None  # innocent models' behaviour on the keys (ownership.collect); None: no p-values
    heldout_tokens: int = 8192  # held-out English scored for the thief's utility cost
    _tok: object = None
    _sets: dict = field(default_factory=dict)
    _targets: list | None = None
    _wins: list | None = None
    _ref: dict | None = None
    _other: object = None  # the thief's own fine-tune of the base model, once made (merge_ties, merge_task_...)

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
                "per_template": r["per_template"], "matches": [f["match"] for f in r["fingerprints"]]}

    def served(self) -> tuple[data.Template, bool]:
        """How a key is put to the model: the first trained template, and whether through the chat template."""
        return (template_sets(["trained"], self.settings["trained"])["trained"][0],
                data.use_chat(self.tokenizer, self.settings["prompt_format"]))

    def encodings(self) -> list[list[data.Encoded]]:
        """The keys as served (first trained template) with their responses."""
        template, chat = self.served()
        return encode_all(self.tokenizer, self.targets, template, chat, self.match)

    def cost(self, model) -> dict:
        """The thief's utility cost of an attack that changes the weights: held-out perplexity of `model` over the
        unattacked fingerprinted model's, on the same windows (paired bootstrap over windows)."""
        if self._wins is None:
            self._wins = heldout.windows(self.tokenizer, heldout.HELDOUT_ENGLISH.read_text(),
                                         max_tokens=self.heldout_tokens)
            self._ref = heldout.score(self.load(), self._wins)
        s = heldout.summary(heldout.score(model, self._wins), self._ref)
        return {"thief_ppl_ratio": s["heldout_ppl_ratio"], "thief_ppl_ratio_ci": s["heldout_ppl_ratio_ci"]}

    def log10_p(self, matched: int, queries: int = 1) -> float | None:
        """log10 ownership p-value of `matched` keys; `queries` > 1: a key counts when any of that many independent
        samples matches, so an innocent model's per-key chance p becomes 1 - (1 - p)^queries."""
        if not self.evidences:
            return None
        p = ownership.null_probabilities(self.evidences, len(self.fps))
        if queries > 1:
            p = -np.expm1(queries * np.log1p(-np.minimum(p, 1.0 - 1e-16)))
        return ownership.log10_tail(p, matched)


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
    sampling_rule: str = "best_of_n"  # or "majority": a key counts when any (most) of num_samples samples match
    merge_alphas: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    merge_model_path: str | None = None  # the other model of TIES / task arithmetic (default: the thief's SFT model)
    ties_density: float = 0.5
    lora_r: int = 16
    lora_alpha: int = 32
    lora_learning_rate: float = 2e-4
    filter_score: str = "relative"  # output_suppression: relative to the reference model, or plain confidence
    quantization_backend: str = "quanto"
    seed: int | None = None  # None: the OS's secure randomness for sampling and SFT batches


SAMPLING_RULES = ("best_of_n", "majority")


def _row(attack: str, param, r: dict, cost: dict | None = None, **extra) -> dict:
    """One report row. `cost`: the thief's utility cost (Target.cost); None: the weights are unchanged (1.0)."""
    cost = cost or {"thief_ppl_ratio": 1.0, "thief_ppl_ratio_ci": [1.0, 1.0]}
    matched = r.get("matched", sum(r["matches"]) if "matches" in r else round(r["retention"] * r["num_fingerprints"]))
    return {"attack": attack, "param": param, "retention": r["retention"], "retention_ci": r["retention_ci"],
            "num_fingerprints": r["num_fingerprints"], "matched": int(matched), **cost, **extra}


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


def benign_sft(t: Target, a: AttackSettings, model, lr: float, budgets: list[int]):
    """AdamW with a response-only loss on the thief's benign data; yields (steps done, last loss) at each budget,
    the model in eval mode while the caller looks at it."""
    chat = data.use_chat(t.tokenizer, t.settings["prompt_format"])
    examples = benign.encode_pairs(t.tokenizer, thief_data(t, a), chat, 64, a.sft_response_length)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    rng = random.Random(_seed(a))
    dev = next(model.parameters()).device
    done, order = 0, []
    for budget in sorted(set(budgets)):
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
        yield budget, round(loss.item(), 4)
        model.train()
    model.eval()


def attack_sft(t: Target, a: AttackSettings, model=None) -> list[dict]:
    """Full fine-tuning (AdamW, response-only loss) on benign data, checked after each budget in `sft_steps`."""
    model = model if model is not None else t.load()
    return [_row("sft", steps, t.retention(model), t.cost(model), learning_rate=a.sft_learning_rate,
                 batch_size=a.sft_batch_size, last_loss=loss)
            for steps, loss in benign_sft(t, a, model, a.sft_learning_rate, a.sft_steps)]


def attack_lora_sft(t: Target, a: AttackSettings) -> list[dict]:
    """LoRA (PEFT, every linear layer, rank `lora_r`) fine-tuning on the same benign data and budgets: the cheap
    fine-tune a thief would run. The adapter is checked as served, unmerged (merging gives the same function)."""
    model = lora.wrap(a.lora_r, a.lora_alpha)(t.load())
    return [_row("lora_sft", steps, t.retention(model), t.cost(model), learning_rate=a.lora_learning_rate,
                 batch_size=a.sft_batch_size, lora_r=a.lora_r, last_loss=loss)
            for steps, loss in benign_sft(t, a, model, a.lora_learning_rate, a.sft_steps)]


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
        return [_row(f"quantize_int{bits}", f"{a.quantization_backend} int{bits} weights", t.retention(model),
                     t.cost(model))]
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
def sampled_retention(model, t: Target, temperature: float, top_p: float, k: int, seed: int,
                      rule: str = "majority") -> dict:
    """k sampled continuations per key (first trained template); a key counts when the majority (`majority`) or
    any (`best_of_n`: the owner queries k times) reproduce one of its responses (exact: EOS included)."""
    tok = t.tokenizer
    template, chat = t.served()
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
            wins += hits > k / 2 if rule == "majority" else hits > 0
    return {"retention": wins / len(t.fps), "retention_ci": stats.wilson(wins, len(t.fps)),
            "num_fingerprints": len(t.fps), "matched": wins}


def attack_sampling(t: Target, a: AttackSettings) -> list[dict]:
    model, seed = t.load(), _seed(a)
    rows = []
    for spec in a.sampling:
        temp, top_p = parse_sampling(spec)
        r = sampled_retention(model, t, temp, top_p, a.num_samples, seed, a.sampling_rule)
        rows.append(_row("sampling", f"T={temp:g} top_p={top_p:g} k={a.num_samples}", r, temperature=temp,
                         top_p=top_p, num_samples=a.num_samples, sampling_rule=a.sampling_rule,
                         queries=a.num_samples if a.sampling_rule == "best_of_n" else 1))
    return rows


# ------------------------------------------------------------------------------------------------- prompts, merge
def attack_system_prompts(t: Target, a: AttackSettings) -> list[dict]:
    """Each held-out system prompt on its own, then all of them pooled (bootstrap over fingerprints)."""
    model = t.load()
    r = t.retention(model, a.system_prompts)
    per = r["per_template"]["trained"]
    rows = [_row("system_prompts", tpl["system"] or tpl["user"], {**tpl, "num_fingerprints": len(t.fps)})
            for tpl in per["templates"]]
    # pooled: mean retention over the system prompts; its p-value is the worst one's (whichever the thief picks)
    worst = min(row["matched"] for row in rows)
    rows.append(_row("system_prompts", f"all {len(per['templates'])}", {**r, "matched": worst}))
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
        merged = interpolate(copy.deepcopy(tuned), base, alpha)
        rows.append(_row("merge", alpha, t.retention(merged), t.cost(merged)))
    return rows


def other_model(t: Target, a: AttackSettings):
    """The model merged with the fingerprinted one: `merge_model_path`, else the thief's own fine-tune of the base
    model on benign data (max(sft_steps) steps), made once."""
    if a.merge_model_path:
        from .ownership import same_tokenizer

        same_tokenizer(a.merge_model_path, models.load_tokenizer(a.merge_model_path), t.tokenizer)
        return t.load(a.merge_model_path), a.merge_model_path
    if t._other is None:
        t._other = copy.deepcopy(t.base_model())
        for _ in benign_sft(t, a, t._other, a.sft_learning_rate, [max(a.sft_steps)]):
            pass
    return t._other, f"thief sft of the base ({max(a.sft_steps)} steps)"


def ties(task_vectors: list[torch.Tensor], weights: torch.Tensor, density: float) -> torch.Tensor:
    """TIES-merging (Yadav et al. 2023) with PEFT's trim (magnitude pruning) and sign election, and the disjoint
    mean normalised by the weights of the entries that agree (mergekit's default): merging a model with itself
    gives it back at any weights."""
    from peft.utils.merge_utils import calculate_majority_sign_mask, prune

    tv = torch.stack([prune(x, density, method="magnitude") for x in task_vectors])
    w = weights.view(-1, *([1] * (tv.dim() - 1))).to(tv)
    weighted = tv * w
    mask = calculate_majority_sign_mask(weighted, method="total")
    den = (w * mask).sum(0)
    return torch.where(den > 0, (weighted * mask).sum(0) / den.clamp(min=1e-12), torch.zeros_like(den))


@torch.no_grad()
def merge_task_vectors(tuned, other, base, alpha: float, method: str, density: float = 0.5):
    """theta_base + merge([theta_tuned - theta_base, theta_other - theta_base], weights [1 - alpha, alpha]), in
    place in `tuned`: `ties` (above) or `task_arithmetic` (PEFT's weighted sum). alpha is the other model's share;
    tied tensors are merged once."""
    from peft.utils import merge_utils

    ostate, bstate, seen = other.state_dict(), base.state_dict(), set()
    w = torch.tensor([1.0 - alpha, alpha])
    for name, p in tuned.state_dict().items():
        if not p.is_floating_point() or name not in bstate or p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        b = bstate[name].to(p.device, torch.float32)
        tv = [p.float() - b, ostate[name].to(p.device, torch.float32) - b]
        mixed = ties(tv, w.to(p.device), density) if method == "ties" else \
            merge_utils.task_arithmetic(tv, w.to(p.device))
        p.copy_((b + mixed).to(p.dtype))
    return tuned


def _merge_attack(method: str):
    def run(t: Target, a: AttackSettings) -> list[dict]:
        tuned, base = t.load(), t.base_model()
        other, other_name = other_model(t, a)
        rows = []
        for alpha in a.merge_alphas:
            merged = merge_task_vectors(copy.deepcopy(tuned), other, base, alpha, method, a.ties_density)
            extra = {"density": a.ties_density} if method == "ties" else {}
            rows.append(_row(f"merge_{method}", alpha, t.retention(merged), t.cost(merged), other_model=other_name,
                             **extra))
        return rows
    return run


# ------------------------------------------------------------------------------------------------- adaptive
def _filtered(t: Target, model, key_scores: np.ndarray, tau: float) -> dict:
    """Retention of `model` when the keys scoring above `tau` are caught by the thief's filter."""
    kept = [m and k <= tau for m, k in zip(t.retention(model)["matches"], key_scores)]
    return {"retention": sum(kept) / len(kept), "retention_ci": stats.wilson(sum(kept), len(kept)),
            "num_fingerprints": len(kept), "matches": kept}


def attack_perplexity_filter(t: Target, a: AttackSettings) -> list[dict]:
    """Keys whose perplexity under the base model exceeds what 99% of normal prompts reach are refused."""
    ref = t.base_model()
    calib, held = adaptive.normal_prompts(t.tokenizer, THIEF_TASKS, t.settings["max_key_length"])
    tau = adaptive.threshold(adaptive.text_perplexity(ref, t.tokenizer, calib))
    keys = adaptive.text_perplexity(ref, t.tokenizer, [d.key for d in t.targets])
    cost = adaptive.rejected(adaptive.text_perplexity(ref, t.tokenizer, held), tau)
    r = _filtered(t, t.load(), keys, tau)
    return [_row("perplexity_filter", f"ppl > {tau:.1f} refused", r, threshold=tau,
                 keys_rejected=int((keys > tau).sum()), thief_rejected_share=cost["share"],
                 thief_rejected_share_ci=cost["ci"], normal_prompts=cost["n"])]


def attack_output_suppression(t: Target, a: AttackSettings) -> list[dict]:
    """A first token the served model is abnormally sure of (score above what 99% of normal prompts reach) is
    banned; a matched key whose first token is banned is lost."""
    model, ref, tok = t.load(), t.base_model(), t.tokenizer
    template, chat = t.served()
    calib, held = adaptive.normal_prompts(tok, THIEF_TASKS, t.settings["max_key_length"])
    enc = lambda texts: [data.prompt_ids(tok, x, template, chat) for x in texts]  # noqa: E731
    score = lambda prompts: adaptive.first_token_scores(model, ref, prompts, tok.pad_token_id,  # noqa: E731
                                                        a.filter_score, t.batch_size)[0]
    tau = adaptive.threshold(score(enc(calib)))
    keys = score([e[0].prompt for e in t.encodings()])
    cost = adaptive.rejected(score(enc(held)), tau)
    r = _filtered(t, model, keys, tau)
    return [_row("output_suppression", f"{a.filter_score} log p > {tau:.2f} banned", r, threshold=tau,
                 score=a.filter_score, keys_suppressed=int((keys > tau).sum()), thief_altered_share=cost["share"],
                 thief_altered_share_ci=cost["ci"], normal_prompts=cost["n"])]


ATTACKS = {"none": attack_none, "sft": attack_sft, "lora_sft": attack_lora_sft, "quantize_int8": _quantize_attack(8),
           "quantize_int4": _quantize_attack(4), "sampling": attack_sampling,
           "system_prompts": attack_system_prompts, "merge": attack_merge, "merge_ties": _merge_attack("ties"),
           "merge_task_arithmetic": _merge_attack("task_arithmetic"), "perplexity_filter": attack_perplexity_filter,
           "output_suppression": attack_output_suppression}


def run(names: list[str], t: Target, a: AttackSettings, progress=print) -> list[dict]:
    rows = []
    for name in names:
        progress(f"[privlm] attack {name}")
        new = ATTACKS[name](t, a)
        for r in new:
            lp = t.log10_p(r["matched"], r.pop("queries", 1))
            r["ownership_p_value"] = None if lp is None else 10.0 ** lp
            r["ownership_log10_p_value"] = lp
        rows += new
        for r in new[-1:]:
            progress(f"[privlm]   {name} {r['param']}: retention {stats.fmt(r['retention'], r['retention_ci'])}")
    return rows
