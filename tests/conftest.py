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


@pytest.fixture(scope="session")
def collected_reach_window(tmp_path_factory):
    """A real `dt-eva collect` dataset for the import / export tests: reach-v3 and window-close-v3,
    3 episodes each (noise 0 and 0.5), seed 0."""
    from dt_eva.data import collect_dataset

    out = tmp_path_factory.mktemp("data") / "collected"
    collect_dataset(out, ["reach-v3", "window-close-v3"], episodes=3, noise_levels=[0.0, 0.5], seed=0, workers=1,
                    progress=False)
    return out


@pytest.fixture(autouse=True)
def _few_rliable_resamples(monkeypatch):
    """rliable's stratified bootstrap (2,000 resamples per interval) dominates a study report's time; tests
    check its point estimates and the sections' shape, which do not depend on the number of resamples."""
    import dt_eva.reporting.study.rliable as study_rliable

    monkeypatch.setattr(study_rliable, "REPS", 50)
