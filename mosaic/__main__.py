"""python -m mosaic <step> [--config configs/mosaic/<name>.yml] [flags] [key=value ...]"""
import importlib
import sys

from mosaic import STEPS


def main(argv):
    # `deepspeed --module mosaic train ...` puts --local_rank=N before the step; LOCAL_RANK is in the environment
    argv = [a for a in argv if not a.startswith("--local_rank")]
    if not argv or argv[0] not in STEPS:
        width = max(map(len, STEPS))
        lines = "\n".join(f"  {k:<{width}}  {v}" for k, v in STEPS.items())
        print(f"usage: python -m mosaic <step> [--config FILE] [flags] [key=value ...]\n\nsteps:\n{lines}",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown step {argv[0]!r}", file=sys.stderr)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    importlib.import_module(f"mosaic.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
