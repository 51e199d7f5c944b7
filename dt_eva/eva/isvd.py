"""Incremental (truncated) SVD of a stream of activation batches.

State per layer is the running estimate only: k singular values, k x d right-singular vectors,
the running mean (d) and two scalars. Each update stacks the previous estimate `diag(S) V` on
top of the new (centred) rows, plus one mean-correction row, and re-factorises that small matrix
(the incremental PCA of Ross et al. 2008, as sklearn / PEFT do). The factorisation is either an
exact SVD (cheap for small stacks) or a randomized subspace iteration (Halko et al. 2011) that is
warm-started from the previous components, so one or two iterations reach float precision once
the estimate has settled.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import Tensor


class IncrementalSVD:
    """Running top-k right-singular vectors of all rows seen so far.

    `center=True` is incremental PCA (the mean of all rows is removed); `center=False` is the SVD
    of the raw rows. Memory: O(k * d), independent of the number of updates.
    """

    def __init__(
        self,
        num_components: int,
        center: bool = True,
        method: str = "auto",
        oversample: int = 8,
        power_iters: int = 2,
        seed: int = 0,
    ) -> None:
        self.num_components = num_components
        self.center = center
        self.method = method
        self.oversample = oversample
        self.power_iters = power_iters
        self.seed = seed
        self.num_samples = 0
        self.mean: Tensor | None = None
        self.total_sum_squares: Tensor | None = None  # (centred) sum of squares of all rows seen
        self.components: Tensor | None = None  # (k_now, d), orthonormal rows
        self.singular_values: Tensor | None = None  # (k_now,), descending
        self._generator: torch.Generator | None = None

    @torch.no_grad()
    def update(self, rows: Tensor) -> None:
        """Fold a (b, d) batch of rows into the estimate (in fp32, also when called under autocast)."""
        # Hooks call this inside the model's forward, which may run under bf16 autocast: keep the
        # SVD's matmuls out of it.
        with torch.autocast(rows.device.type, enabled=False):
            self._update(rows)

    def _update(self, rows: Tensor) -> None:
        if rows.ndim != 2 or rows.shape[0] == 0:
            raise ValueError(f"IncrementalSVD.update expects a non-empty (rows, features) matrix, got {tuple(rows.shape)}")
        rows = rows.detach().to(torch.float32)
        b = rows.shape[0]
        n = self.num_samples
        parts: list[Tensor] = []
        if self.components is not None:
            parts.append(self.singular_values[:, None] * self.components)
        if self.center:
            batch_mean = rows.mean(dim=0)
            centred = rows - batch_mean
            batch_ss = centred.square().sum()
            parts.append(centred)
            if n == 0:
                new_mean, new_ss = batch_mean, batch_ss
            else:
                # the rows' offset from the old mean is variance too: one correction row carries it
                shift = self.mean - batch_mean
                weight = n * b / (n + b)
                parts.append(math.sqrt(weight) * shift[None, :])
                new_mean = batch_mean + (n / (n + b)) * shift
                new_ss = self.total_sum_squares + batch_ss + weight * shift.square().sum()
            self.mean = new_mean
        else:
            parts.append(rows)
            batch_ss = rows.square().sum()
            new_ss = batch_ss if n == 0 else self.total_sum_squares + batch_ss
        stack = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
        self.singular_values, self.components = self._top_right_singular(stack)
        self.total_sum_squares = new_ss
        self.num_samples = n + b

    def _top_right_singular(self, stack: Tensor) -> tuple[Tensor, Tensor]:
        m, d = stack.shape
        k = min(self.num_components, m, d)
        q = min(k + self.oversample, m, d)
        exact = self.method == "exact" or (self.method == "auto" and min(m, d) <= 2 * q)
        if exact:
            with _single_thread(stack):
                _, s, vh = torch.linalg.svd(stack, full_matrices=False)
            s, v = s[:k], vh[:k]
        else:
            s, v = self._randomized(stack, k, q)
        return s, _fix_signs(v)

    def _randomized(self, stack: Tensor, k: int, q: int) -> tuple[Tensor, Tensor]:
        d = stack.shape[1]
        start = [] if self.components is None else [self.components[:q].T]
        extra = q - (start[0].shape[1] if start else 0)
        if extra > 0:
            if self._generator is None or self._generator.device != stack.device:
                self._generator = torch.Generator(device=stack.device).manual_seed(self.seed)
            start.append(torch.randn(d, extra, generator=self._generator, device=stack.device, dtype=stack.dtype))
        basis = _orthonormal_columns(torch.cat(start, dim=1))
        # a cold start needs a few more iterations than one warm-started from the last estimate
        iters = self.power_iters if self.components is not None else self.power_iters + 2
        for _ in range(iters):
            basis = _orthonormal_columns(stack.T @ (stack @ basis))
        projected = stack @ basis  # Rayleigh-Ritz on the subspace: a thin (m, q) SVD
        with _single_thread(projected):
            _, s, wh = torch.linalg.svd(projected, full_matrices=False)
        return s[:k], (wh[:k] @ basis.T)

    @property
    def explained_variance_ratio(self) -> Tensor:
        """sigma_j^2 / total sum of squares: the fraction of the layer's (centred) input variance."""
        if self.singular_values is None:
            raise RuntimeError("IncrementalSVD has not seen any rows yet")
        total = self.total_sum_squares.clamp_min(torch.finfo(torch.float32).tiny)
        return self.singular_values.square() / total

    def similarity(self, previous: Tensor | None) -> Tensor:
        """|cosine| of each current component with the same-index previous one (0 where missing)."""
        current = self.components
        sim = torch.zeros(self.num_components, device=current.device)
        if previous is None:
            return sim
        k = min(previous.shape[0], current.shape[0])
        cos = torch.nn.functional.cosine_similarity(current[:k], previous[:k], dim=1).abs()
        sim[:k] = cos
        return sim

    def state_bytes(self) -> int:
        """Bytes held by the running estimate (what must not grow with the number of batches)."""
        tensors = (self.mean, self.total_sum_squares, self.components, self.singular_values)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _orthonormal_columns(a: Tensor) -> Tensor:
    with _single_thread(a):
        return torch.linalg.qr(a).Q


@contextlib.contextmanager
def _single_thread(t: Tensor) -> Iterator[None]:
    """Run a thin CPU factorisation on one thread: for these sizes, LAPACK's threading costs more
    than it gains, and on a busy machine thread barriers make it 10-100x slower."""
    if t.device.type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fix_signs(v: Tensor) -> Tensor:
    """Make the largest-magnitude entry of each row positive (a deterministic sign per component)."""
    if v.shape[0] == 0:
        return v
    idx = v.abs().argmax(dim=1)
    signs = torch.sign(v.gather(1, idx[:, None]))
    signs[signs == 0] = 1
    return v * signs
