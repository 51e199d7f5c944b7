"""`dt-eva export`: write a dt-eva dataset as Minari datasets, one per task."""

from __future__ import annotations

import argparse

HELP = "Write a dt-eva dataset as Minari datasets (NAMESPACE/<task>-v0, one per task)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--to", dest="kind", required=True, choices=("minari",), help="the target format")
    parser.add_argument("dataset", help="a dt-eva dataset directory, e.g. data/cw10-tiny")
    parser.add_argument("--id", dest="namespace", required=True,
                        help="Minari namespace: writes NAMESPACE/<task>-v0 under MINARI_DATASETS_PATH "
                             "(default ~/.minari/datasets)")
    parser.add_argument("--tasks", default=None, help="a subset: cw10, or a comma list of tasks (default: all)")


def run(args: argparse.Namespace) -> int:
    from dt_eva.data.interop.minari_io import export_minari

    written = export_minari(args.dataset, args.namespace, tasks=args.tasks)
    for dataset_id, path in written.items():
        print(f"{dataset_id}: {path}")
    print(f"\n{len(written)} Minari dataset(s) written; load one with minari.load_dataset({next(iter(written))!r})")
    return 0
