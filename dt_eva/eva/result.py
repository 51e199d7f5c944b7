"""`EvaResult`: what EVA found per layer, with save / load (safetensors + JSON sidecar)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from dt_eva.eva.config import EvaConfig

_FORMAT_VERSION = 1
_TENSOR_FIELDS = ("components", "singular_values", "explained_variance_ratio", "candidate_explained_variance_ratio")


@dataclass
class EvaResult:
    """EVA's output, keyed by full module names as in `model.named_modules()`.

    ranks:           rank given to each layer by the pooled redistribution (0 is possible).
    components:      (ranks[name], in_features) tensors with orthonormal rows: the top right-singular
                     vectors of the layer's input activations, i.e. LoRA's A at initialisation.
    singular_values: (ranks[name],) singular values of those rows.
    explained_variance_ratio: (ranks[name],) share of the layer's input variance of each row.
    candidate_explained_variance_ratio: (round(rho*rank),) ratios of all candidates that entered the
                     pooled redistribution (for plots of how ranks were chosen).
    converged:       whether the layer's allocated components met the tau criterion.
    num_batches:     batches forwarded; seconds: wall time of compute_eva.
    shared_inputs:   layer -> the layer whose SVD it shares (they read the very same input tensor).
    num_samples:     activation rows that entered each layer's SVD (all ranks together).
    budget:          the total rank N * rank that was redistributed.
    """

    ranks: dict[str, int]
    components: dict[str, Tensor]
    singular_values: dict[str, Tensor]
    explained_variance_ratio: dict[str, Tensor]
    converged: dict[str, bool]
    num_batches: int
    seconds: float
    config: EvaConfig = field(default_factory=EvaConfig)
    candidate_explained_variance_ratio: dict[str, Tensor] = field(default_factory=dict)
    shared_inputs: dict[str, str] = field(default_factory=dict)
    num_samples: dict[str, int] = field(default_factory=dict)
    budget: int = 0

    @property
    def names(self) -> list[str]:
        return list(self.ranks)

    def lora_A(self, name: str) -> Tensor:
        """EVA's LoRA A initialisation of `name`: its components (orthonormal rows). The EVA-whiten
        ablation scales them (`dt_eva.adapters` init "eva_whiten"); PEFT's whitening is an option of
        `dt_eva.eva.peft_interop.to_peft_eva_state_dict`."""
        return self.components[name]

    def summary(self) -> str:
        """A table: layer, rank, candidates kept, explained variance of the kept rows, converged."""
        width = max([len("layer")] + [len(n) for n in self.ranks])
        lines = [f"{'layer':<{width}}  rank  explained  converged  shares"]
        for name, rank in self.ranks.items():
            ev = float(self.explained_variance_ratio[name].sum()) if rank else 0.0
            shares = self.shared_inputs.get(name, "")
            lines.append(f"{name:<{width}}  {rank:>4}  {ev:>9.3f}  {str(self.converged[name]):>9}  {shares}")
        total = sum(self.ranks.values())
        lines.append(
            f"total rank {total} (budget {self.budget}) over {len(self.ranks)} layers; "
            f"{self.num_batches} batches, {self.seconds:.2f} s"
        )
        return "\n".join(lines)

    # ---- persistence -----------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write `<path>` (a .safetensors file, JSON sidecar next to it) or, for a directory path,
        `<path>/result.safetensors` + `<path>/result.json`. Both files are written atomically."""
        from safetensors.torch import save_file

        from dt_eva.utils.io import atomic_path, atomic_write_json

        tensor_path, json_path = _paths(path)
        tensors = {
            f"{field_name}/{name}": t.detach().to("cpu", torch.float32).contiguous()
            for field_name in _TENSOR_FIELDS
            for name, t in getattr(self, field_name).items()
        }
        with atomic_path(tensor_path, suffix=".safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"format": "dt_eva.EvaResult", "version": str(_FORMAT_VERSION)})
        meta = {
            "format": "dt_eva.EvaResult",
            "version": _FORMAT_VERSION,
            "tensors": tensor_path.name,
            "names": self.names,
            "ranks": self.ranks,
            "converged": self.converged,
            "num_batches": self.num_batches,
            "seconds": self.seconds,
            "budget": self.budget,
            "config": self.config.to_dict(),
            "shared_inputs": self.shared_inputs,
            "num_samples": self.num_samples,
        }
        atomic_write_json(json_path, meta)
        return json_path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EvaResult":
        """Read a result written by `save` (the same path: file or directory). A damaged or tampered
        pair is a `ValueError` naming the file and what is wrong with it."""
        from dt_eva.utils.io import read_json
        from dt_eva.utils.torchfiles import load_safetensors

        tensor_path, json_path = _paths(path)
        for p in (json_path, tensor_path):
            if not p.is_file():
                raise FileNotFoundError(f"EVA result file {p} does not exist; pass the path given to EvaResult.save")
        meta = read_json(json_path)  # names the file when it is not JSON
        if not isinstance(meta, dict) or meta.get("format") != "dt_eva.EvaResult":
            what = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise ValueError(f"{json_path} is not a dt_eva EVA result (format {what!r})")
        if meta.get("version") != _FORMAT_VERSION:
            raise ValueError(f"{json_path} has EVA result version {meta.get('version')}, expected {_FORMAT_VERSION}")
        flat = load_safetensors(tensor_path, what="EVA result")
        tensors: dict[str, dict[str, Tensor]] = {f: {} for f in _TENSOR_FIELDS}
        for key, t in flat.items():
            field_name, _, name = key.partition("/")
            if field_name in tensors:
                tensors[field_name][name] = t
        try:
            result = cls._from_saved(meta, tensors)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            why = f"no entry {e}" if isinstance(e, KeyError) else str(e)
            raise ValueError(f"{json_path} (with {tensor_path.name}) is not a valid EVA result: {why}; "
                             "run EVA again (a new fine-tuning run) or restore the files") from None
        return result

    @classmethod
    def _from_saved(cls, meta: dict, tensors: dict[str, dict[str, Tensor]]) -> "EvaResult":
        names = meta["names"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise TypeError(f"'names' is {names!r}, not a list of layer names")
        missing = [n for n in names if n not in tensors["components"]]
        if missing:
            raise ValueError(f"the tensors lack the components of {missing[:3]}; the files are incomplete or not a pair")
        ranks = {n: _count(meta["ranks"][n], f"the rank of {n}") for n in names}
        wrong = [n for n in names if tensors["components"][n].ndim != 2 or tensors["components"][n].shape[0] != ranks[n]]
        if wrong:
            raise ValueError(f"the components of {wrong[0]} have shape {tuple(tensors['components'][wrong[0]].shape)}, "
                             f"not (rank {ranks[wrong[0]]}, in_features)")
        order = lambda d: {n: d[n] for n in names if n in d}  # noqa: E731 - keep the saved layer order
        return cls(
            ranks=ranks,
            components=order(tensors["components"]),
            singular_values=order(tensors["singular_values"]),
            explained_variance_ratio=order(tensors["explained_variance_ratio"]),
            candidate_explained_variance_ratio=order(tensors["candidate_explained_variance_ratio"]),
            converged={n: bool(meta["converged"][n]) for n in names},
            num_batches=_count(meta["num_batches"], "num_batches"),
            seconds=float(meta["seconds"]),
            config=EvaConfig.from_dict(meta["config"]),
            shared_inputs={str(k): str(v) for k, v in meta.get("shared_inputs", {}).items()},
            num_samples={k: _count(v, f"num_samples of {k}") for k, v in meta.get("num_samples", {}).items()},
            budget=_count(meta.get("budget", 0), "budget"),
        )


def _count(value: object, what: str) -> int:
    """A non-negative integer read from JSON (`"abc"`, 1.5, true or -1 are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} is {value!r}, not a non-negative integer")
    return value


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json")
    if path.suffix == ".json":
        return path.with_suffix(".safetensors"), path
    return path / "result.safetensors", path / "result.json"
