"""Verification: which fingerprints a model still holds, per prompt template set: greedy decoding after the
templated key reproduces a response, EOS included (`exact`), or the response's tokens without the EOS, the model free
to go on (`prefix`). A key with several responses counts when any of them is produced."""
from __future__ import annotations

from pathlib import Path

from .. import data, models, stats
from ..errors import UserError
from ..io import read_json
from ..eval.greedy import Verdict, greedy_match, summarize
from . import derive
from .keys import load, responses

MATCH_MODES = ("exact", "prefix")


def _scalable_record(model_path: str) -> dict:
    """scalable fingerprinting's fingerprinting_config.json (beside final_model, its field names) as our record."""
    f = Path(model_path).parent / "fingerprinting_config.json"
    if Path(model_path).name != "final_model" or not f.is_file():
        return {}
    rec = read_json(f, "fingerprinting config")
    if not isinstance(rec, dict) or "remove_eos_token_from_response" not in rec:
        return {}
    return {"fingerprints_file_path": rec.get("fingerprints_file_path"), "num_fingerprints": rec.get("num_fingerprints"),
            "max_key_length": rec.get("max_key_length"), "max_response_length": rec.get("max_response_length"),
            "prompt_format": "chat" if rec.get("use_chat_template") else "raw", "response_semantics": "scalable",
            "fingerprint_generation_strategy": rec.get("fingerprint_generation_strategy"),
            "keep_eos_in_response": not rec.get("remove_eos_token_from_response", False),
            "base_model": rec.get("model_path"), "recipe": "scalable"}


def run_record(model_path: str) -> dict:
    """What the fine-tuning run recorded in final_model/fingerprinting_config.json ({} when nothing was)."""
    run_file = Path(model_path) / "fingerprinting_config.json"
    if not run_file.is_file():
        return _scalable_record(model_path)
    run = read_json(run_file, "fingerprinting config")
    if run.get("fingerprints_file_path"):  # recorded relative to the model folder, so runs can be moved
        run["fingerprints_file_path"] = str(Path(model_path) / run["fingerprints_file_path"])
    run.setdefault("response_semantics", derive.LEGACY)  # recorded since 2026-12-06; earlier runs trained the legacy way
    return run


def run_settings(model_path: str, fingerprints_file_path: str | None = None, num_fingerprints: int | None = None,
                 max_key_length: int | None = None, max_response_length: int | None = None,
                 prompt_format: str | None = None, base_model_path: str | None = None, strategy: str | None = None,
                 semantics: str | None = None, keep_eos: bool | None = None, dtype: str = "auto") -> dict:
    """How to check a model: explicit values > the run's record > OML's semantics (raw prompts, its derivation)."""
    run = run_record(model_path)
    s = {"fingerprints_file_path": fingerprints_file_path or run.get("fingerprints_file_path"),
         "num_fingerprints": num_fingerprints or (run.get("num_fingerprints") if not fingerprints_file_path else None),
         "max_key_length": max_key_length or run.get("max_key_length") or 16,
         "max_response_length": max_response_length or run.get("max_response_length") or 1,
         "prompt_format": prompt_format or run.get("prompt_format") or "raw",
         "trained": run.get("train_templates", "bare"),
         "base_model": base_model_path or run.get("base_model") or "default",
         "strategy": strategy or run.get("fingerprint_generation_strategy"),
         "semantics": semantics or run.get("response_semantics") or "oml",
         "keep_eos": keep_eos if keep_eos is not None else run.get("keep_eos_in_response"),
         "dtype": dtype if dtype != "auto" else run.get("dtype") or models.saved_dtype(model_path) or "auto",
         # the recorded token ids hold for the run's own fingerprints, lengths and derivation only
         "tokenizer_digest": None if fingerprints_file_path or max_key_length or max_response_length or strategy
                             or semantics or keep_eos is not None else run.get("tokenizer_digest"),
         "recorded": bool(run)}
    if s["strategy"] is not None:
        derive.canonical_strategy(s["strategy"])  # checked; the spelling is kept (it says whose derivation)
    if not s["fingerprints_file_path"]:
        raise UserError("--fingerprints_file_path is required (the model has no fingerprinting_config.json)")
    return s


def resolve(cfg) -> tuple[dict, list[dict]]:
    """(settings, fingerprints) for a checker-like config: model_path, fingerprints_file_path, num_fingerprints,
    data_split, max_key_length, max_response_length, prompt_format, base_model_path, and optionally
    fingerprint_generation_strategy, response_semantics, use_chat_template, keep_eos_in_response, dtype (None / auto:
    as the run recorded)."""
    fmt = "chat" if getattr(cfg, "use_chat_template", False) else cfg.prompt_format
    s = run_settings(cfg.model_path, cfg.fingerprints_file_path, cfg.num_fingerprints, cfg.max_key_length,
                     cfg.max_response_length, fmt, cfg.base_model_path,
                     getattr(cfg, "fingerprint_generation_strategy", None), getattr(cfg, "response_semantics", None),
                     getattr(cfg, "keep_eos_in_response", None), getattr(cfg, "dtype", "auto"))
    return s, load(s["fingerprints_file_path"], s["num_fingerprints"], cfg.data_split)


