"""`dt-eva import`: convert the paper's L2M replay buffers, or local Minari datasets, into a dt-eva dataset."""

from __future__ import annotations

import argparse

HELP = "Convert L2M Meta-World replay buffers (the paper's data) or local Minari datasets into a dt-eva dataset."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="kind", required=True, choices=("l2m", "minari"),
                        help="l2m: a folder of <task>-v2.npz files (or <task>-v2/ trajectory folders); "
                             "minari: Minari dataset ids")
    parser.add_argument("source", help="l2m: the folder; minari: ID[,ID...] (e.g. mine/hammer-v0), or NAMESPACE/ "
                                       "for every local dataset in a namespace")
    parser.add_argument("--out", required=True, help="new dataset directory, e.g. data/l2m-mt40")
    parser.add_argument("--tasks", default=None,
                        help="l2m: mt40, cw10, mt50 or a comma list of tasks (default: every task found)")
    parser.add_argument("--drop-short", action="store_true",
                        help="leave out episodes that are not 200 steps long (default: refuse the import)")


def _done(source) -> None:
    print(f"{source.task}: {source.episodes} episodes from {source.origin}", flush=True)


def run(args: argparse.Namespace) -> int:
    from dt_eva.data import dataset_summary
    from dt_eva.utils.io import check_writable_dir

    check_writable_dir(args.out)
    if args.kind == "l2m":
        from dt_eva.data.interop.l2m import import_l2m

        meta = import_l2m(args.source, args.out, tasks=args.tasks, drop_short=args.drop_short, on_task=_done)
    else:
        from dt_eva.data.interop.minari_io import import_minari

        if args.tasks is not None:
            raise ValueError("--tasks is for --from l2m; with --from minari, list the dataset ids to import")
        meta = import_minari(args.source, args.out, drop_short=args.drop_short, on_task=_done)
    print(dataset_summary(meta))
    dropped = sum(meta["short_episodes_dropped"].values())
    n = len(meta["tasks"])
    source = f"{meta['source']['kind']} {meta['source']['path']}"
    print(f"\n{args.out}: {n} task{'s' if n != 1 else ''} imported from {source}"
          + (f"; {dropped} short episodes left out" if dropped else ""))
    return 0
