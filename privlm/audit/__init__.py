"""Empirical privacy auditing: the one-run audit of Steinke, Nasr and Jagielski (NeurIPS 2023).

    python -m privlm.audit run [any dp_finetune.py flag, --config YAML, key=value] [--num_canaries 1000 ...]
    python -m privlm.audit bound --num_canaries M --num_guesses R --num_correct V --delta D --confidence C
"""
