"""Everything about a run directory: its layout, its marker and lock, creating / guarding / resuming
it, loading the policy of any run, and a torch-free reader of its records for reporting.

`dt_eva.runs.layout` and the readers import no torch; `load_run_model` imports it when called.
"""

from dt_eva.runs.layout import RunPaths


def load_run_model(run_dir, device="cpu"):
    """The policy of any run directory (pre-training or fine-tuning) and `info` about it."""
    from dt_eva.runs.policy import load_run_model as _load

    return _load(run_dir, device)


def run_kind(run_dir):
    from dt_eva.runs.policy import run_kind as _kind

    return _kind(run_dir)


__all__ = ["RunPaths", "load_run_model", "run_kind"]
