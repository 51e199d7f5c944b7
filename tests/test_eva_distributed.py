"""EVA under torch.distributed: 2 CPU processes (gloo) launched with torchrun from this test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

NUM_BATCHES = 30
# a randomized SVD with no oversampling or extra iterations: its start directions, drawn from the
# seed, shape every estimate, so ranks agree only if they share the seed
SEEDED = dict(rank=2, rho=2.0, tau=0.99, max_batches=NUM_BATCHES, svd="randomized", oversample=0, power_iters=0,
              seed=5, progress=False)


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4))


def full_batches(n: int):
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(5, 12, generator=g)
    scales = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5])
    for _ in range(n):
        yield (torch.randn(32, 5, generator=g) * scales) @ basis + 0.05 * torch.randn(32, 12, generator=g)


def _torchrun() -> list[str]:
    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    return [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]


@pytest.mark.slow
def test_two_ranks_with_different_data_and_one_seed_compute_identical_results_equal_to_one_process(tmp_path):
    from dt_eva.eva import EvaConfig, EvaResult, compute_eva

    worker = Path(__file__).with_name("dist_eva_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = _torchrun() + ["--standalone", "--nproc_per_node=2", str(worker), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    names = ["0", "2", "4"]  # the three Linear layers
    for tag in ("", "_local", "_seeded", "_seeded_local"):
        # "_local": what each rank computed itself from its own half of the data, before the final
        # broadcast; equal bit for bit because every rank factorises the same gathered rows, seed included
        r0, r1 = EvaResult.load(tmp_path / f"rank0{tag}"), EvaResult.load(tmp_path / f"rank1{tag}")
        assert list(r0.ranks) == names and sum(r0.ranks.values()) == r0.budget == 6, tag
        assert (r0.ranks, r0.converged, r0.num_batches, r0.num_samples) == (
            r1.ranks, r1.converged, r1.num_batches, r1.num_samples), tag
        assert all(r0.converged.values()) and r0.num_batches > 2, tag
        for name in names:
            assert torch.equal(r0.components[name], r1.components[name]), (tag, name)
            assert torch.equal(r0.singular_values[name], r1.singular_values[name]), (tag, name)
            assert torch.equal(r0.candidate_explained_variance_ratio[name], r1.candidate_explained_variance_ratio[name])

    # the seed matters for the seeded config: with another seed, one process on the same data differs
    seeded = {s: compute_eva(build_model(), full_batches(NUM_BATCHES), EvaConfig(**{**SEEDED, "seed": s})) for s in (5, 6)}
    assert any(not torch.equal(seeded[5].components[n], seeded[6].components[n]) for n in names)
    r0 = EvaResult.load(tmp_path / "rank0_seeded_local")
    assert r0.ranks == seeded[5].ranks and r0.num_samples == seeded[5].num_samples
    for name in names:
        torch.testing.assert_close(r0.components[name], seeded[5].components[name], atol=1e-4, rtol=1e-4)

    # a seed that differs per rank is refused on every rank, naming the values
    for rank in (0, 1):
        message = (tmp_path / f"rank{rank}_refused.txt").read_text()
        assert "EvaConfig differs between ranks (rank 0: seed=5; rank 1: seed=6)" in message

    # the gathered rows of step i are rank 0's half then rank 1's half: the whole batch i
    r0 = EvaResult.load(tmp_path / "rank0")
    single = compute_eva(build_model(), full_batches(NUM_BATCHES),
                         EvaConfig(rank=2, rho=2.0, tau=0.99, max_batches=NUM_BATCHES, progress=False))
    assert single.ranks == r0.ranks and single.num_batches == r0.num_batches
    assert single.num_samples == r0.num_samples
    for name in names:
        torch.testing.assert_close(r0.components[name], single.components[name], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(r0.singular_values[name], single.singular_values[name], atol=1e-4, rtol=1e-4)

    s0, s1 = EvaResult.load(tmp_path / "rank0_short"), EvaResult.load(tmp_path / "rank1_short")
    assert s0.num_batches == s1.num_batches == 2
    assert list(s0.ranks) == names and all(torch.equal(s0.components[n], s1.components[n]) for n in names)
