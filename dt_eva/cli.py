"""`dt-eva` command line: parse, then hand over to the library.

Each sub-command lives in `dt_eva/commands/<name>.py` with `HELP`, `add_arguments(parser)` and
`run(args) -> int`. Modules are imported lazily so `dt-eva --help` is fast and a broken optional
dependency of one command does not break the others.
"""

from __future__ import annotations

import os

# Must be set before torch loads OpenMP. With the default (ACTIVE) wait policy, idle OpenMP threads
# spin; on a small or shared CPU this made training and rollouts 10-15x slower (measured in
# docs/benchmarks.md). PASSIVE costs nothing measurable on an idle machine. A user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402

COMMANDS = {
    "collect": "Generate a Meta-World dataset with scripted expert policies plus action noise.",
    "pretrain": "Pre-train a Decision Transformer (default: on MT40).",
    "finetune": "Fine-tune a pre-trained DT on one CW10 task (fft, lora, dora, eva, eva_dora, ...).",
    "evaluate": "Online Meta-World rollouts of a run's model; success rates per task.",
    "report": "Tables (paper Table 6 / 19 layout) and plots from run directories.",
    "demo": "The whole pipeline at tiny scale: collect, pretrain, finetune LoRA vs EVA, evaluate.",
}


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    from dt_eva import __version__

    parser = argparse.ArgumentParser(prog="dt-eva", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"dt-eva {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(f"dt_eva.commands.{name}")
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except (UserError, ValueError, FileNotFoundError, KeyError) as e:  # user-facing errors: no traceback
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"dt-eva {args.command}: error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ndt-eva {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
