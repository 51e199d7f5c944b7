"""Study II, step 1: each method's learning rate by the protocol's rule (docs/results.md, "Study II").

Reads study I's validation sweep and study II's extension of it, both on the validation split (push,
window-close, seed 100, the same settings), and prints per method the mean held-out action MSE over the
two tasks at the end of the budget for every rate, the chosen (lowest) rate, and whether it lies at an
edge of the extended grid (the protocol then extends the grid again before freezing).

    python scripts/study_ii_select_lr.py [--json OUT]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = (REPO / "studies/cw10-tiny/validation/results.csv", REPO / "studies/cw10-ii/validation/results.csv")
METHODS = ("lora", "eva", "dora", "eva_dora", "fft")
TASKS = ("push", "window-close")


def heldout_by_rate(paths: tuple[Path, ...]) -> dict[str, dict[float, dict[str, float]]]:
    """method -> lr -> task -> the held-out MSE at the end (done rows only)."""
    table: dict[str, dict[float, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for path in paths:
        if not path.is_file():
            continue
        for row in csv.DictReader(path.open(encoding="utf-8")):
            if row.get("status") == "done" and row.get("method") in METHODS and row.get("heldout_loss"):
                table[row["method"]][float(row["lr"])][row["task"]] = float(row["heldout_loss"])
    return table


def choose(table: dict[str, dict[float, dict[str, float]]]) -> dict[str, dict]:
    out = {}
    for method in METHODS:
        rates = sorted(table.get(method, {}))
        means = {lr: sum(table[method][lr].values()) / len(TASKS) if set(table[method][lr]) >= set(TASKS)
                 else math.nan for lr in rates}
        complete = [lr for lr in rates if not math.isnan(means[lr])]
        best = min(complete, key=lambda lr: means[lr]) if len(complete) == len(rates) and rates else None
        edge = best is not None and best in (rates[0], rates[-1])
        out[method] = {"means": means, "chosen": best, "at_edge": edge, "pending": len(rates) - len(complete)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the table and the choices as JSON here")
    args = parser.parse_args()
    choices = choose(heldout_by_rate(SOURCES))
    rates = sorted({lr for c in choices.values() for lr in c["means"]})
    print("| Method | " + " | ".join(f"{lr:g}" for lr in rates) + " | Chosen |")
    print("|---|" + ":-:|" * len(rates) + ":-:|")
    for method, c in choices.items():
        cells = []
        for lr in rates:
            v = c["means"].get(lr)
            cell = "" if v is None else ("pending" if math.isnan(v) else f"{v:.4f}")
            cells.append(f"**{cell}**" if lr == c["chosen"] else cell)
        chosen = "pending" if c["chosen"] is None else f"{c['chosen']:g}" + (" (edge: extend)" if c["at_edge"] else "")
        print(f"| {method} | " + " | ".join(cells) + f" | {chosen} |")
    if args.json:
        args.json.write_text(json.dumps({m: {**c, "means": {str(k): v for k, v in c["means"].items()}}
                                         for m, c in choices.items()}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
