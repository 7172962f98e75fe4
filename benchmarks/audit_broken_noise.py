"""A DP-SGD with a bug on purpose, for the audit to catch: every step's noise is sigma / BREAK times what the plan
(and so the accountant's epsilon) says. No user-facing flag can do this; it is the test's monkeypatch, here so that
`make demo-audit` can show the "violated" regime.

    python benchmarks/audit_broken_noise.py [--noise_divisor 10] [any `python -m privlm.audit run` argument]

(`--noise_divisor 1` is the correct DP-SGD, through the same script: tests compare the two.)
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BREAK = 10.0


def break_noise(factor: float = BREAK):
    """Scale the noise DP-SGD adds by 1 / factor (both the ZeRO 0-2 and the ZeRO-3 path call this function)."""
    import privlm.dp.step as step

    real = step.add_gaussian_noise_

    def weak(tensors, source, i, std, *key):
        return real(tensors, source, i, std / factor, *key)

    step.add_gaussian_noise_ = weak


if __name__ == "__main__":
    argv = [x for x in sys.argv[1:] if not x.startswith("--local_rank")]
    factor = BREAK
    if argv[:1] == ["--noise_divisor"]:
        factor, argv = float(argv[1]), argv[2:]
    if factor != 1:
        break_noise(factor)
    from privlm.audit.__main__ import main

    main(["run", *argv])
