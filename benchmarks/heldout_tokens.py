"""How many held-out tokens the paired perplexity ratio needs: its 95% bootstrap CI half-width (relative to the
ratio) against the number of windows scored, for a fingerprinted model and its base, and the time per pass.

    python benchmarks/heldout_tokens.py [--model_path results/demo_run/final_model] [--base_model_path default]
        [--max_tokens N] [--output_file benchmarks/reports/heldout_tokens.json]

Both models are scored once over the whole text (base and tuned in one loop, as check_fingerprints does); every
prefix of 16, 32, ... windows is then bootstrapped from those per-window scores, because check_fingerprints'
--heldout_tokens takes the text's first tokens. Last stdout line is JSON: {"smallest_tokens_within_1pct", "rows", ...}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from privlm import models  # noqa: E402
from privlm.eval import heldout  # noqa: E402
from privlm.io import atomic_write_json  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_path", default="results/demo_run/final_model")
    p.add_argument("--base_model_path", default="default")
    p.add_argument("--target", type=float, default=0.01, help="CI half-width over the ratio to stay within")
    p.add_argument("--step", type=int, default=16, help="windows (of 256 tokens) between the rows")
    p.add_argument("--max_tokens", type=int, default=None, help="score only the text's first this many tokens")
    p.add_argument("--output_file", default="benchmarks/reports/heldout_tokens.json")
    a = p.parse_args(argv)
    if not (Path(a.model_path) / "config.json").is_file():
        sys.exit(f"error: no model at {a.model_path} (run `make demo` first, or pass --model_path)")
    tok = models.load_tokenizer(a.model_path)
    tuned = models.load_model(a.model_path, device=models.device()).eval()
    wins = heldout.windows(tok, heldout.HELDOUT_ENGLISH.read_text(), max_tokens=a.max_tokens)
    t0 = time.perf_counter()
    after, before, cached = heldout.compare(tuned, wins, heldout.model_id(a.base_model_path),
                                            lambda: models.load_model(a.base_model_path, device=models.device()))
    seconds = time.perf_counter() - t0
    rows = []
    for n in [*range(a.step, len(wins), a.step), len(wins)]:
        s = heldout.summary({k: v[:n] for k, v in after.items()}, {k: v[:n] for k, v in before.items()})
        lo, hi = s["heldout_ppl_ratio_ci"]
        rows.append({"windows": n, "tokens": s["heldout_tokens"], "ratio": s["heldout_ppl_ratio"], "ci": [lo, hi],
                     "half_width_rel": (hi - lo) / 2 / s["heldout_ppl_ratio"]})
    ok = [r for r in rows if r["half_width_rel"] <= a.target]
    # the smallest prefix from which every longer one also stays within the target (the bootstrap wobbles)
    stable = next((r for i, r in enumerate(rows) if all(x["half_width_rel"] <= a.target for x in rows[i:])), None)
    out = {"model_path": a.model_path, "base_model_path": a.base_model_path, "target_half_width": a.target,
           "total_tokens": rows[-1]["tokens"], "base_from_cache": cached,
           "seconds_one_loop": round(seconds, 1), "tokens_per_second": round(rows[-1]["tokens"] / seconds, 1),
           "smallest_tokens_within_1pct": ok[0]["tokens"] if ok else None,
           "stable_tokens_within_1pct": stable["tokens"] if stable else None, "rows": rows}
    for r in rows:
        print(f"{r['tokens']:>7} tokens  ratio {r['ratio']:.4f} [{r['ci'][0]:.4f}, {r['ci'][1]:.4f}]  "
              f"half-width {100 * r['half_width_rel']:.2f}%")
    atomic_write_json(a.output_file, out)
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}))


if __name__ == "__main__":
    main()
