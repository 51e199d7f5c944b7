"""The fine-tuning methods: one description each, read by training, reporting and the CLI.

Torch-free, so a report over hundreds of runs (or a CLI `--help`) never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodSpec:
    """One fine-tuning method.

    kind:     "full" (every parameter trains), "adapter" (our LoRA/DoRA layers, base frozen) or
              "adalora" (PEFT's AdaLoRA, adaptive ranks during training).
    adapter:  "lora" | "dora" for kind "adapter".
    init:     the initialiser of `dt_eva.adapters.inject_adapters`.
    eva:      EVA runs before injection (its ranks and/or components are used), so rho matters.
    whiten:   the EVA-whiten ablation (each component divided by its covariance eigenvalue, as the paper states).
    paper:    a row of the paper's Table 6 (False: an ablation of Table 7).
    """

    name: str
    label: str
    kind: str
    description: str
    adapter: str | None = None
    init: str | None = None
    eva: bool = False
    whiten: bool = False
    paper: bool = True

    @property
    def uses_adapters(self) -> bool:
        return self.kind in ("adapter", "adalora")

    @property
    def uses_rank(self) -> bool:
        return self.kind != "full"

    @property
    def uses_rho(self) -> bool:
        return self.eva


# Table 6 row order, then the ablations (Table 7). The order of this tuple is the order of every table.
_SPECS = (
    MethodSpec("fft", "FFT", "full", "full fine-tuning of every parameter"),
    MethodSpec("lora", "LoRA", "adapter", "LoRA: random A, B = 0, uniform rank", "lora", "random"),
    MethodSpec("adalora", "AdaLoRA", "adalora", "AdaLoRA through PEFT: ranks pruned during training"),
    MethodSpec("pissa", "PiSSA", "adapter", "PiSSA: A, B from the top singular vectors of W", "lora", "pissa"),
    MethodSpec("olora", "OLoRA", "adapter", "OLoRA: A, B from a QR decomposition of W", "lora", "olora"),
    MethodSpec("eva", "EVA", "adapter", "EVA: A from activation SVD, redistributed ranks", "lora", "eva", eva=True),
    MethodSpec("dora", "DoRA", "adapter", "DoRA: weight-decomposed LoRA, random init", "dora", "random"),
    MethodSpec("eva_dora", "EVA+DoRA", "adapter", "EVA init with DoRA layers", "dora", "eva", eva=True),
    MethodSpec("lora_redist", "LoRA-redist", "adapter", "ablation: EVA's ranks with random A", "lora",
               "lora_redist", eva=True, paper=False),
    MethodSpec("eva_whiten", "EVA-whiten", "adapter", "ablation: EVA with whitened components", "lora",
               "eva_whiten", eva=True, whiten=True, paper=False),
)
METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in _SPECS}
PAPER_METHODS: tuple[str, ...] = tuple(s.name for s in _SPECS if s.paper)
# The label of the no-fine-tuning baseline row in reports.
PRETRAINED_LABEL = "Pre-trained (no fine-tuning)"


def normalize_method_name(name: str) -> str:
    """`EVA+DoRA`, `eva-dora` and `eva_dora` are one method."""
    return str(name).strip().lower().replace("-", "_").replace("+", "_")


def resolve_method(name: str) -> MethodSpec:
    """The `MethodSpec` of `name`; an unknown name is a `ValueError` listing the valid ones."""
    key = normalize_method_name(name)
    if key not in METHODS:
        raise ValueError(f"unknown fine-tuning method {name!r}; valid methods are: {', '.join(METHODS)}")
    return METHODS[key]


def method_label(name: str) -> str:
    """The paper's name of a method (`eva_dora` -> `EVA+DoRA`); unknown names are returned as given."""
    if name == "pretrained":
        return PRETRAINED_LABEL
    spec = METHODS.get(normalize_method_name(name))
    return spec.label if spec else name


def method_sort_key(name: str) -> tuple[int, str]:
    """Paper order first, then unknown methods alphabetically."""
    order = list(METHODS)
    key = normalize_method_name(name)
    return (order.index(key) if key in order else len(order), key)
