"""`python -m privlm.audit run`: the one-run privacy audit (Steinke, Nasr and Jagielski 2023) of a dp_finetune.py run.

m canaries, each in the training set by a secret fair coin; the model is trained by exactly the dp_finetune.py
pipeline (every flag, YAML file and key=value override works: undefended, scrubbed, DP). Two threat models:
* blackbox (default): text canaries (random words, mosaic canaries sampled from the base model, or crafted rare-token
  sequences: privlm.audit.crafted) planted as records, scored on the trained model by an MIA attack (crafted: always
  the loss ratio to the base model, a per-canary calibration);
* whitebox: gradient canaries inserted into DP-SGD (privlm.audit.whitebox), scored on the released noised sums.
The auditor guesses "in" for the top-scoring and "out" for the bottom-scoring canaries, the number of guesses from
a grid fixed in advance (privlm.audit.bound.guess_grid, union bound over it), and (m, guesses, correct) become
epsilon lower bounds (eps_delta and f-DP, at the run's delta and at 1e-5). The verdict compares the best one at the
run's delta with the accountant's epsilon; "violated" exits 3 after audit.json is written.

Layout: <audit dir>/canaries.jsonl (texts or gradient seed, and coins: the auditor's secret, kept for a resumed
audit), <audit dir>/train/ (the training run, resumable as any), <audit dir>/audit.json, scores.json and roc.png
(written last).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import config as C
from .. import models, stats
from ..dp.finetune import DPFinetuneConfig  # noqa: F401 (the config this entry point parses; tests find it here)
from ..errors import UserError
from ..io import atomic_write_json, atomic_write_text
from . import bound, whitebox


def audit_args(parser):
    g = parser.add_argument_group("audit")
    g.add_argument("--num_canaries", type=int, default=1000, help="m: canaries, each in training with prob. 1/2")
    g.add_argument("--canary_length", type=int, default=32, help="words per random canary (tokens for mosaic)")
    g.add_argument("--threat_model", choices=["blackbox", "whitebox"], default="blackbox",
                   help="blackbox: text canaries scored by an MIA on the trained model; whitebox: gradient canaries "
                        "inserted into DP-SGD, scored on the released noised gradient sums")
    g.add_argument("--canary_kind", choices=["random", "mosaic", "crafted"], default="random",
                   help="black-box canaries: random words, mosaic canaries sampled from the base model, or crafted "
                        "(rare-token sequences the base model has no prior on; score calibrated per canary)")
    g.add_argument("--crafted_tokens", choices=["rare", "uniform"], default="rare",
                   help="crafted canaries: tokens from the base model's least likely (rare) or any (uniform)")
    g.add_argument("--canary_gradient", choices=list(whitebox.KINDS), default="dirac",
                   help="white-box canaries: one coordinate each (dirac) or random unit directions")
    g.add_argument("--whitebox_score", choices=list(whitebox.SCORES), default="llr",
                   help="white-box score: the subsampled Gaussian's per-step likelihood ratio, or the plain sum")
    g.add_argument("--canary_repeats", type=int, default=1, help="copies of each included canary in training")
    g.add_argument("--attack", default="loss", help="MIA score (a registered attack: loss, ratio, zlib, min_k, ...)")
    g.add_argument("--reference_model", default=None, help="for reference attacks (default: the base model)")
    g.add_argument("--confidence", type=float, default=0.95)


def validate(cfg, a) -> None:
    from ..mia.registry import check_names

    problems = []
    if a.num_canaries < 2:
        problems.append(f"--num_canaries: {a.num_canaries} must be >= 2")
    if a.canary_length < 1:
        problems.append("--canary_length: must be >= 1")
    if a.canary_repeats < 1:
        problems.append("--canary_repeats: must be >= 1")
    if not 0 < a.confidence < 1:
        problems.append(f"--confidence: {a.confidence} must be in (0, 1)")
    try:
        check_names([a.attack])
    except UserError as e:
        problems.append(f"--attack: {e}")
    if a.threat_model == "whitebox":
        if not cfg.dp and "privacy.max_grad_norm_dp" not in cfg.explicit:
            problems.append("--threat_model whitebox: an undefended run must name the clipping norm the canary "
                            "gradients are scaled to (--max_grad_norm_dp / --clip)")
        if cfg.privacy.max_grad_norm_dp <= 0:
            problems.append("--threat_model whitebox: needs a clipping norm > 0 (--max_grad_norm_dp)")
        if cfg.trainer_args.zero_stage == 3:
            problems.append("--threat_model whitebox: ZeRO-3 shards the noised sum; use deepspeed stage 0-2")
        if cfg.privacy.sampling != "poisson":
            problems.append("--threat_model whitebox: canaries are Poisson sampled; use privacy.sampling poisson")
    elif a.canary_kind != "mosaic" and a.canary_length + 2 > cfg.model.tokenizer_max_length:
        problems.append(f"--canary_length {a.canary_length}: a canary must fit tokenizer_max_length "
                        f"{cfg.model.tokenizer_max_length} (its tokens would be cut off)")
    if cfg.dataset.prompt_style != "uncond_generation":
        problems.append("dataset.prompt_style: the audit plants canaries as plain texts (uncond_generation)")
    if problems:
        raise UserError("invalid audit settings: " + "; ".join(problems))


def trainable_weights(cfg) -> int:
    """How many weights the run trains (the model and its LoRA adapter built on the meta device from the config
    alone: no weights read), so that too many white-box canaries are refused before anything is written."""
    import torch

    from ..dp.finetune import full_dp, lora

    resolved = models.resolve(cfg.model.model_path)
    with torch.device("meta"):
        model = models.load_model(resolved, pretrained=False)
        model = lora(cfg.model)(model) if cfg.model.peft == "lora" else full_dp(model)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def score_name(a) -> str:
    """What scores the canaries: the white-box score, or the MIA attack (crafted canaries: always the loss ratio to
    the base model, a per-canary calibration, whatever --attack says)."""
    if a.threat_model == "whitebox":
        return a.whitebox_score
    return "ratio" if a.canary_kind == "crafted" else a.attack


def audit_dir(cfg, a) -> Path:
    ta = cfg.trainer_args
    if ta.output_dir:
        return Path(ta.output_dir)
    keys = ("num_canaries", "threat_model", "canary_gradient") if a.threat_model == "whitebox" else \
        ("num_canaries", "canary_length", "canary_kind", "canary_repeats", "crafted_tokens")
    settings = {k: getattr(a, k) for k in keys}
    return Path(ta.results_dir) / "audits" / C.run_hash(cfg, settings)


def make_canaries(cfg, a, rng: np.random.Generator) -> list[dict]:
    """[{id, text, member}] with members drawn by fair coins from `rng`."""
    m = a.num_canaries
    if a.threat_model == "whitebox":  # directions come from one secret seed, kept with the coins
        seed = int(rng.integers(2**62))
        coins = rng.integers(0, 2, m).astype(bool)
        return [{"id": i, "gradient": a.canary_gradient, "seed": seed, "member": bool(c)} for i, c in enumerate(coins)]
    tok = models.load_tokenizer(cfg.model.model_path)
    if a.canary_kind == "crafted":
        from .crafted import crafted_texts

        texts = crafted_texts(cfg.model.model_path, tok, m, a.canary_length, a.crafted_tokens, rng,
                              dtype=cfg.model.dtype)
    elif a.canary_kind == "random":
        vocab = tok.convert_ids_to_tokens(list(range(len(tok))))
        words = sorted({t[1:] for t in vocab if t and t[0] in "Ġ▁" and t[1:].isalpha() and t[1:].islower()
                        and len(t) > 3})
        if len(words) >= 100:
            texts = [" ".join(words[i] for i in rng.integers(0, len(words), a.canary_length)).capitalize() + "."
                     for _ in range(m)]
        else:  # a toy tokenizer without a word list: random non-special tokens
            special = set(tok.all_special_ids)
            ids = [i for i in range(len(tok)) if i not in special]
            texts = [tok.decode([ids[j] for j in rng.integers(0, len(ids), a.canary_length)]) for _ in range(m)]
    else:
        from ..mosaic.canaries import sample

        model = models.load_model(cfg.model.model_path, dtype=cfg.model.dtype, device=models.device())
        rows, _ = sample(model, tok, tok, m, a.canary_length, 1.0, int(rng.integers(2**31)))
        texts = [r["text"] for r in rows]
        del model
    coins = rng.integers(0, 2, m).astype(bool)
    return [{"id": i, "text": t, "member": bool(c)} for i, (t, c) in enumerate(zip(texts, coins))]


def load_or_make_canaries(path: Path, cfg, a, fresh: bool) -> tuple[list[dict], bool]:
    """(canaries, new?): a resumed audit keeps its canaries and coins; a new one (or `fresh`) draws them from the
    OS's secure source, rank 0's draw shared with the other ranks in memory (or from the config seed under
    --reproducible_noise)."""
    if path.is_file() and not fresh:
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        if len(rows) != a.num_canaries:
            raise UserError(f"{path} holds {len(rows)} canaries, not --num_canaries {a.num_canaries}; use another "
                            "--output_dir")
        return rows, False
    if cfg.privacy.reproducible_noise:
        seed = cfg.trainer_args.seed
    else:
        from ..dp.randomness import shared_secret

        seed = shared_secret()
    return make_canaries(cfg, a, np.random.default_rng(seed)), True


def main(argv: list[str] | None = None) -> dict:
    import os

    from ..dp.finetune import front_door, load_data, logical_batch, run
    from ..training import barrier, init_distributed, is_main

    cfg, a = C.parse(DPFinetuneConfig, argv, __doc__, extra_args=audit_args)
    validate(cfg, a)
    out = audit_dir(cfg, a)
    overwrite = cfg.trainer_args.overwrite_output_dir
    several_ranks = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if several_ranks:  # launched on several ranks: they share rank 0's secret coins
        init_distributed()
    white = a.threat_model == "whitebox"
    if white and a.num_canaries > (n := trainable_weights(cfg)):
        raise UserError(f"--num_canaries {a.num_canaries}: more white-box canaries than the {n} trainable weights "
                        "(one direction each)")
    canaries, new = load_or_make_canaries(out / "canaries.jsonl", cfg, a, fresh=overwrite)
    field = cfg.dataset.text_field
    planted = [] if white else [{field: c["text"]} for c in canaries if c["member"] for _ in range(a.canary_repeats)]
    gradients = whitebox.GradientCanaries([c["member"] for c in canaries], canaries[0]["gradient"],
                                          canaries[0]["seed"]) if white else None
    cfg.trainer_args.total_train_batch_size = logical_batch(cfg)
    n_members = sum(c["member"] for c in canaries)
    # refuse bad privacy settings before writing
    front_door(cfg, len(load_data(cfg.dataset)[0]) + (n_members if white else len(planted)))
    if new and is_main():
        if overwrite and out.exists():
            import shutil

            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "canaries.jsonl", "".join(json.dumps(c) + "\n" for c in canaries))
    if several_ranks:
        barrier()
    cfg.trainer_args.output_dir = str(out / "train")
    cfg.trainer_args.overwrite_output_dir = False
    metrics = run(cfg, extra_records=planted, whitebox=gradients)
    if not is_main():
        return {}
    done = _finished(out, a)
    if done is not None:
        print(f"[privlm] audit already finished: {out / 'audit.json'} (eps_lb {done['epsilon_lower_bound']:.3f})")
        return _judge(done)

    member, attack = np.array([c["member"] for c in canaries]), score_name(a)
    if white:
        scores = np.array(metrics["whitebox"][attack])
    else:
        scores = _blackbox_scores(cfg, a, out, [c["text"] for c in canaries], attack)
    report = _report(cfg, a, metrics, scores, member, out, attack)
    _roc_png(scores[member], scores[~member], report, out / "roc.png")
    atomic_write_json(out / "scores.json", {"attack": attack, "scores": scores.tolist(),
                                            "members": member.tolist()}, indent=None)
    atomic_write_json(out / "audit.json", report)
    ub = report["epsilon_upper_bound"]
    print(f"[privlm] audit ({a.threat_model}): eps_lb {report['epsilon_lower_bound']:.3f} (eps_ub "
          f"{'-' if ub is None else f'{ub:.3f}'}, delta {report['delta']:.3g}, {report['confidence']:.0%} confidence, "
          f"{report['epsilon_lower_bound_method']}; {report['num_correct']} of {report['num_guesses']} guesses "
          f"right), AUC {stats.fmt(report['auc'], report['auc_ci'])}, verdict {report['verdict']} -> "
          f"{out / 'audit.json'}")
    for b in report["bounds"]:
        print(f"[privlm]   {b['method']:<9} delta {b['delta']:<9.3g} eps_lb {b['epsilon_lower_bound']:.3f}")
    return _judge(report)


def _blackbox_scores(cfg, a, out: Path, texts: list[str], attack: str) -> np.ndarray:
    """The MIA score `attack` of every text canary on the trained model (higher = more likely a member)."""
    from ..dp.finetune import load_trained
    from ..mia.scoring import score_texts

    tok = models.load_tokenizer(cfg.model.model_path)
    model = load_trained(cfg, out / "train" / "final_model")
    return score_texts(model, tok, texts, [attack], reference=a.reference_model or cfg.model.model_path,
                       dtype=cfg.model.dtype)[attack]


def _report(cfg, a, metrics: dict, scores: np.ndarray, member: np.ndarray, out: Path, attack: str) -> dict:
    from ..dp.plan import run_delta

    privacy = metrics.get("privacy") or {}
    delta = privacy.get("delta") or run_delta(cfg.privacy, metrics.get("dataset_size") or 1)
    deltas = [delta] + ([bound.REFERENCE_DELTA] if delta != bound.REFERENCE_DELTA else [])
    rows = bound.bounds(scores, member, deltas, a.confidence)
    at_run = [b for b in rows if b["delta"] == delta]
    best = max(at_run, key=lambda b: b["epsilon_lower_bound"])
    grid = bound.audit(scores, member, delta, a.confidence)
    roc = stats.roc_with_ci(scores[member], scores[~member], confidence=a.confidence)
    eps_ub = privacy.get("epsilon") if cfg.dp else None
    return {
        "epsilon_lower_bound": best["epsilon_lower_bound"], "epsilon_lower_bound_method": best["method"],
        "epsilon_upper_bound": eps_ub, "verdict": bound.verdict(best["epsilon_lower_bound"], eps_ub),
        "bounds": rows, "threat_model": a.threat_model,
        "delta": delta, "confidence": a.confidence, "num_canaries": len(member),
        "num_members": int(member.sum()), "num_guesses": best["num_guesses"], "num_correct": best["num_correct"],
        "guess_grid": grid["grid"], "confidence_per_grid_point": grid["confidence_per_grid_point"],
        "attack": attack, "reference_model": a.reference_model,
        "auc": roc["auc"], "auc_ci": roc["auc_ci"], "tpr_at_fpr": roc["tpr_at_fpr"],
        "mode": metrics.get("mode"), "noise_source": metrics.get("noise_source"),
        "noise_multiplier": privacy.get("noise_multiplier"), "steps": privacy.get("steps"),
        "sample_rate": privacy.get("sample_rate"),
        **({"canary_gradient": a.canary_gradient, "whitebox_score": a.whitebox_score} if a.threat_model ==
           "whitebox" else {"canary_kind": a.canary_kind, "canary_length": a.canary_length,
                            "canary_repeats": a.canary_repeats}),
        "train_seconds": metrics.get("train_seconds"),
        "training_run": str(out / "train"), "figure": str(out / "roc.png"),
    }


def _judge(report: dict) -> dict:
    """A violated guarantee is an error: one line on stderr and exit code 3 (audit.json is written first)."""
    if report.get("verdict") == "violated":
        import sys

        print(f"DP guarantee violated: epsilon_lb {report['epsilon_lower_bound']:.3f} > epsilon "
              f"{report['epsilon_upper_bound']:.3f}", file=sys.stderr, flush=True)
        sys.exit(3)
    return report


def _finished(out: Path, a) -> dict | None:
    """audit.json when it was made after the training run it audits, with the same attack, reference and
    confidence (a finished audit is neither retrained nor rescored)."""
    f, trained = out / "audit.json", out / "train" / "metrics.json"
    if not (f.is_file() and trained.is_file()) or f.stat().st_mtime < trained.stat().st_mtime:
        return None
    try:
        done = json.loads(f.read_text())
    except json.JSONDecodeError:
        return None
    same = (done.get("attack"), done.get("reference_model"), done.get("confidence"), "bounds" in done) == \
        (score_name(a), a.reference_model, a.confidence, True)
    return done if same else None


def _roc_png(members, nonmembers, report: dict, path: Path):
    from ..plots import pyplot, roc_panel, save

    fig, ax = pyplot().subplots(figsize=(4.5, 4.2))
    roc_panel(ax, {f"{report['attack']}: AUC {stats.fmt(report['auc'], report['auc_ci'])}": (members, nonmembers)},
              report["tpr_at_fpr"])
    ub = report["epsilon_upper_bound"]
    ax.set_title(f"eps_lb {report['epsilon_lower_bound']:.2f}, eps_ub {'-' if ub is None else f'{ub:.2f}'}",
                 fontsize=9)
    save(fig, path)
