"""Check that a refactor changes nothing a user can observe (issue 17's constraint).

    python scripts/check_outputs_identical.py            # the working tree against main
    python scripts/check_outputs_identical.py --ref HEAD~1 --keep /tmp/out

Runs the same tiny jobs twice, with the code of the reference commit (a temporary `git worktree`, put
first on PYTHONPATH) and with the working tree: `dt-eva collect` (hammer + reach, 2 episodes at noise 0
and 0.3), a tiny `dt-eva pretrain`, 4-step `dt-eva finetune` runs of LoRA, EVA, DoRA, PiSSA, FFT and
AdaLoRA with online evaluation (1 episode) and the held-out probe, and `dt-eva report` on the committed
study folder studies/cw10-tiny/main. Everything runs in fp32 on the CPU with one torch thread, so the
two sides are bit-identical unless the code differs. Then every file the jobs wrote is compared
exactly: JSON and JSONL values (losses, evaluation records, held-out MSE, EVA ranks; minus timings,
dates, versions and the output folder's path), tensors of every .pt / .safetensors file, and the bytes
of every other file (report tables, figures). TensorBoard event files hold wall times and are skipped.
Prints a table of what matched; exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STUDY = "studies/cw10-tiny/main"
METHODS = ("lora", "eva", "dora", "pissa", "fft", "adalora")
TINY_MODEL = ["model.hidden_size=32", "model.n_layer=2", "model.n_head=2", "model.context_len=5", "model.dropout=0.1"]
# keys whose values change from one run to the next whatever the code: wall times, dates, hosts, the
# command line, and the SHA-256 of the base's model.pt (torch.save names the archive after the atomic
# write's random temporary file; the base's tensors themselves are compared)
VOLATILE_KEYS = {"created", "resumed", "versions", "command", "run_id", "host", "pid", "elapsed", "sha256"}
VOLATILE_SUFFIXES = ("seconds", "per_s")  # seconds, eval/seconds, tokens_per_s, env_steps_per_s, ...
SKIPPED_DIRS = {"tb"}
SKIPPED_FILES = {".dt-eva.lock"}


# --- the jobs (run in a child process, with PYTHONPATH choosing the code) ----------------------------
def produce(out: Path) -> None:
    """Run every job into `out` with whatever `dt_eva` is first on the path."""
    import torch

    torch.set_num_threads(1)
    import dt_eva
    from dt_eva.cli import main

    configs = Path(dt_eva.__file__).resolve().parents[1] / "configs"  # the side's own presets
    data, pre = out / "data", out / "runs" / "pre"
    common = ["train.progress=false", "train.device=cpu", "train.precision=fp32"]
    _cli(main, ["collect", "--tasks", "hammer,reach", "--episodes", "2", "--noise", "0,0.3", "--out", str(data),
                "--seed", "0", "--workers", "1", "--no-progress"])
    _cli(main, ["pretrain", "-c", str(configs / "pretrain/tiny.yaml"), f"data.path={data}", f"run_dir={pre}",
                "name=pre", *TINY_MODEL, "train.steps=10", "train.batch_size=16", "train.log_every=5",
                "train.ckpt_every=10", "train.eval_every=10", "train.eval_tasks=reach", "train.eval_episodes=1",
                "optim.warmup_steps=2", "optim.lr=1e-3", *common])
    for method in METHODS:
        _cli(main, ["finetune", "-c", str(configs / "finetune/tiny.yaml"), f"checkpoint={pre}",
                    f"data.path={data}", f"run_dir={out / 'runs' / method}", "task=hammer", f"method={method}",
                    "rank=2", "rho=2", "train.steps=4", "train.batch_size=8", "train.log_every=1",
                    "train.ckpt_every=100", "train.eval_every=4", "train.eval_episodes=1", "train.probe_every=2",
                    f"heldout_path={data}", "optim.warmup_steps=1", "optim.lr=3e-3", "eva.batch_size=4",
                    "eva.max_batches=20", "eva.tau=0.9", "adalora.delta_t=1", *common])
    _cli(main, ["report", str(REPO / STUDY), "--out", str(out / "report")])  # the same input for both sides


def _cli(main: Any, argv: list[str]) -> None:
    print("$ dt-eva " + " ".join(argv), file=sys.stderr, flush=True)
    code = main(argv)
    if code:
        raise SystemExit(f"dt-eva {argv[0]} failed with exit status {code}")


def run_side(code_root: Path, out: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(code_root), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               OMP_WAIT_POLICY="PASSIVE", MPLBACKEND="Agg", CUDA_VISIBLE_DEVICES="", PYTHONHASHSEED="0")
    cmd = ["nice", "-n", "5", sys.executable, str(Path(__file__).resolve()), "--produce", str(out)]
    return subprocess.Popen(cmd, env=env, cwd=out.parent, stdout=log.open("w"), stderr=subprocess.STDOUT)


# --- the comparison ----------------------------------------------------------------------------------
def files_below(root: Path) -> set[str]:
    found = set()
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and not SKIPPED_DIRS & set(rel.parts[:-1]) and path.name not in SKIPPED_FILES:
            found.add(rel.as_posix())
    return found


def volatile(key: Any) -> bool:
    return isinstance(key, str) and (key in VOLATILE_KEYS or key.endswith(VOLATILE_SUFFIXES))


def normalised(value: Any, root: str) -> Any:
    """Data without the volatile keys, with the output folder's path written as <OUT>."""
    if isinstance(value, dict):
        return {k: normalised(v, root) for k, v in value.items() if not volatile(k)}
    if isinstance(value, tuple):
        return tuple(normalised(v, root) for v in value)
    if isinstance(value, list):
        return [normalised(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(root, "<OUT>")
    return value


def read_json_any(path: Path, root: Path) -> Any:
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [normalised(json.loads(line), str(root)) for line in text.splitlines() if line.strip()]
    return normalised(json.loads(text), str(root))


def difference(a: Any, b: Any, where: str = "") -> str | None:
    """Where `a` and `b` first differ (a key path), or None when they are exactly equal."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
        return None if same else where or "tensor"
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{where} keys {sorted(map(str, a.keys() ^ b.keys()))}"
        return next((d for k in a if (d := difference(a[k], b[k], f"{where}/{k}"))), None)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            return f"{where} length {len(a)} != {len(b)}"
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := difference(x, y, f"{where}[{i}]"))), None)
    same = a == b or (a != a and b != b)  # NaN == NaN here
    return None if same else (where or "content")


def load_any(path: Path, root: Path) -> Any:
    if path.suffix in (".json", ".jsonl"):
        return read_json_any(path, root)
    if path.suffix == ".pt":
        import torch

        return normalised(torch.load(path, map_location="cpu", weights_only=False), str(root))
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    if path.suffix in (".yaml", ".md", ".csv", ".txt"):
        return path.read_text().replace(str(root), "<OUT>")
    return path.read_bytes()


def compare(ref: Path, new: Path) -> list[tuple[str, str, str]]:
    """(job, file, verdict) for every file either side wrote."""
    rows = []
    for rel in sorted(files_below(ref) | files_below(new)):
        a, b = ref / rel, new / rel
        if not a.exists() or not b.exists():
            verdict = "only in " + ("the reference" if a.exists() else "the working tree")
        else:
            where = difference(load_any(a, ref), load_any(b, new))
            verdict = "identical" if where is None else f"DIFFERENT at {where}"
        rows.append((job_of(rel), rel, verdict))
    return rows


def job_of(rel: str) -> str:
    parts = rel.split("/")
    return "/".join(parts[:2]) if parts[0] == "runs" else parts[0]


def what_it_holds(rel: str) -> str:
    name = rel.rsplit("/", 1)[-1]
    if name == "metrics.jsonl":
        return "losses, held-out MSE"
    if "/evals/" in rel or name == "eval.json":
        return "evaluation record"
    if rel.startswith("runs/eva/eva/"):  # eva.json, result.json: the ranks per layer
        return "EVA ranks / result"
    if name == "summary.json":
        return "summary (held-out MSE, ranks)"
    if name == "model.pt":
        return "model.pt tensors"
    return "report file" if rel.startswith("report/") else ""


def print_table(rows: list[tuple[str, str, str]], every_file: bool) -> None:
    """Files identical per job and per kind of output; then each file that differs (or every file)."""
    kinds = [k for k in ("losses, held-out MSE", "evaluation record", "summary (held-out MSE, ranks)",
                         "EVA ranks / result", "model.pt tensors", "report file", "")
             if any(what_it_holds(r[1]) == k for r in rows)]
    print(f"{'job':<13}" + "".join(f" | {k or 'other files':^{max(len(k), 11)}}" for k in kinds))
    for job in sorted({r[0] for r in rows}):
        cells = []
        for kind in kinds:
            mine = [r for r in rows if r[0] == job and what_it_holds(r[1]) == kind]
            same = sum(r[2] == "identical" for r in mine)
            cells.append(f"{same}/{len(mine)} same" if mine else "-")
        print(f"{job:<13}" + "".join(f" | {c:^{max(len(k), 11)}}" for c, k in zip(cells, kinds)))
    shown = [r for r in rows if every_file or r[2] != "identical"]
    if shown:
        print()
        width = max(len(r[1]) for r in shown)
        for _, rel, verdict in shown:
            print(f"{rel:<{width}}  {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="main", help="the reference commit (default: main)")
    parser.add_argument("--keep", type=Path, help="keep the outputs of both sides in this folder")
    parser.add_argument("--every-file", action="store_true", help="list every file compared, not only those that differ")
    parser.add_argument("--produce", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.produce:
        produce(args.produce)
        return 0
    if args.keep and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep {args.keep}: the folder is not empty; name a new or empty one")
    commit = subprocess.run(["git", "rev-parse", "--short", args.ref], cwd=REPO, check=True, capture_output=True,
                            text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="dt-eva-identical-") as tmp:
        work = args.keep or Path(tmp)
        code = Path(tmp) / "ref-code"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(code), commit], cwd=REPO, check=True)
        try:
            return check_sides(code, work, commit, args.every_file)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(code)], cwd=REPO, check=False)


def check_sides(code: Path, work: Path, commit: str, every_file: bool) -> int:
    sides = {"ref": (code, work / "ref" / "out"), "new": (REPO, work / "new" / "out")}
    procs = {}
    for side, (root, out) in sides.items():
        out.parent.mkdir(parents=True, exist_ok=True)
        procs[side] = run_side(root, out, out.parent / "log.txt")
    failed = [side for side, p in procs.items() if p.wait() != 0]
    for side in failed:
        print(f"the {side} side failed; its log:\n" + (sides[side][1].parent / "log.txt").read_text()[-3000:])
    if failed:
        return 1
    rows = compare(sides["ref"][1], sides["new"][1])
    print(f"Outputs of {commit} (reference) and the working tree:")
    print_table(rows, every_file)
    bad = [r for r in rows if r[2] != "identical"]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} files identical" + (f"; {len(bad)} differ" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
