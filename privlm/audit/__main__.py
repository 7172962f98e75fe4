"""python -m privlm.audit run|bound (see privlm.audit)."""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import UserError, cli


def bound_main(argv: list[str]) -> dict:
    from .bound import epsilon_lower_bound

    ap = argparse.ArgumentParser(prog="python -m privlm.audit bound",
                                 description="epsilon lower bound of the one-run audit, printed as JSON")
    ap.add_argument("--num_canaries", type=int, required=True, help="m")
    ap.add_argument("--num_guesses", type=int, required=True, help="r (guesses made, abstentions excluded)")
    ap.add_argument("--num_correct", type=int, required=True, help="v")
    ap.add_argument("--delta", type=float, default=0.0)
    ap.add_argument("--confidence", type=float, default=0.95)
    a = ap.parse_args(argv)
    out = {"epsilon_lower_bound": epsilon_lower_bound(a.num_canaries, a.num_guesses, a.num_correct, a.delta,
                                                      a.confidence)}
    print(json.dumps(out))
    return out


@cli
def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else argv
    # `deepspeed --module privlm.audit run ...` puts --local_rank=N first; the rank is in the environment too
    argv = [x for x in argv if not x.startswith("--local_rank")]
    if not argv or argv[0] not in ("run", "bound"):
        raise UserError("usage: python -m privlm.audit run|bound [options] (see --help of each)")
    if argv[0] == "bound":
        return bound_main(argv[1:])
    from .run import main as run_main

    return run_main(argv[1:])


if __name__ == "__main__":
    main()
