"""The Decision Transformer: per-modality embeddings, GPT-2 blocks, tanh action head.

Each timestep contributes one token per layout symbol (`"s,R,a,r"` -> state, return-to-go, action,
reward). Every token gets its step's absolute episode-timestep embedding; the interleaved sequence
of `K * len(layout)` tokens runs through causal pre-LN blocks, and the action of step t is read from
the output of one token of step t (R for `"s,R,a,r"`, s for `"R,s,a"`) — a token that comes before
a_t and r_t, so the causal mask keeps the step's own action and reward out of its prediction.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Block
from .config import TOKEN_SYMBOLS, DTConfig
from .dropout import FastDropout

# Module names that fine-tuning adapters wrap (matched PEFT-style as name suffixes).
DT_ADAPTER_TARGETS: tuple[str, ...] = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")

TOKEN_TYPES: tuple[str, ...] = tuple(TOKEN_SYMBOLS.values())  # ("state", "rtg", "action", "reward")

# layout symbol -> embedding module name (stable names, see docs/architecture.md)
_EMBED_NAMES: dict[str, str] = {"s": "embed_state", "R": "embed_rtg", "a": "embed_action", "r": "embed_reward"}


class DecisionTransformer(nn.Module):
    """GPT-2-style Decision Transformer (see `DTConfig` for the hyper-parameters)."""

    def __init__(self, cfg: DTConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        h = cfg.hidden_size
        # one embedding per modality of the layout; a modality the layout lacks (the reward in
        # "R,s,a") gets no module, so no parameter goes unused (DDP would reject it)
        in_features = {"s": cfg.state_dim, "R": 1, "a": cfg.act_dim, "r": 1}
        for symbol in cfg.layout_symbols:
            setattr(self, _EMBED_NAMES[symbol], nn.Linear(in_features[symbol], h))
        self.embed_timestep = nn.Embedding(cfg.max_ep_len, h)
        if cfg.learned_pos_embedding:
            self.embed_position = nn.Embedding(cfg.context_len * cfg.tokens_per_step, h)
        self.embed_ln = nn.LayerNorm(h)
        self.embed_dropout = FastDropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(h, cfg.n_head, cfg.dropout, cfg.attn_backend) for _ in range(cfg.n_layer)
        )
        self.ln_f = nn.LayerNorm(h)
        self.action_head = nn.Linear(h, cfg.act_dim)  # tanh applied in forward, so the head stays a Linear
        self._layout = cfg.layout_symbols
        self._action_index = cfg.action_token_index
        self._init_weights()

    # --- initialisation -------------------------------------------------------------------------
    def _init_weights(self) -> None:
        """GPT-2 init: N(0, 0.02) weights, zero biases, residual projections scaled by 1/sqrt(2 L)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        residual_std = 0.02 / math.sqrt(2 * self.cfg.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.proj.weight, mean=0.0, std=residual_std)

    # --- tokens ---------------------------------------------------------------------------------
    def token_types(self) -> tuple[str, ...]:
        """Modality of each token within a step, in layout order, e.g. `("state", "rtg", "action", "reward")`."""
        return tuple(TOKEN_SYMBOLS[s] for s in self._layout)

    def token_mask(self, batch: Mapping[str, torch.Tensor], types: Iterable[str]) -> torch.Tensor:
        """BoolTensor `[B, K * len(layout)]`, True where the token's modality is in `types`.

        `batch` is a `WindowSampler.sample()`-style dict (only `states` is read, for B, K and the
        device). Meant as EVA's `token_mask_fn`: positions line up with the blocks' inputs.
        """
        wanted = {types} if isinstance(types, str) else set(types)
        unknown = sorted(wanted - set(TOKEN_TYPES))
        if unknown:
            raise ValueError(f"unknown token types {unknown}; valid types are {list(TOKEN_TYPES)}")
        layout_types = self.token_types()
        absent = sorted(wanted - set(layout_types))
        if absent:
            raise ValueError(
                f"token types {absent} do not occur in token_layout {self.cfg.token_layout!r} "
                f"(its tokens are {list(layout_types)})"
            )
        if not wanted:
            raise ValueError(f"token_mask needs at least one token type out of {list(layout_types)}")
        states = batch["states"]
        if states.dim() != 3:
            raise ValueError(f"batch['states'] must be [B, K, state_dim], got shape {tuple(states.shape)}")
        b, k = states.shape[:2]
        per_step = torch.tensor([t in wanted for t in layout_types], device=states.device)
        return per_step.repeat(k).unsqueeze(0).expand(b, -1).contiguous()

    # --- validation -----------------------------------------------------------------------------
    def _check_inputs(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        returns_to_go: torch.Tensor,
        timesteps: torch.Tensor,
        rewards: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg = self.cfg
        if states.dim() != 3 or states.shape[-1] != cfg.state_dim:
            raise ValueError(f"states must have shape [B, K, {cfg.state_dim}], got {tuple(states.shape)}")
        b, k = states.shape[:2]
        if k > cfg.context_len:
            raise ValueError(
                f"context of {k} timesteps is longer than config.context_len={cfg.context_len}; "
                "pass the last context_len steps (predict_last_action does this for you)"
            )
        if k == 0:
            raise ValueError("states has an empty context (K = 0); pass at least one timestep")

        def expect(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
            if tuple(tensor.shape) != shape:
                raise ValueError(f"{name} must have shape {list(shape)}, got {list(tensor.shape)}")

        expect("actions", actions, (b, k, cfg.act_dim))
        # scalar streams may come as [B, K] or [B, K, 1]
        if returns_to_go.dim() == 2:
            returns_to_go = returns_to_go.unsqueeze(-1)
        expect("returns_to_go", returns_to_go, (b, k, 1))
        expect("timesteps", timesteps, (b, k))
        if timesteps.dtype.is_floating_point or timesteps.dtype == torch.bool:
            raise ValueError(f"timesteps must be an integer tensor, got {timesteps.dtype}")
        # value check only off-GPU: on CUDA it would force a host sync every step
        if not timesteps.is_cuda and (timesteps.min() < 0 or timesteps.max() >= cfg.max_ep_len):
            raise ValueError(
                f"timesteps must lie in [0, {cfg.max_ep_len - 1}] (config.max_ep_len={cfg.max_ep_len}), "
                f"got values in [{int(timesteps.min())}, {int(timesteps.max())}]"
            )
        if "r" in self._layout:
            if rewards is None:
                raise ValueError(
                    f"token_layout {cfg.token_layout!r} has reward tokens, so rewards [B, K, 1] are required"
                )
            if rewards.dim() == 2:
                rewards = rewards.unsqueeze(-1)
            expect("rewards", rewards, (b, k, 1))
        return returns_to_go, rewards

    # --- forward --------------------------------------------------------------------------------
    def embed(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        returns_to_go: torch.Tensor,
        timesteps: torch.Tensor,
        rewards: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Interleaved token embeddings `[B, K * len(layout), hidden]` (after `embed_ln` and dropout)."""
        b, k = states.shape[:2]
        step_embedding = self.embed_timestep(timesteps)  # [B, K, H], shared by all tokens of a step
        inputs = {"s": states, "R": returns_to_go, "a": actions, "r": rewards}
        tokens = torch.stack(
            [getattr(self, _EMBED_NAMES[s])(inputs[s]) for s in self._layout], dim=2
        )  # [B, K, L, H]
        x = (tokens + step_embedding.unsqueeze(2)).reshape(b, k * len(self._layout), -1)
        if self.cfg.learned_pos_embedding:
            x = x + self.embed_position.weight[: x.shape[1]]
        return self.embed_dropout(self.embed_ln(x))

    def forward(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        returns_to_go: torch.Tensor,
        timesteps: torch.Tensor,
        rewards: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted actions `[B, K, act_dim]`; entry t sees steps <= t but not a_t or r_t.

        Shapes: states `[B, K, state_dim]`, actions `[B, K, act_dim]`, returns_to_go and rewards
        `[B, K, 1]` (or `[B, K]`), timesteps `[B, K]` integers in `[0, max_ep_len)`, with
        `K <= context_len`. `rewards` is required for layouts with reward tokens.
        """
        returns_to_go, rewards = self._check_inputs(states, actions, returns_to_go, timesteps, rewards)
        # Only the action-predicting token of each step reaches the loss, so a training forward
        # computes the last block's attention output and MLP for those tokens alone (keys and
        # values still cover every token). Forwards without gradients or in eval mode (EVA's
        # activation capture) take the full path, so hooks there see every token, as token_mask().
        prune = self.training and torch.is_grad_enabled()
        return self._predict(states, actions, returns_to_go, timesteps, rewards, "actions" if prune else "all")

    def _predict(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        returns_to_go: torch.Tensor,
        timesteps: torch.Tensor,
        rewards: torch.Tensor | None,
        last_block: str,
    ) -> torch.Tensor:
        """Action predictions from validated inputs. `last_block` says which tokens the last block
        computes: "all", "actions" (the predicting token of every step) or "last" (of the last step)."""
        b, k = states.shape[:2]
        per_step = len(self._layout)
        x = self.embed(states, actions, returns_to_go, timesteps, rewards)
        if last_block == "last":
            # The last step's tokens after its predicting token (the placeholder action / reward)
            # cannot influence the prediction through the causal mask: drop them from every block.
            x = x[:, : (k - 1) * per_step + self._action_index + 1]
        for block in self.blocks[:-1]:
            x = block(x)
        if last_block == "all":
            x = self.blocks[-1](x).view(b, k, per_step, -1)[:, :, self._action_index]
        else:
            first = self._action_index if last_block == "actions" else x.shape[1] - 1
            x = self.blocks[-1](x, query_tokens=(first, per_step))
        preds = self.action_head(self.ln_f(x))
        return torch.tanh(preds) if self.cfg.action_tanh else preds

    def loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Mean squared error of the predicted actions on a `WindowSampler.sample()` batch.

        Tensors are moved to the model's device (a no-op when they are already there).
        """
        device = self.action_head.weight.device
        missing = [key for key in ("states", "actions", "returns_to_go", "timesteps") if key not in batch]
        if missing:
            raise ValueError(f"batch is missing {missing}; expected the keys of WindowSampler.sample()")
        if "r" in self._layout and "rewards" not in batch:
            raise ValueError(f"batch is missing 'rewards', needed by token_layout {self.cfg.token_layout!r}")
        move = lambda key: batch[key].to(device, non_blocking=True)  # noqa: E731
        actions = move("actions")
        preds = self(
            move("states"),
            actions,
            move("returns_to_go"),
            move("timesteps"),
            move("rewards") if "rewards" in batch else None,
        )
        return F.mse_loss(preds.float(), actions.float())

    @torch.no_grad()
    def predict_last_action(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        returns_to_go: torch.Tensor,
        timesteps: torch.Tensor,
        rewards: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Action `[B, act_dim]` for the last timestep of the given history (online evaluation).

        The last step's action and reward entries are placeholders (e.g. zeros): the layout and the
        causal mask keep them out of the prediction. Histories longer than `context_len` are cut
        to their last `context_len` steps. Runs without gradients; call `model.eval()` first.
        The last block computes only the one token whose output is needed.
        """
        k = self.cfg.context_len
        if states.dim() == 3 and states.shape[1] > k:
            states, actions, returns_to_go, timesteps = (
                states[:, -k:], actions[:, -k:], returns_to_go[:, -k:], timesteps[:, -k:]
            )
            rewards = rewards[:, -k:] if rewards is not None else None
        returns_to_go, rewards = self._check_inputs(states, actions, returns_to_go, timesteps, rewards)
        return self._predict(states, actions, returns_to_go, timesteps, rewards, "last")[:, -1]

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of (trainable) parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
