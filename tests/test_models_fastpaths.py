"""Tests of the DT's speed paths: the cheap CPU dropout mask, the CPU attention path used in
training with attention dropout, and the last block computing only the action-predicting tokens."""

from __future__ import annotations

import pytest
import torch

from dt_eva.models import DecisionTransformer, DTConfig
from dt_eva.models import attention as attention_module
from dt_eva.models.attention import CausalSelfAttention
from dt_eva.models.dropout import FastDropout, fast_dropout, keep_multiplier, quantized_drop_probability

LAYOUTS = ("s,R,a,r", "R,s,a")


def small_config(**overrides) -> DTConfig:
    base = dict(state_dim=7, act_dim=3, hidden_size=32, n_layer=2, n_head=4, context_len=6, max_ep_len=40, dropout=0.0)
    return DTConfig(**{**base, **overrides})


def make_batch(cfg: DTConfig, batch_size: int = 3) -> dict:
    g = torch.Generator().manual_seed(0)
    k = cfg.context_len
    return {
        "states": torch.randn(batch_size, k, cfg.state_dim, generator=g),
        "actions": torch.rand(batch_size, k, cfg.act_dim, generator=g) * 1.8 - 0.9,
        "rewards": torch.rand(batch_size, k, 1, generator=g),
        "returns_to_go": torch.rand(batch_size, k, 1, generator=g) * 5,
        "timesteps": (torch.arange(k) + 5).expand(batch_size, k).clone(),
    }


def forward(model: DecisionTransformer, batch: dict) -> torch.Tensor:
    return model(batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"], batch["rewards"])


def test_keep_multiplier_drops_with_rate_p_in_every_lane() -> None:
    torch.manual_seed(0)
    n = 400_000
    for p in (0.1, 0.5):
        multiplier = keep_multiplier((n,), p)
        scale = 1 / (1 - quantized_drop_probability(p))
        assert multiplier.dtype == torch.float32 and multiplier.shape == (n,)
        values = multiplier.unique()
        assert values.tolist() == [0.0, pytest.approx(scale)]
        # each int16 lane of the 64-bit draws must be uniform: check the drop rate per lane
        lane_rates = (multiplier == 0).view(-1, 4).float().mean(0)
        tolerance = 4 * (p * (1 - p) / (n / 4)) ** 0.5  # 4 standard errors
        assert (lane_rates - p).abs().max() < tolerance, (p, lane_rates)
    assert quantized_drop_probability(0.1) == pytest.approx(0.1, abs=2**-16)
    assert torch.equal(keep_multiplier((1000,), 0.0), torch.ones(1000))
    assert keep_multiplier((3, 5, 7), 0.2).shape == (3, 5, 7)


def test_fast_dropout_scales_kept_values_and_gradient() -> None:
    torch.manual_seed(0)
    x = torch.randn(50, 40, requires_grad=True)
    p = 0.3
    y = fast_dropout(x, p, training=True)
    kept = y != 0
    scale = 1 / (1 - quantized_drop_probability(p))
    torch.testing.assert_close(y[kept], x[kept] * scale)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() * scale)
    assert fast_dropout(x, p, training=False) is x
    torch.manual_seed(1)
    first = fast_dropout(x, p)
    torch.manual_seed(1)
    assert torch.equal(fast_dropout(x, p), first)  # seeded by torch's generator
    with pytest.raises(ValueError, match=r"dropout probability must be in \[0, 1\)"):
        FastDropout(1.0)


