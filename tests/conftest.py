"""Test-session setup shared by every test file."""

import os

# Before torch is imported (see dt_eva/cli.py): spinning OpenMP threads make the suite many times
# slower on a 2-core CI machine; subprocesses (torchrun, CLI) inherit the setting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Every test uses tiny tensors that gain nothing from a second intra-op thread, and on a busy
    2-core machine (the simulator and subprocesses share it) extra threads only add contention."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
