"""Test-session setup shared by every test file."""

import os

# Before torch is imported (see dt_eva/cli.py): spinning OpenMP threads make the suite many times
# slower on a 2-core CI machine; subprocesses (torchrun, CLI) inherit the setting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MPLBACKEND", "Agg")
