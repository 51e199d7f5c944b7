"""`DTConfig`: the hyper-parameters of the Decision Transformer, as a plain dataclass.

The config loader builds it from YAML, so every field is a plain scalar; `validate()` checks the
combinations that plain types cannot express and is called by `__post_init__`.

The model carries the scaling of its return and reward inputs (`rtg_scale`, `reward_scale`): whatever
feeds it (evaluation, EVA, the held-out metric) reads them here. In a run config they are not keys of
`model:`: `data.rtg_scale` / `data.reward_scale` set them (`SCALE_KEYS`), so a run's `config.yaml` names
each once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from dt_eva.utils.checks import check_number

# Token name used in layouts -> modality name used by `token_types()` / `token_mask()`.
TOKEN_SYMBOLS: dict[str, str] = {"s": "state", "R": "rtg", "a": "action", "r": "reward"}

# Supported layouts -> the symbol whose output predicts the action of its step.
# "s,R,a,r": the return-to-go token comes after the state, so it sees s_t and R_t but not a_t.
# "R,s,a": the HF / original DT order; the state token sees R_t and s_t.
TOKEN_LAYOUTS: dict[str, str] = {"s,R,a,r": "R", "R,s,a": "s"}

ATTN_BACKENDS: tuple[str, ...] = ("auto", "sdpa", "flash", "eager")

#: DTConfig field -> the run-config key that sets it (`dt_eva.config` reads this as field metadata).
SCALE_KEYS: dict[str, str] = {"rtg_scale": "data.rtg_scale", "reward_scale": "data.reward_scale"}


@dataclass
class DTConfig:
    """Decision Transformer hyper-parameters (defaults: the paper's model, see `paper()`)."""

    state_dim: int = 39
    act_dim: int = 4
    hidden_size: int = 512
    n_layer: int = 4
    n_head: int = 8
    context_len: int = 50  # K: timesteps per window; the sequence has K * len(layout) tokens
    max_ep_len: int = 200  # size of the absolute episode-timestep embedding
    dropout: float = 0.2  # embedding, attention and residual dropout
    token_layout: str = "s,R,a,r"
    learned_pos_embedding: bool = False  # learned embedding of the token position in the window
    attn_backend: str = "auto"  # "auto" | "sdpa" | "flash" | "eager"
    action_tanh: bool = True  # squash predicted actions into [-1, 1] (Meta-World's action box)
    # returns-to-go / rewards are divided by these before they reach the model (the training data's units)
    rtg_scale: float = field(default=200.0, metadata={"set_by": SCALE_KEYS["rtg_scale"]})
    reward_scale: float = field(default=200.0, metadata={"set_by": SCALE_KEYS["reward_scale"]})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `ValueError` naming the first inconsistent field and what to do about it."""
        for name in ("state_dim", "act_dim", "hidden_size", "n_layer", "n_head", "context_len", "max_ep_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DTConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.n_head != 0:
            raise ValueError(
                f"DTConfig.hidden_size ({self.hidden_size}) must be divisible by n_head ({self.n_head}); "
                f"pick e.g. hidden_size={self.n_head * max(1, round(self.hidden_size / self.n_head))}"
            )
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"DTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.token_layout not in TOKEN_LAYOUTS:
            raise ValueError(
                f"DTConfig.token_layout {self.token_layout!r} is not supported; "
                f"choose one of {sorted(TOKEN_LAYOUTS)}"
            )
        if self.attn_backend not in ATTN_BACKENDS:
            raise ValueError(
                f"DTConfig.attn_backend {self.attn_backend!r} is not known; choose one of {list(ATTN_BACKENDS)}"
            )
        for name in SCALE_KEYS:
            check_number(f"DTConfig.{name}", getattr(self, name), low=0, low_open=True)
        if self.context_len > self.max_ep_len:
            raise ValueError(
                f"DTConfig.context_len ({self.context_len}) exceeds max_ep_len ({self.max_ep_len}): "
                "a window cannot be longer than an episode"
            )

    # --- layout helpers -------------------------------------------------------------------------
    @property
    def layout_symbols(self) -> tuple[str, ...]:
        """The layout as symbols, e.g. `("s", "R", "a", "r")`."""
        return tuple(self.token_layout.split(","))

    @property
    def tokens_per_step(self) -> int:
        return len(self.layout_symbols)

    @property
    def action_token_index(self) -> int:
        """Index (within a step) of the token whose output predicts that step's action."""
        return self.layout_symbols.index(TOKEN_LAYOUTS[self.token_layout])

    # --- presets --------------------------------------------------------------------------------
    @classmethod
    def paper(cls, **overrides: Any) -> "DTConfig":
        """The paper's model: 4 layers, 8 heads, hidden 512, context 50, dropout 0.2 (~12.74M params)."""
        return cls(**{**dict(hidden_size=512, n_layer=4, n_head=8, context_len=50, dropout=0.2), **overrides})

    @classmethod
    def tiny(cls, **overrides: Any) -> "DTConfig":
        """A CPU-sized model (~0.63M params): hidden 128, 3 layers, 4 heads, context 20, dropout 0.1.

        Why these numbers: one forward+backward at batch 64 is ~18 GFLOP (80-token windows), a few
        tenths of a second on 2 idle cores, so thousands of updates fit in half an hour; hidden 128
        with 32-d heads still has room for 40 tasks' behaviours; a context of a few steps lets the
        model tell tasks apart from the object motion (the goal position is in obs[36:39]);
        dropout 0.1 because a small model on a small dataset underfits more than it overfits.
        """
        return cls(**{**dict(hidden_size=128, n_layer=3, n_head=4, context_len=20, dropout=0.1), **overrides})

    # --- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all fields (JSON / YAML friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DTConfig":
        """Inverse of `to_dict`; unknown keys are a `ValueError` listing the valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(f"unknown DTConfig keys {unknown}; valid keys are {valid}")
        return cls(**data)
