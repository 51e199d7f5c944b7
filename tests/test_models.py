"""Tests of the Decision Transformer (dt_eva.models): equivalence of attention backends, causality,
token layouts, EVA token masks, learning, input validation and the paper-size parameter count."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dt_eva.models import DT_ADAPTER_TARGETS, DecisionTransformer, DTConfig, flash_attn_available

LAYOUTS = ("s,R,a,r", "R,s,a")


def small_config(**overrides) -> DTConfig:
    base = dict(state_dim=7, act_dim=3, hidden_size=32, n_layer=2, n_head=4, context_len=6, max_ep_len=40, dropout=0.0)
    return DTConfig(**{**base, **overrides})


def make_batch(cfg: DTConfig, batch_size: int = 3, k: int | None = None, seed: int = 0, start: int = 5) -> dict:
    """A `WindowSampler.sample()`-shaped batch of random data."""
    g = torch.Generator().manual_seed(seed)
    k = cfg.context_len if k is None else k
    return {
        "states": torch.randn(batch_size, k, cfg.state_dim, generator=g),
        "actions": torch.rand(batch_size, k, cfg.act_dim, generator=g) * 1.8 - 0.9,
        "rewards": torch.rand(batch_size, k, 1, generator=g),
        "returns_to_go": torch.rand(batch_size, k, 1, generator=g) * 5,
        "timesteps": (torch.arange(k) + start).expand(batch_size, k).clone(),
        "task_ids": torch.zeros(batch_size, dtype=torch.long),
    }


def forward(model: DecisionTransformer, batch: dict) -> torch.Tensor:
    return model(batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"], batch["rewards"])


def twin(cfg: DTConfig, **changes) -> tuple[DecisionTransformer, DecisionTransformer]:
    """A model and a copy with the same weights but other config fields (e.g. the attention backend)."""
    torch.manual_seed(0)
    a = DecisionTransformer(cfg).eval()
    b = DecisionTransformer(DTConfig.from_dict({**cfg.to_dict(), **changes})).eval()
    b.load_state_dict(a.state_dict())
    return a, b


# --- attention backends ------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("learned_pos", [False, True])
def test_sdpa_matches_eager_forward_and_gradients(layout: str, learned_pos: bool) -> None:
    eager, sdpa = twin(small_config(token_layout=layout, learned_pos_embedding=learned_pos, attn_backend="eager"),
                       attn_backend="sdpa")
    batch = make_batch(eager.cfg)
    out_eager, out_sdpa = forward(eager, batch), forward(sdpa, batch)
    torch.testing.assert_close(out_sdpa, out_eager, rtol=1e-5, atol=1e-6)
    eager.loss(batch).backward()
    sdpa.loss(batch).backward()
    for (name, p_eager), p_sdpa in zip(eager.named_parameters(), sdpa.parameters()):
        torch.testing.assert_close(p_sdpa.grad, p_eager.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_auto_backend_on_cpu_equals_eager_and_shorter_context() -> None:
    eager, auto = twin(small_config(attn_backend="eager"), attn_backend="auto")
    batch = make_batch(eager.cfg, k=3)  # shorter than context_len is allowed (start of an episode)
    torch.testing.assert_close(forward(auto, batch), forward(eager, batch), rtol=1e-5, atol=1e-6)


def test_flash_backend_without_flash_attn_says_how_to_install() -> None:
    if flash_attn_available():
        pytest.skip("flash-attn is installed here")
    with pytest.raises(ValueError, match=r"pip install dt-eva\[gpu\]"):
        DecisionTransformer(small_config(attn_backend="flash"))


# --- causality ---------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
def test_future_steps_do_not_change_earlier_predictions(layout: str) -> None:
    torch.manual_seed(0)
    model = DecisionTransformer(small_config(token_layout=layout)).eval()
    batch = make_batch(model.cfg)
    base = forward(model, batch)
    t = 2
    changed = {key: value.clone() for key, value in batch.items()}
    for key in ("states", "actions", "rewards", "returns_to_go"):
        changed[key][:, t + 1:] = torch.randn_like(changed[key][:, t + 1:]) * 3
    changed["timesteps"][:, t + 1:] = 30
    out = forward(model, changed)
    torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-6)
    assert (out[:, t + 1:] - base[:, t + 1:]).abs().max() > 1e-3  # the later steps did see the change


@pytest.mark.parametrize("layout", LAYOUTS)
def test_own_action_and_reward_do_not_leak_but_own_state_and_rtg_count(layout: str) -> None:
    torch.manual_seed(0)
    model = DecisionTransformer(small_config(token_layout=layout)).eval()
    batch = make_batch(model.cfg)
    base = forward(model, batch)
    t = 3
    leaked = {key: value.clone() for key, value in batch.items()}
    leaked["actions"][:, t] = -leaked["actions"][:, t]
    leaked["rewards"][:, t] += 10.0
    torch.testing.assert_close(forward(model, leaked)[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-6)
    for key in ("states", "returns_to_go"):  # inputs that must reach the prediction of step t
        seen = {k: v.clone() for k, v in batch.items()}
        seen[key][:, t] += 5.0
        # small-init weights make the effect small, but far above the 1e-6 "no leak" tolerance
        assert (forward(model, seen)[:, t] - base[:, t]).abs().max() > 1e-5, key


@pytest.mark.parametrize("layout", LAYOUTS)
def test_predict_last_action_ignores_placeholders_and_crops_history(layout: str) -> None:
    torch.manual_seed(0)
    model = DecisionTransformer(small_config(token_layout=layout)).eval()
    k = model.cfg.context_len
    batch = make_batch(model.cfg, k=k + 4, start=0)  # a history longer than the context
    args = [batch[key] for key in ("states", "actions", "returns_to_go", "timesteps", "rewards")]
    pred = model.predict_last_action(*args)
    assert pred.shape == (3, model.cfg.act_dim)
    cropped = [a[:, -k:] for a in args]
    torch.testing.assert_close(pred, model(*cropped)[:, -1])
    # the current step's action and reward are placeholders: any value gives the same prediction
    for a in (args[1], args[4]):
        a[:, -1] = torch.randn_like(a[:, -1]) * 5
    torch.testing.assert_close(model.predict_last_action(*args), pred, rtol=0, atol=1e-6)
    for short in (1, 3):  # the start of an episode: fewer steps than the context
        head = [a[:, :short] for a in args]
        torch.testing.assert_close(model.predict_last_action(*head), model(*head)[:, -1], rtol=1e-5, atol=1e-6)


# --- layouts, tokens and module names ----------------------------------------------------------
def test_layouts_token_types_and_module_names() -> None:
    default = DecisionTransformer(small_config())
    assert default.token_types() == ("state", "rtg", "action", "reward")
    hf_like = DecisionTransformer(small_config(token_layout="R,s,a"))
    assert hf_like.token_types() == ("rtg", "state", "action")
    assert not hasattr(hf_like, "embed_reward")  # no parameter that never gets a gradient
    batch = make_batch(hf_like.cfg)
    batch.pop("rewards")
    assert hf_like.loss(batch).isfinite()  # rewards are optional without reward tokens

    names = dict(default.named_modules())
    for name in ("embed_state", "embed_rtg", "embed_action", "embed_reward", "embed_timestep", "embed_ln",
                 "ln_f", "action_head"):
        assert name in names, name
    for i in range(default.cfg.n_layer):
        for suffix in ("ln1", "attn.qkv", "attn.proj", "ln2", "mlp.fc", "mlp.proj"):
            assert f"blocks.{i}.{suffix}" in names
    targets = [n for n in names if n.endswith(DT_ADAPTER_TARGETS)]
    assert len(targets) == 4 * default.cfg.n_layer
    assert all(isinstance(names[n], nn.Linear) for n in targets)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_token_mask_marks_exactly_the_tokens_of_a_modality(layout: str) -> None:
    """Perturb one input stream: the embedded tokens that change are exactly the masked ones."""
    torch.manual_seed(0)
    model = DecisionTransformer(small_config(token_layout=layout)).eval()
    batch = make_batch(model.cfg)
    stream = {"state": "states", "rtg": "returns_to_go", "action": "actions", "reward": "rewards"}

    def embedded(b: dict) -> torch.Tensor:
        return model.embed(b["states"], b["actions"], b["returns_to_go"], b["timesteps"], b["rewards"])

    base = embedded(batch)
    k, per_step = model.cfg.context_len, len(model.token_types())
    for token_type in model.token_types():
        mask = model.token_mask(batch, [token_type])
        assert mask.dtype == torch.bool and mask.shape == (3, k * per_step)
        assert int(mask[0].sum()) == k
        changed = {key: value.clone() for key, value in batch.items()}
        changed[stream[token_type]] += 1.0
        moved = (embedded(changed) - base).abs().amax(-1) > 1e-5
        assert torch.equal(moved, mask), token_type
    both = model.token_mask(batch, ("state", "rtg"))
    assert torch.equal(both, model.token_mask(batch, ["state"]) | model.token_mask(batch, ["rtg"]))
    assert torch.equal(model.token_mask(batch, "state"), model.token_mask(batch, ["state"]))


def test_token_mask_rejects_unknown_or_absent_types() -> None:
    model = DecisionTransformer(small_config(token_layout="R,s,a"))
    batch = make_batch(model.cfg)
    with pytest.raises(ValueError, match=r"unknown token types \['obs'\].*valid types"):
        model.token_mask(batch, ["obs"])
    with pytest.raises(ValueError, match=r"\['reward'\] do not occur in token_layout 'R,s,a'"):
        model.token_mask(batch, ["reward"])


# --- learning ----------------------------------------------------------------------------------
def test_tiny_model_overfits_a_fixed_batch() -> None:
    torch.manual_seed(0)
    cfg = DTConfig.tiny(state_dim=7, act_dim=3, hidden_size=64, n_layer=2, context_len=8, dropout=0.0)
    model = DecisionTransformer(cfg)
    batch = make_batch(cfg, batch_size=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = model.loss(batch).item()
    for _ in range(150):
        optimizer.zero_grad()
        loss = model.loss(batch)
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 20, (first, loss.item())


def test_loss_is_mse_of_forward_and_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    model = DecisionTransformer(small_config(dropout=0.3))
    batch = make_batch(model.cfg)
    model.eval()
    expected = ((forward(model, batch) - batch["actions"]) ** 2).mean()
    torch.testing.assert_close(model.loss(batch), expected)
    model.train()
    assert not torch.equal(forward(model, batch), forward(model, batch))


@pytest.mark.parametrize("action_tanh", [True, False])
def test_predicted_actions_are_tanh_of_the_action_head_only_when_configured(action_tanh) -> None:
    torch.manual_seed(0)
    model = DecisionTransformer(small_config(action_tanh=action_tanh)).eval()
    with torch.no_grad():
        model.action_head.weight.mul_(200.0)  # push pre-activations well past +-1, where tanh bends
    batch = make_batch(model.cfg)
    head_out = []
    hook = model.action_head.register_forward_hook(lambda m, i, o: head_out.append(o))
    with torch.no_grad():
        preds = forward(model, batch)
    hook.remove()
    (raw,) = head_out
    assert raw.abs().max() > 3
    torch.testing.assert_close(preds, torch.tanh(raw) if action_tanh else raw)


def test_gpt2_style_init() -> None:
    torch.manual_seed(0)
    cfg = small_config(hidden_size=128, n_layer=4)
    model = DecisionTransformer(cfg)
    block = model.blocks[0]
    assert abs(block.attn.qkv.weight.std().item() - 0.02) < 0.002
    assert abs(block.mlp.proj.weight.std().item() - 0.02 / math.sqrt(2 * cfg.n_layer)) < 0.001
    assert block.attn.qkv.bias.abs().max() == 0
    assert torch.equal(block.ln1.weight, torch.ones(cfg.hidden_size))


# --- configs and validation --------------------------------------------------------------------
def test_paper_config_parameter_count() -> None:
    cfg = DTConfig.paper()
    assert (cfg.n_layer, cfg.n_head, cfg.hidden_size, cfg.context_len, cfg.dropout) == (4, 8, 512, 50, 0.2)
    count = DecisionTransformer(cfg).num_parameters()
    assert 12_000_000 <= count <= 16_000_000, count
    assert DecisionTransformer(DTConfig.tiny()).num_parameters() < 1_000_000


def test_config_round_trip_and_errors() -> None:
    cfg = DTConfig.tiny(token_layout="R,s,a")
    assert DTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown DTConfig keys \['hiden_size'\]"):
        DTConfig.from_dict({"hiden_size": 64})
    with pytest.raises(ValueError, match=r"hidden_size \(100\) must be divisible by n_head \(8\)"):
        DTConfig(hidden_size=100)
    with pytest.raises(ValueError, match=r"token_layout 's,a,R' is not supported"):
        DTConfig(token_layout="s,a,R")
    with pytest.raises(ValueError, match=r"attn_backend 'xformers' is not known"):
        DTConfig(attn_backend="xformers")
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        DTConfig(dropout=1.5)
    with pytest.raises(ValueError, match=r"n_layer must be a positive integer"):
        DTConfig(n_layer=0)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("states", torch.randn(3, 6, 8), r"states must have shape \[B, K, 7\], got \(3, 6, 8\)"),
        ("actions", torch.randn(3, 6, 4), r"actions must have shape \[3, 6, 3\], got \[3, 6, 4\]"),
        ("returns_to_go", torch.randn(3, 5, 1), r"returns_to_go must have shape \[3, 6, 1\], got \[3, 5, 1\]"),
        ("rewards", torch.randn(2, 6, 1), r"rewards must have shape \[3, 6, 1\], got \[2, 6, 1\]"),
        ("timesteps", torch.zeros(3, 6), r"timesteps must be an integer tensor"),
        ("timesteps", torch.full((3, 6), 40), r"timesteps must lie in \[0, 39\]"),
        ("rewards", None, r"has reward tokens, so rewards \[B, K, 1\] are required"),
    ],
)
def test_forward_input_errors_name_the_tensor(key: str, value, message: str) -> None:
    model = DecisionTransformer(small_config())
    batch = make_batch(model.cfg)
    batch[key] = value
    with pytest.raises(ValueError, match=message):
        forward(model, batch)


def test_context_longer_than_config_is_an_error() -> None:
    model = DecisionTransformer(small_config())
    batch = make_batch(model.cfg, k=7, start=0)
    with pytest.raises(ValueError, match=r"context of 7 timesteps is longer than config.context_len=6"):
        forward(model, batch)
    with pytest.raises(ValueError, match=r"batch is missing \['timesteps'\]"):
        model.loss({k: v for k, v in batch.items() if k != "timesteps"})
