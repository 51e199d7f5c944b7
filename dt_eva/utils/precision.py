"""Device and mixed-precision choice: bf16 autocast where the hardware runs bf16 matmuls natively, fp32 elsewhere."""

from __future__ import annotations

import contextlib
import functools
from typing import ContextManager

import torch

PRECISIONS = ("auto", "bf16", "fp32")

#: CPU features with native bf16 matmul instructions (x86: AVX512-BF16 dot products, AMX tiles).
NATIVE_BF16_CPU_FEATURES = ("avx512_bf16", "amx_bf16")


def resolve_device(spec: str = "auto", local_rank: int | None = None, key: str = "train.device=") -> torch.device:
    """"auto" -> CUDA (this rank's GPU under DDP) when available, else CPU; "cuda" / "cuda:N" / "cpu".
    A string torch does not know (`banana`) or CUDA where there is none is a `ValueError` naming `key`."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:  # torch.device() rejects the string
        raise ValueError(f"{key}{spec!r} is not a torch device; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{key}{spec!r} but CUDA is not available in this torch ({torch.__version__}); "
                             f"use {key}cpu or auto")
        if device.index is None:
            device = torch.device("cuda", local_rank or 0)
    return device


def cpu_native_bf16_features(flags: set[str] | None = None) -> list[str]:
    """Which of `NATIVE_BF16_CPU_FEATURES` this CPU has (empty: bf16 matmuls are emulated, i.e. slow).

    `flags` is a set of CPU feature names for tests; by default they come from torch's cpuinfo
    (`torch.cpu.get_capabilities()`), or from the `flags` line of /proc/cpuinfo on older torch.
    """
    if flags is None:
        flags = _host_cpu_flags()
    return [f for f in NATIVE_BF16_CPU_FEATURES if f in flags]


@functools.lru_cache(maxsize=1)
def _host_cpu_flags() -> frozenset[str]:
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is not None:
        try:
            return frozenset(name for name, value in get_capabilities().items() if value is True)
        except Exception:  # an unknown CPU: fall through to /proc/cpuinfo
            pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


#: CPU features that set a CPU's arithmetic speed and precision paths (recorded with every measurement).
RECORDED_CPU_FEATURES = ("avx2", "avx512f", *NATIVE_BF16_CPU_FEATURES)


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """This machine's CPU as recorded in summaries, evaluation records and results.csv, e.g.
    "AMD EPYC (avx2, avx512f, avx512_bf16)": the model name alone does not tell an AVX2-only EPYC from
    one with native bf16, and the two give different arithmetic under `precision: auto`."""
    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if not name:
        import platform

        name = platform.processor() or platform.machine() or "unknown CPU"
    flags = _host_cpu_flags()
    # torch's cpuinfo says avx512_f where /proc/cpuinfo says avx512f
    features = [f for f in RECORDED_CPU_FEATURES if f in flags or f.replace("avx512f", "avx512_f") in flags]
    return f"{name} ({', '.join(features)})" if features else name


def cpu_has_native_bf16() -> bool:
    """True when this CPU executes bf16 matmuls natively (AVX512-BF16 or AMX-BF16)."""
    return bool(cpu_native_bf16_features())


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype (`torch.bfloat16`) or None for plain fp32.

    - "auto": bf16 autocast on CUDA GPUs with bf16 support (Ampere and newer) and on CPUs with native
      bf16 matmuls (AVX512-BF16 or AMX-BF16: about twice the fp32 matmul rate); fp32 everywhere else.
      On a CPU without them bf16 matmuls are emulated and run many times slower than fp32 (measured
      ~47x on an AVX2-only EPYC), so "auto" never picks bf16 there.
    - "bf16": forces bf16 autocast; a `ValueError` on hardware without native bf16 (the slow path).
    - "fp32": no autocast.

    What bf16 autocast covers: the matmuls (linear layers, attention) run in bf16 with fp32
    accumulation. Everything that must stay exact stays fp32: master weights and gradients (autocast
    casts a bf16 copy per op), the optimizer state, layer norms and softmax (autocast's fp32 list),
    the loss (`DecisionTransformer.loss` computes the MSE on `.float()` tensors), EVA's SVD
    (`dt_eva.eva.capture` hands fp32 rows to it) and checkpoints (the weights are fp32). bf16 has
    fp32's exponent range, so no loss scaling (GradScaler) is needed.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {list(PRECISIONS)}")
    if precision == "fp32":
        return None
    native = _native_bf16(device)
    if precision == "auto":
        return torch.bfloat16 if native else None
    if not native:  # forced bf16
        if device.type == "cuda":
            raise ValueError("precision=bf16 but this GPU has no bf16 support; use precision=fp32 or auto")
        raise ValueError(
            f"precision=bf16 but this {device.type.upper()} has no native bf16 matmuls (none of "
            f"{', '.join(NATIVE_BF16_CPU_FEATURES)}): bf16 would be emulated and run many times slower than "
            "fp32 (measured ~47x for a 1024^2 matmul on an AVX2-only CPU); use precision=auto or fp32"
        )
    return torch.bfloat16


def resolve_model_precision(precision: str, device: torch.device | str, weight_dtype: torch.dtype) -> torch.dtype | None:
    """`resolve_precision` for a model whose weights are `weight_dtype`.

    Autocast lowers fp32 ops only: it leaves a float64 model's ops in float64, so bf16 weights of a
    low-precision copy would meet float64 inputs. "auto" therefore runs a model that is not fp32 as it
    is (None); a forced "bf16" for such a model is an error that names its dtype.
    """
    dtype = resolve_precision(precision, device)
    if dtype is None or weight_dtype == torch.float32:
        return dtype
    if precision == "auto":
        return None
    raise _needs_fp32_weights(weight_dtype)


def check_resolved(dtype: object, weight_dtype: torch.dtype = torch.float32) -> torch.dtype | None:
    """`dtype` as the floors below the drivers take it: a resolved autocast dtype (`torch.bfloat16`) or None
    (fp32), for a model whose weights are `weight_dtype`.

    A precision option ("auto", "bf16", "fp32") is a `TypeError`: the driver resolves it once per run
    (`resolve_precision` / `resolve_model_precision`) and passes the result down, so that no two places
    can turn "auto" into different dtypes. bf16 for weights that are not fp32 is the `ValueError` of
    `resolve_model_precision`.
    """
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(
            f"autocast_dtype must be a resolved autocast dtype (torch.bfloat16, or None for fp32), got {dtype!r}: "
            "resolve a precision option such as 'auto' once per run with dt_eva.utils.precision.resolve_precision "
            "(or resolve_model_precision) and pass its result"
        )
    if dtype is not None and weight_dtype != torch.float32:
        raise _needs_fp32_weights(weight_dtype)
    return dtype


def _needs_fp32_weights(weight_dtype: torch.dtype) -> ValueError:
    return ValueError(
        f"precision=bf16 needs a model with fp32 weights (autocast only lowers fp32 ops); this model's weights "
        f"are {str(weight_dtype).replace('torch.', '')}: use precision=auto or fp32, or pass model.float()"
    )


def _native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> ContextManager:
    """`torch.autocast` for `dtype`, or a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def precision_name(dtype: torch.dtype | None) -> str:
    return "fp32" if dtype is None else str(dtype).replace("torch.", "").replace("bfloat16", "bf16")
