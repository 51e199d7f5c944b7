"""`EvaConfig`: the knobs of EVA, validated on construction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

_SVD_METHODS = ("auto", "randomized", "exact")
# keys of older saved configs that are read and ignored
_LEGACY_KEYS = frozenset({"whiten"})


@dataclass(frozen=True)
class EvaConfig:
    """Settings of one EVA run.

    rank:        the LoRA rank r; the total budget is N * r over the N target layers.
    rho:         each layer computes round(rho * rank) candidate components; rho = 1 keeps ranks
                 uniform, rho > 1 lets the pooled redistribution move rank between layers.
    tau:         a layer has converged when each component it is currently allocated has
                 |cosine| >= tau with its estimate from the previous batch.
    max_batches: cap on batches; hitting it warns and names the layers that had not converged.
    center:      subtract the running mean before the SVD (incremental PCA, as the reference
                 implementation in PEFT does); False takes the SVD of the raw activations.
    svd:         "auto" (exact SVD for small stacks, randomized subspace iteration otherwise),
                 "randomized" or "exact".
    oversample:  extra random directions of the randomized SVD beyond the kept components.
    power_iters: subspace iterations per batch of the randomized SVD (warm-started from the
                 previous estimate, so few are needed).
    seed:        seed of the randomized SVD's random directions. Under torch.distributed it must be
                 the same on every rank (each rank factorises the same gathered rows; only the data
                 differ per rank); `compute_eva` refuses configs that differ between ranks.
    progress:    show a tqdm bar (rank 0 only under torch.distributed).
    """

    rank: int = 8
    rho: float = 2.0
    tau: float = 0.99
    max_batches: int = 100
    center: bool = True
    svd: str = "auto"
    oversample: int = 8
    power_iters: int = 2
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        def fail(msg: str) -> None:
            raise ValueError(f"EvaConfig: {msg}")

        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            fail(f"rank must be an integer >= 1, got {self.rank!r}")
        if isinstance(self.rho, bool) or not isinstance(self.rho, (int, float)) or not self.rho >= 1:
            fail(f"rho must be a number >= 1 (1 keeps ranks uniform), got {self.rho!r}")
        if isinstance(self.tau, bool) or not isinstance(self.tau, (int, float)) or not 0 <= self.tau <= 1:
            fail(f"tau must be a number in [0, 1] (a cosine-similarity threshold), got {self.tau!r}")
        if isinstance(self.max_batches, bool) or not isinstance(self.max_batches, int) or self.max_batches < 1:
            fail(f"max_batches must be an integer >= 1, got {self.max_batches!r}")
        if not isinstance(self.center, bool):
            fail(f"center must be True or False, got {self.center!r}")
        if self.svd not in _SVD_METHODS:
            fail(f"svd must be one of {', '.join(_SVD_METHODS)}, got {self.svd!r}")
        if isinstance(self.oversample, bool) or not isinstance(self.oversample, int) or self.oversample < 0:
            fail(f"oversample must be an integer >= 0, got {self.oversample!r}")
        if isinstance(self.power_iters, bool) or not isinstance(self.power_iters, int) or self.power_iters < 0:
            fail(f"power_iters must be an integer >= 0, got {self.power_iters!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            fail(f"seed must be an integer, got {self.seed!r}")

    @property
    def num_components(self) -> int:
        """Candidate components per layer: round(rho * rank), at least rank."""
        return max(self.rank, round(self.rho * self.rank))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvaConfig":
        """Inverse of `to_dict`. Also reads results saved by dt-eva 0.1.0, whose config carried a
        `whiten` flag: it is dropped (it never changed the components; EVA-whiten is the adapter
        init "eva_whiten", and PEFT's whitening is an option of `peft_interop`)."""
        data = {k: v for k, v in data.items() if k not in _LEGACY_KEYS}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"EvaConfig: unknown keys {unknown}; valid keys are {sorted(known)}")
        return cls(**data)