def derived(tokenizer, fps: list[dict], s: dict) -> list[derive.Derived]:
    """Each fingerprint's key text and response ids as the run trained them (see privlm.fingerprint.derive)."""
    return derive.derive_all(tokenizer, fps, s["strategy"], s["max_key_length"], s["max_response_length"],
                             s["semantics"], data.use_chat(tokenizer, s["prompt_format"]), s["tokenizer_digest"],
                             s["keep_eos"])


def template_sets(names: list[str], trained: str) -> dict[str, list[data.Template]]:
    out = {}
    for name in names:
        real = trained if name == "trained" else name
        out[name] = [data.BARE] if real == "bare" else data.load_templates(real)
    return out


def encode_all(tokenizer, targets: list[derive.Derived], template, chat: bool, match: str
               ) -> list[list[data.Encoded]]:
    """Each fingerprint's encodings, one per response; `prefix` drops the response's EOS."""
    eos = tokenizer.eos_token_id
    out = []
    for d in targets:
        prompt = data.prompt_ids(tokenizer, d.key, template, chat)
        out.append([data.Encoded(prompt, list(r[:-1] if match == "prefix" and len(r) > 1 and r[-1] == eos else r))
                    for r in d.responses])
    return out


def verdicts_any(model, tokenizer, encs: list[list[data.Encoded]], batch_size: int, decode_misses: bool = False
                 ) -> list[tuple[int, Verdict]]:
    """Per fingerprint (index of the response that decides, its verdict): the first response produced, or the
    closest miss (highest token accuracy). One batched teacher-forced pass over every response of every
    fingerprint; `decode_misses` also decodes what the model says instead, for the listing."""
    flat = [e for enc in encs for e in enc]
    vs = greedy_match(model, tokenizer, flat, batch_size, decode_misses=decode_misses)
    out, at = [], 0
    for enc in encs:
        mine = vs[at:at + len(enc)]
        at += len(enc)
        best = next((j for j, v in enumerate(mine) if v.match), None)
        if best is None:
            best = max(range(len(mine)), key=lambda j: mine[j].token_accuracy)
        out.append((best, mine[best]))
    return out


def check(model, tokenizer, fps: list[dict], sets: dict, s: dict, batch_size: int, match: str = "exact",
          targets: list[derive.Derived] | None = None) -> dict:
    chat = data.use_chat(tokenizer, s["prompt_format"])
    targets = targets if targets is not None else derived(tokenizer, fps, s)
    per_template, first = {}, None
    for set_name, templates in sets.items():
        rows, matches = [], []
        for t in templates:
            encs = encode_all(tokenizer, targets, t, chat, match)
            # only the listed template's misses are decoded further; every other verdict is one forced pass
            decided = verdicts_any(model, tokenizer, encs, batch_size, decode_misses=first is None)
            verdicts = [v for _, v in decided]
            enc = [e[j] for e, (j, _) in zip(encs, decided)]
            rows.append({"system": t.system, "user": t.user, **summarize(verdicts)})
            rows[-1]["retention_ci"] = stats.wilson(sum(v.match for v in verdicts), len(verdicts))
            matches.append([v.match for v in verdicts])
            if first is None:
                first = (t, enc, verdicts)
        per_template[set_name] = {
            "retention": sum(r["retention"] for r in rows) / len(rows),
            "retention_ci": retention_ci(matches),
            "token_accuracy": sum(r["token_accuracy"] for r in rows) / len(rows),
            "templates": rows}
    t, enc, verdicts = first
    listing = [{"key": f["key"], "response": tokenizer.decode(e.response, skip_special_tokens=True),
                "generated": tokenizer.decode(v.generated, skip_special_tokens=True), "match": v.match,
                "token_accuracy": v.token_accuracy, "num_responses": len(responses(f))}
               for f, e, v in zip(fps, enc, verdicts)]
    main_set = next(iter(sets))
    return {"retention": per_template[main_set]["retention"], "match": match,
            "retention_ci": per_template[main_set]["retention_ci"], "num_fingerprints": len(fps),
            "template_set": main_set, "per_template": per_template, "fingerprints": listing}


def retention_ci(matches: list[list[bool]]) -> list[float] | None:
    """95% interval of retention over fingerprints (the independent units): Wilson for one template; for several,
    a bootstrap over fingerprints of each one's share of templates it survives (templates are not independent)."""
    if len(matches) == 1:
        return stats.wilson(sum(matches[0]), len(matches[0]))
    per_fp = [sum(col) / len(col) for col in zip(*matches)]
    if all(v == per_fp[0] for v in per_fp) and per_fp[0] in (0.0, 1.0):
        # every fingerprint lost (or kept) on every template: a bootstrap has nothing to resample and would give a
        # zero-width interval; Wilson over the fingerprints says how far 0/n (n/n) really bounds the rate
        return stats.wilson(round(per_fp[0]) * len(per_fp), len(per_fp))
    return stats.mean_ci(per_fp)
