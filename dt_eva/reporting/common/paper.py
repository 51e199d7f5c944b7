"""The paper's numbers and design that the reports compare against, in one place."""

from __future__ import annotations

# The paper's Table 6, average CW10 success over its tasks (PAPER.md); 100K updates on its DT.
PAPER_TABLE6_AVG = {"fft": 0.92, "lora": 0.86, "adalora": 0.80, "pissa": 0.85, "olora": 0.88, "eva": 0.90,
                    "dora": 0.93, "eva_dora": 0.94}
# The paired comparisons (first - second) the paper's claims rest on, and the study tests
COMPARISONS = (("eva", "lora"), ("eva_dora", "dora"), ("eva", "fft"))
