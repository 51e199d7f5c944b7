"""Time and memory of `dt-eva import --from l2m` on a full-size synthetic L2M replay buffer.

    python scripts/bench_import_l2m.py                      # 2M transitions (one paper task), np.savez layout
    python scripts/bench_import_l2m.py --compressed         # np.savez_compressed layout
    python scripts/bench_import_l2m.py --transitions 200000 # smaller

Builds `<work>/l2m/hammer-v2.npz` in exactly L2M's layout (observations / next_observations [N, 39],
actions [N, 4], rewards [N], dones [N] float32, a done every 200 steps; random values), streamed into
the zip so building it does not need the arrays in memory either. Then converts it in a fresh
process and reports wall time, that process's peak RSS (VmHWM; it includes the page cache of the
files the loader's validation memory-maps), the peak of its anonymous memory (RssAnon, sampled every
5 ms), the peak of Python / numpy allocations (`tracemalloc`), and the same for a process that only
imports the modules, against the file size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

CHUNK = 200_000


def _write_member(archive: zipfile.ZipFile, name: str, shape: tuple[int, ...], fill) -> None:
    with archive.open(f"{name}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
        for start in range(0, shape[0], CHUNK):
            f.write(np.ascontiguousarray(fill(start, min(CHUNK, shape[0] - start)), dtype=np.float32).tobytes())


def build(path: Path, n: int, compressed: bool) -> None:
    rng = np.random.default_rng(0)
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=method, allowZip64=True) as archive:
        for name in ("observations", "next_observations"):
            _write_member(archive, name, (n, 39), lambda s, k: rng.standard_normal((k, 39)))
        _write_member(archive, "actions", (n, 4), lambda s, k: rng.uniform(-1, 1, (k, 4)))
        _write_member(archive, "rewards", (n,), lambda s, k: rng.uniform(0, 10, k))
        _write_member(archive, "dones", (n,), lambda s, k: (np.arange(s, s + k) % 200 == 199))


def _status_mb(*keys: str) -> dict[str, float]:
    """Fields of /proc/self/status in MB (Linux)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in keys:
            out[key] = int(value.split()[0]) / 1024
    return out


class _AnonPeak(threading.Thread):
    """Samples RssAnon (heap, numpy buffers; not the page cache of mapped files) every 5 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, _status_mb("RssAnon")["RssAnon"])


def measure(src: str, out: str, baseline: bool) -> None:
    """Runs in the child process: prints one JSON line."""
    import tracemalloc

    from dt_eva.data.interop import l2m  # noqa: F401  (the baseline imports the same modules)

    result: dict = {}
    if not baseline:
        sampler = _AnonPeak()
        sampler.start()
        tracemalloc.start()
        t0 = time.perf_counter()
        meta = l2m.import_l2m(src, out)
        result["seconds"] = time.perf_counter() - t0
        result["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        result["episodes"] = meta["episodes_per_task"]["hammer-v3"]
        sampler.stop.set()
        sampler.join()
        result["anon_peak_mb"] = sampler.peak
    # VmHWM: peak RSS of this process image (ru_maxrss would carry the parent's over fork + exec)
    result["max_rss_mb"] = _status_mb("VmHWM")["VmHWM"]
    result["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["anon_end_mb"] = _status_mb("RssAnon")["RssAnon"]
    print(json.dumps(result))


def _child(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=2_000_000)
    parser.add_argument("--compressed", action="store_true")
    parser.add_argument("--work", default=None, help="folder for the file and the output (default: a temp dir)")
    parser.add_argument("--measure", nargs=2, metavar=("SRC", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return measure(*args.measure, baseline=args.baseline)
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        src = Path(work) / "l2m" / "hammer-v2.npz"
        t0 = time.perf_counter()
        build(src, args.transitions, args.compressed)
        built = time.perf_counter() - t0
        base = _child("--measure", "-", "-", "--baseline")
        run = _child("--measure", str(src.parent), str(Path(work) / "out"))
        file_mb = src.stat().st_size / 2**20
        out_mb = sum(p.stat().st_size for p in (Path(work) / "out").rglob("*") if p.is_file()) / 2**20
    from dt_eva.utils.precision import cpu_model

    print(json.dumps({  # the CPU and date: every figure names them (docs/benchmarks.md)
        "cpu": cpu_model(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "transitions": args.transitions, "layout": "savez_compressed" if args.compressed else "savez",
        "file_mb": round(file_mb, 1), "build_s": round(built, 1), "convert_s": round(run["seconds"], 1),
        "episodes": run["episodes"], "output_mb": round(out_mb, 1), "peak_rss_mb": round(run["max_rss_mb"], 1),
        "baseline_rss_mb": round(base["max_rss_mb"], 1), "anon_peak_mb": round(run["anon_peak_mb"], 1),
        "baseline_anon_mb": round(base["anon_end_mb"], 1), "tracemalloc_peak_mb": round(run["tracemalloc_peak_mb"], 1),
    }, indent=1))


if __name__ == "__main__":
    main()
