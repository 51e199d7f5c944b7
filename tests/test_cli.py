"""The `dt-eva` command line: overrides anywhere, clear errors for stray words, which errors are the
user's (one line) and which are bugs (a traceback), and each command's `HELP` as its one help text."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from dt_eva.cli import COMMANDS, UserError, build_parser, command_module, main, parse_args
from dt_eva.config import load_config
from dt_eva.runs.configs import PretrainConfig

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs/pretrain/tiny.yaml")
LEGACY_RUNS = REPO / "tests/fixtures/legacy/runs"


def test_overrides_may_stand_before_between_and_after_flags():
    args = parse_args(["pretrain", "train.steps=5", "--config", TINY, "name=a b", "--resume", "seed=3"])
    assert (args.command, args.config, args.resume, args.force) == ("pretrain", TINY, True, False)
    assert args.overrides == ["train.steps=5", "name=a b", "seed=3"]  # in the order given: later ones win
    args = parse_args(["finetune", "train.steps=5", "--rank", "4", "eva.max_batches=2", "--method", "lora"])
    assert (args.rank, args.method, args.overrides) == (4, "lora", ["train.steps=5", "eva.max_batches=2"])
    args = parse_args(["report", "runs/a", "--no-plots", "runs/b"])  # a positional list split by a flag
    assert (args.runs, args.no_plots) == (["runs/a", "runs/b"], True)


def test_overrides_before_a_flag_reach_the_config(capsys):
    # Before the fix argparse stopped here with a bare "unrecognized arguments"; now the override is
    # read and refused by the config loader, which names the key (no training starts).
    assert main(["pretrain", "train.stepz=5", "--config", TINY, "train.steps=2"]) == 1
    err = capsys.readouterr().err
    assert "dt-eva pretrain: error: unknown config key 'train.stepz'" in err and "'steps'" in err
    args = parse_args(["pretrain", "run_dir=exp #2", "--config", TINY, "data.tasks=hammer,push"])
    cfg = load_config(PretrainConfig, args.config, args.overrides)
    assert (cfg.run_dir, cfg.data.tasks) == ("exp #2", "hammer,push")  # '#' is not a comment


@pytest.mark.parametrize(
    "argv, culprits, hint",
    [
        (["pretrain", "train.steps=5", "--bogus", "x=1"], "--bogus", "key=value config override"),
        (["pretrain", "--config", TINY, "steps"], "steps", "key=value config override"),
        (["finetune", "--rnak", "4"], "--rnak 4", "key=value config override"),
        (["evaluate", "--run", "r", "train.steps=5"], "train.steps=5", "not a flag of this command"),
    ],
)
def test_a_word_that_is_neither_flag_nor_override_is_named(argv, culprits, hint, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"dt-eva {argv[0]}: error: {culprits}: not " in err and hint in err
    assert f"dt-eva {argv[0]} --help" in err


def test_an_os_error_naming_a_path_is_one_line(tmp_path, capsys):
    # A real file-system error: the report's output folder would have to be made inside a file.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["report", str(LEGACY_RUNS), "--out", str(blocker / "out"), "--no-plots"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"dt-eva report: error: {blocker / 'out'}: Not a directory"


@pytest.mark.parametrize(
    "error, printed",
    [
        (ValueError("train.steps must be >= 1"), "train.steps must be >= 1"),
        (UserError("nothing to resume in runs/x"), "nothing to resume in runs/x"),
        (FileNotFoundError("dataset data/x does not exist"), "dataset data/x does not exist"),
        (PermissionError(13, "Permission denied", "/runs/x/config.yaml"), "/runs/x/config.yaml: Permission denied"),
        (OSError(28, "No space left on device"), "No space left on device"),
    ],
)
def test_user_errors_print_one_line(monkeypatch, capsys, error, printed):
    # The command body is replaced by one that raises: what is under test is main()'s error policy.
    def run(args):
        raise error

    monkeypatch.setattr(importlib.import_module("dt_eva.commands.evaluate"), "run", run)
    assert main(["evaluate", "--run", "r"]) == 1
    assert capsys.readouterr().err == f"dt-eva evaluate: error: {printed}\n"


@pytest.mark.parametrize("error", [KeyError("summary"), TypeError("bad call"), OSError(5, "Input/output error")])
def test_bugs_keep_their_traceback(monkeypatch, error):
    def run(args):
        raise error

    monkeypatch.setattr(importlib.import_module("dt_eva.commands.evaluate"), "run", run)
    with pytest.raises(type(error)):
        main(["evaluate", "--run", "r"])


def test_each_commands_help_text_is_its_modules_help(monkeypatch, capsys):
    parser = build_parser()
    top_help = " ".join(parser.format_help().split())  # argparse wraps lines
    for name in COMMANDS:
        module = command_module(name)
        assert " ".join(module.HELP.split()) in top_help
    monkeypatch.setattr(importlib.import_module("dt_eva.commands.pretrain"), "HELP", "A new help text.")
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    assert "A new help text." in capsys.readouterr().out


def test_help_of_the_installed_entry_point():
    done = subprocess.run([sys.executable, "-m", "dt_eva.cli", "pretrain", "--help"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: dt-eva pretrain" in done.stdout and "key=value" in done.stdout
