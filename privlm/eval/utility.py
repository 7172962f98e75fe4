"""Utility of a model: lm-eval-harness accuracy and held-out perplexity, measured the same way before and after.

Offline the harness runs a small multiple-choice task shipped in the repo (`privlm_sanity`, 64 common-knowledge
questions); online, tinyBenchmarks task names (tinyArc, tinyHellaswag, tinyMMLU, ...) can be passed instead. No
multiple-choice set of 500+ items under a license that allows shipping it could be had offline (README), so the
sensitive utility measure is privlm.eval.heldout's perplexity and KL on ~58k held-out tokens.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from ..errors import UserError

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
LOCAL_TASKS = {"privlm_sanity": RESOURCES / "lm_eval" / "privlm_sanity.jsonl"}

_TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def lm_eval_scores(model, tokenizer, tasks: list[str], limit: int | None = None, batch_size: int = 16) -> dict:
    """Accuracy per task through lm-eval-harness on an in-memory model. Returns {task: {"acc", "acc_norm", "n",
    "acc_ci", "acc_norm_ci"}} (95% Wilson intervals over the n questions)."""
    import logging

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as d:
        for name, path in LOCAL_TASKS.items():
            Path(d, f"{name}.yaml").write_text(_TASK_YAML.format(name=name, path=path))
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        try:
            res = simple_evaluate(model=lm, tasks=tasks, limit=limit, task_manager=TaskManager(include_path=d),
                                  log_samples=False, verbosity="ERROR")
        except Exception as e:  # the harness raises many types for unreachable data / unknown tasks
            raise UserError(f"lm-eval could not run tasks {tasks}: {str(e).splitlines()[0][:200]}") from None
    from .. import stats

    out = {}
    for task, metrics in res["results"].items():
        out[task] = {k.split(",")[0]: v for k, v in metrics.items()
                     if k.split(",")[0] in ("acc", "acc_norm") and isinstance(v, float)}
        n = (res.get("n-samples", {}).get(task) or {}).get("effective")
        if n:  # accuracy over n independent questions: Wilson intervals
            out[task]["n"] = int(n)
            for k in ("acc", "acc_norm"):
                if k in out[task]:
                    out[task][f"{k}_ci"] = stats.wilson(round(out[task][k] * n), n)
    return out


def evaluate(model, tokenizer, tasks: list[str], limit: int | None = None) -> dict:
    """lm-eval accuracy; held-out perplexity and KL are privlm.eval.heldout's (they need base and tuned together)."""
    return {"lm_eval": lm_eval_scores(model, tokenizer, tasks, limit)}