@pytest.mark.parametrize("query_tokens", [None, (1, 3)])
def test_cpu_dropout_attention_path_matches_eager_without_the_mask(monkeypatch, query_tokens) -> None:
    """With the dropout mask taken out, the CPU training path must compute plain causal attention."""
    torch.manual_seed(0)
    fast = CausalSelfAttention(32, 4, dropout=0.2, backend="sdpa").train()
    reference = CausalSelfAttention(32, 4, dropout=0.0, backend="eager").train()
    reference.load_state_dict(fast.state_dict())
    fast.resid_dropout.p = 0.0
    calls = []

    def no_drop(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
        calls.append(p)
        return x

    monkeypatch.setattr(attention_module, "fast_dropout", no_drop)
    x = torch.randn(2, 12, 32)
    torch.testing.assert_close(fast(x, query_tokens), reference(x, query_tokens), rtol=1e-5, atol=1e-6)
    assert calls == [0.2]  # the attention weights went through the (patched) dropout


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_training_forward_prunes_last_block_without_changing_results(layout: str, backend: str) -> None:
    torch.manual_seed(0)
    model = DecisionTransformer(small_config(token_layout=layout, attn_backend=backend, dropout=0.0))
    batch = make_batch(model.cfg)
    model.eval()  # full path: every token through every block
    full_loss = model.loss(batch)
    full_loss.backward()
    full_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    model.train()  # pruned path (dropout is 0, so the two must agree)
    pruned_loss = model.loss(batch)
    pruned_loss.backward()
    torch.testing.assert_close(pruned_loss, full_loss, rtol=1e-5, atol=1e-7)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, full_grads[name], rtol=1e-4, atol=1e-7, msg=name)


def test_hooks_see_every_token_without_gradients() -> None:
    """EVA captures activations under no_grad: the last block's MLP must then see all K*L tokens."""
    model = DecisionTransformer(small_config()).train()
    batch = make_batch(model.cfg)
    seen = []
    model.blocks[-1].mlp.fc.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].shape[1]))
    with torch.no_grad():
        forward(model, batch)
    forward(model, batch)
    k, per_step = model.cfg.context_len, len(model.token_types())
    assert seen == [k * per_step, k]
    assert model.token_mask(batch, ["state"]).shape[1] == seen[0]


def test_dropout_in_training_changes_output_but_keeps_scale() -> None:
    torch.manual_seed(0)
    cfg = DTConfig.tiny(state_dim=7, act_dim=3, hidden_size=32, n_layer=2, context_len=6, dropout=0.2,
                        action_tanh=False)
    model = DecisionTransformer(cfg)
    batch = make_batch(cfg, batch_size=64)
    model.eval()
    with torch.no_grad():
        clean = forward(model, batch)
    model.train()
    with torch.no_grad():
        noisy = torch.stack([forward(model, batch) for _ in range(20)])
    assert not torch.allclose(noisy[0], noisy[1])
    # inverted dropout keeps the expected activation: averaged predictions stay near the clean ones
    assert (noisy.mean(0) - clean).abs().mean() < 0.5 * (noisy[0] - clean).abs().mean()


def test_bfloat16_training_step_and_autocast_run_on_cpu() -> None:
    torch.manual_seed(0)
    model = DecisionTransformer(small_config(dropout=0.1))
    batch = make_batch(model.cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(batch)
    loss.backward()
    assert loss.dtype == torch.float32 and loss.isfinite()
    model_bf16 = DecisionTransformer(small_config(dropout=0.1)).to(torch.bfloat16)
    bf16_batch = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in batch.items()}
    loss = model_bf16.loss(bf16_batch)
    loss.backward()
    assert loss.isfinite() and all(p.grad is not None for p in model_bf16.parameters())


def test_optimizer_uses_the_fused_adamw_kernel_with_the_same_updates() -> None:
    from dt_eva.training.configs import OptimConfig
    from dt_eva.training.optim import build_optimizer, weight_decay_param_groups

    torch.manual_seed(0)
    fused_model = DecisionTransformer(small_config())
    plain_model = DecisionTransformer(small_config())
    plain_model.load_state_dict(fused_model.state_dict())
    cfg = OptimConfig(lr=1e-3, weight_decay=0.1)
    fused = build_optimizer(weight_decay_param_groups(fused_model, 0.1), cfg)
    plain = build_optimizer(weight_decay_param_groups(plain_model, 0.1), cfg, fused=False)
    assert fused.defaults["fused"] is True and not plain.defaults["fused"]
    batch = make_batch(fused_model.cfg)
    for _ in range(3):
        for model, opt in ((fused_model, fused), (plain_model, plain)):
            opt.zero_grad()
            model.loss(batch).backward()
            opt.step()
    for (name, a), b in zip(fused_model.named_parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
