"""Verification: which fingerprints a model still holds, per prompt template set (greedy match of the response,
EOS included, after the templated key)."""
from __future__ import annotations

from .. import data, stats
from ..eval.greedy import greedy_match, summarize


def template_sets(names: list[str], trained: str) -> dict[str, list[data.Template]]:
    out = {}
    for name in names:
        real = trained if name == "trained" else name
        out[name] = [data.BARE] if real == "bare" else data.load_templates(real)
    return out


def check(model, tokenizer, fps: list[dict], sets: dict, s: dict, batch_size: int) -> dict:
    chat = data.use_chat(tokenizer, s["prompt_format"])
    per_template, first = {}, None
    for set_name, templates in sets.items():
        rows, matches = [], []
        for t in templates:
            enc = [data.encode(tokenizer, f["key"], f["response"], t, chat, s["max_key_length"],
                               s["max_response_length"]) for f in fps]
            verdicts = greedy_match(model, tokenizer, enc, batch_size)
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
                "token_accuracy": v.token_accuracy} for f, e, v in zip(fps, enc, verdicts)]
    main_set = next(iter(sets))
    return {"retention": per_template[main_set]["retention"],
            "retention_ci": per_template[main_set]["retention_ci"], "num_fingerprints": len(fps),
            "template_set": main_set, "per_template": per_template, "fingerprints": listing}


def retention_ci(matches: list[list[bool]]) -> list[float] | None:
    """95% interval of retention over fingerprints (the independent units): Wilson for one template; for several,
    a bootstrap over fingerprints of each one's share of templates it survives (templates are not independent)."""
    if len(matches) == 1:
        return stats.wilson(sum(matches[0]), len(matches[0]))
    per_fp = [sum(col) / len(col) for col in zip(*matches)]
    return stats.mean_ci(per_fp)
