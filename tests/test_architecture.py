"""The shape of the package (docs/architecture.md): layers import downward only, and the experiment
layer stays made of short functions."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_layers_import_downward_only():
    # the contract lives in pyproject.toml ([tool.importlinter]); a new upward import breaks it
    done = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.exit(lint_imports_command())"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


def test_every_function_in_the_package_stays_short():
    # every module, sub-packages included (experiments/sweep/, reporting/study/, ...): docstring and body
    too_long = []
    for path in sorted((REPO / "dt_eva").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    too_long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({length} lines)")
    assert not too_long, "functions over 60 lines: " + ", ".join(too_long)


def test_the_torch_free_modules_import_without_torch():
    code = ("import sys; import dt_eva.methods, dt_eva.runs, dt_eva.runs.layout, dt_eva.runs.marker; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('dt_eva'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
