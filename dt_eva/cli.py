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
import errno  # noqa: E402
import importlib  # noqa: E402
import keyword  # noqa: E402
import sys  # noqa: E402
from types import ModuleType  # noqa: E402

COMMANDS = ("collect", "import", "export", "pretrain", "finetune", "sweep", "evaluate", "report", "demo")


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback."""


def command_module(name: str) -> ModuleType:
    """`dt_eva.commands.<name>`; a command named by a Python keyword lives in `<name>_.py` (`import_.py`)."""
    return importlib.import_module(f"dt_eva.commands.{name}{'_' if keyword.iskeyword(name) else ''}")


def build_parser() -> argparse.ArgumentParser:
    return _build_parsers()[0]


def _build_parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The `dt-eva` parser and each command's parser; a command's help text is its module's `HELP`."""
    from dt_eva import __version__

    parser = argparse.ArgumentParser(prog="dt-eva", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"dt-eva {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = {}
    for name in COMMANDS:
        module = command_module(name)
        commands[name] = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(commands[name])
        commands[name].set_defaults(_module=module)
    return parser, commands


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse a command line; a command's `key=value` overrides may stand before, between or after flags."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, commands = _build_parsers()
    if not argv or argv[0] not in commands:  # --help, --version, no or an unknown command
        return parser.parse_args(argv)
    sub = commands[argv[0]]
    # argparse fills a positional list once, so `a=1 --resume b=2` needs the intermixed parse
    args, unknown = sub.parse_known_intermixed_args(argv[1:])
    args.command = argv[0]
    overrides = getattr(args, "overrides", None)
    if overrides is None:  # a command without config overrides
        strays, what = unknown, "a flag of this command"
    else:  # the words after an unknown flag come back with it (its value, overrides): name the culprits
        strays = [a for a in unknown if a.startswith("-")] + [a for a in overrides if "=" not in a] or unknown
        what = "a flag of this command or a key=value config override"
    if strays:
        sub.error(f"{' '.join(strays)}: not {what} (see dt-eva {argv[0]} --help)")
    return args


def _user_message(error: BaseException) -> str | None:
    """The message to print for an error the user can fix, or None for a bug (which keeps its traceback)."""
    if isinstance(error, OSError) and error.filename is not None:  # read-only folder, disk full, ...
        return f"{error.filename}: {error.strerror or error}"
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):  # a write names no path
        return str(error.strerror or error)
    if isinstance(error, (UserError, ValueError, FileNotFoundError, PermissionError)):
        return str(error)
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"\ndt-eva {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        message = _user_message(e)
        if message is None:
            raise
        print(f"dt-eva {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
