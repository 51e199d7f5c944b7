"""dt_eva.adapters: LoRA / DoRA layers, injection, initialisers, merge, save / load, errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dt_eva.adapters import (
    DoraLayer,
    LoraLayer,
    adapter_layers,
    adapter_parameters,
    describe_adapters,
    inject_adapters,
    load_adapters,
    merge_adapters,
    save_adapters,
    unload_adapters,
    unmerge_adapters,
)
from dt_eva.adapters.init import whiten_components
from dt_eva.eva import EvaConfig, EvaResult, compute_eva


class Conv1D(nn.Module):
    """GPT-2's Conv1D layout (weight stored (in, out)), defined here so the test needs no transformers."""

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.2)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], self.nf)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 24)
        self.mid = Conv1D(20, 24)  # 24 -> 20
        self.fc2 = nn.Linear(20, 12, bias=False)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.fc2(torch.tanh(self.mid(torch.tanh(self.fc1(x)))))))


TARGETS = ["fc1", "mid", "fc2"]


def make_toy(seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    return Toy()


def perturb(model: nn.Module, seed: int = 1) -> None:
    """Give every adapter tensor a non-trivial value, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.add_(0.3 * torch.randn(p.shape, generator=gen))


def fake_eva(model: nn.Module, ranks: dict[str, int], seed: int = 0, rank: int = 4) -> EvaResult:
    """An EvaResult with orthonormal rows for the named layers of `model` (QR of random matrices)."""
    gen = torch.Generator().manual_seed(seed)
    comps, svals, evr = {}, {}, {}
    for name, r in ranks.items():
        mod = model.get_submodule(name)
        d = mod.in_features if isinstance(mod, nn.Linear) else mod.weight.shape[0]
        q, _ = torch.linalg.qr(torch.randn(d, max(r, 1), generator=gen))
        comps[name] = q.T[:r].contiguous()
        svals[name] = torch.linspace(5.0, 1.0, max(r, 1))[:r]
        evr[name] = svals[name] ** 2 / 100
    return EvaResult(
        ranks=dict(ranks),
        components=comps,
        singular_values=svals,
        explained_variance_ratio=evr,
        converged={n: True for n in ranks},
        num_batches=1,
        seconds=0.0,
        config=EvaConfig(rank=rank),
    )


X = torch.randn(5, 7, 16, generator=torch.Generator().manual_seed(42))


# ---- layer maths ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_lora_forward_is_base_plus_scaled_low_rank_update(kind):
    torch.manual_seed(0)
    base = nn.Linear(16, 10) if kind == "linear" else Conv1D(10, 16)
    layer = LoraLayer(copy.deepcopy(base), rank=3, alpha=6.0)
    with torch.no_grad():
        layer.lora_A.normal_()
        layer.lora_B.normal_()
    x = torch.randn(4, 16)
    w = base.weight if kind == "linear" else base.weight.T  # (out, in)
    expected = x @ w.T + base.bias + 2.0 * (x @ layer.lora_A.T @ layer.lora_B.T)
    assert layer.scaling == 2.0
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_dora_forward_and_gradients_match_the_formula_with_detached_norm(kind):
    torch.manual_seed(0)
    base = nn.Linear(16, 10) if kind == "linear" else Conv1D(10, 16)
    layer = DoraLayer(copy.deepcopy(base), rank=4, alpha=2.0)
    with torch.no_grad():
        layer.lora_A.normal_()
        layer.lora_B.normal_(std=0.1)
    layer.init_magnitude()
    with torch.no_grad():
        layer.magnitude.mul_(torch.linspace(0.5, 1.5, 10))
    x = torch.randn(6, 16)

    # reference: m * (W + s B A) x / ||W + s B A||_row (norm a constant for autograd) + bias
    a = layer.lora_A.detach().clone().requires_grad_()
    b = layer.lora_B.detach().clone().requires_grad_()
    m = layer.magnitude.detach().clone().requires_grad_()
    w = (base.weight if kind == "linear" else base.weight.T).detach()
    v = w + 0.5 * b @ a
    ref = F.linear(x, (m / v.norm(dim=1).detach())[:, None] * v) + base.bias.detach()

    out = layer(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    for ours, theirs in [(layer.lora_A, a), (layer.lora_B, b), (layer.magnitude, m)]:
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-5)


def test_dora_magnitude_starts_at_row_norms_so_output_equals_base():
    model = make_toy()
    ref = model(X)
    inject_adapters(model, TARGETS, method="dora", rank=4)
    torch.testing.assert_close(model(X), ref)
    layer = adapter_layers(model)["mid"]
    torch.testing.assert_close(layer.magnitude, model.mid.base_layer.weight.T.norm(dim=1))


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_dropout_acts_on_the_adapter_input_only_in_training(method):
    torch.manual_seed(0)
    base = nn.Linear(16, 10)
    layer = (DoraLayer if method == "dora" else LoraLayer)(copy.deepcopy(base), rank=3, alpha=6.0, dropout=0.5)
    with torch.no_grad():
        layer.lora_A.normal_()
        layer.lora_B.normal_()
    if method == "dora":
        layer.init_magnitude()
        with torch.no_grad():
            layer.magnitude.mul_(torch.linspace(0.5, 1.5, 10))
    x = torch.randn(6, 16)
    w = base.weight.detach()

    def reference(x_adapter):
        """LoRA: W x + b + s B A x'; DoRA as PEFT: n W x + b + (n - 1) W (x' - x) + n s B A x', with
        n = m / ||W + s B A||_row and x' the adapter's (dropped-out) input."""
        lora = 2.0 * (x_adapter @ layer.lora_A.T @ layer.lora_B.T)
        if method == "lora":
            return base(x) + lora
        n = layer.magnitude / (w + 2.0 * layer.lora_B @ layer.lora_A).norm(dim=1)
        return base(x) + (n - 1) * (x_adapter @ w.T) + n * lora

    layer.eval()
    torch.testing.assert_close(layer(x), reference(x), rtol=1e-5, atol=1e-5)
    layer.train()
    torch.manual_seed(7)
    out = layer(x)
    torch.manual_seed(7)
    dropped = F.dropout(x, 0.5, training=True)  # the same draw as the layer's nn.Dropout
    assert (dropped == 0).any()
    torch.testing.assert_close(out, reference(dropped), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, reference(x), atol=1e-3)


# ---- injection --------------------------------------------------------------------------------------


def test_random_init_leaves_output_unchanged_and_only_adapters_trainable():
    model = make_toy()
    ref = model(X)
    torch.manual_seed(3)
    wrapped = inject_adapters(model, TARGETS, rank=4, alpha=8.0)
    assert wrapped == {"fc1": 4, "mid": 4, "fc2": 4}
    torch.testing.assert_close(model(X), ref)
    layer = adapter_layers(model)["fc1"]
    assert torch.count_nonzero(layer.lora_B) == 0
    bound = 1 / math.sqrt(16)  # kaiming-uniform(a=sqrt(5)) bound = 1/sqrt(fan_in)
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.std() > bound / 4
    assert layer.scaling == 2.0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{t}.lora_{ab}" for t in TARGETS for ab in "AB"}
    assert {id(p) for p in adapter_parameters(model)} == {id(p) for p in model.parameters() if p.requires_grad}


def test_rank_zero_modules_stay_unwrapped_and_ranks_are_per_module():
    model = make_toy()
    wrapped = inject_adapters(model, TARGETS, ranks={"fc1": 2, "mid": 0}, rank=5)
    assert wrapped == {"fc1": 2, "fc2": 5}
    assert isinstance(model.mid, Conv1D) and not model.mid.weight.requires_grad
    assert isinstance(model.fc2, LoraLayer) and model.fc2.rank == 5
    assert "fc1" in describe_adapters(model) and "mid" not in describe_adapters(model)


def test_target_patterns_match_like_eva_regex_and_predicate():
    assert set(inject_adapters(make_toy(), r"fc\d", rank=2)) == {"fc1", "fc2"}
    pred = lambda name, module: name.startswith("m")  # noqa: E731
    assert set(inject_adapters(make_toy(), pred, rank=2)) == {"mid"}
    assert set(inject_adapters(make_toy(), None, rank=2)) == {"fc1", "mid", "fc2", "head"}


@pytest.mark.parametrize("init", ["pissa", "olora"])
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_pissa_olora_keep_the_output_and_store_the_residual(init, method):
    model = make_toy()
    ref = model(X)
    original = {t: model.get_submodule(t).weight.detach().clone() for t in TARGETS}
    inject_adapters(model, TARGETS, method=method, rank=4, alpha=2.0, init=init)
    torch.testing.assert_close(model(X), ref, rtol=1e-4, atol=1e-5)
    assert sorted(adapter_layers(model)) == sorted(TARGETS)
    for name, layer in adapter_layers(model).items():
        w = original[name] if layer.kind == "linear" else original[name].T
        assert not torch.allclose(layer.base_weight(), w)  # the base now holds the residual
        torch.testing.assert_close(layer.base_weight() + layer.delta_weight(), w, rtol=1e-5, atol=1e-5)


def test_pissa_adapter_is_the_top_singular_subspace():
    model = make_toy()
    w = model.fc1.weight.detach().clone()
    inject_adapters(model, ["fc1"], rank=3, init="pissa")
    layer = model.fc1
    u, s, vh = torch.linalg.svd(w)
    torch.testing.assert_close(layer.delta_weight(), u[:, :3] @ torch.diag(s[:3]) @ vh[:3], rtol=1e-4, atol=1e-5)


# ---- EVA-based inits --------------------------------------------------------------------------------


def test_eva_init_takes_ranks_and_components_from_the_result():
    model = make_toy()
    ref = model(X)
    eva = fake_eva(model, {"fc1": 6, "mid": 0, "fc2": 2}, rank=4)
    wrapped = inject_adapters(model, init="eva", eva=eva)
    assert wrapped == {"fc1": 6, "fc2": 2}
    assert isinstance(model.mid, Conv1D)
    torch.testing.assert_close(model.fc1.lora_A, eva.components["fc1"])
    torch.testing.assert_close(model(X), ref)  # B = 0
    assert model.fc1.scaling == pytest.approx(1 / 6)


def test_eva_adjust_alpha_keeps_alpha_over_rank_constant():
    model = make_toy()
    eva = fake_eva(model, {"fc1": 6, "mid": 4, "fc2": 2}, rank=4)
    inject_adapters(model, init="eva", eva=eva, alpha=2.0, adjust_alpha=True)
    scalings = {n: layer.scaling for n, layer in adapter_layers(model).items()}
    assert scalings == pytest.approx({"fc1": 0.5, "mid": 0.5, "fc2": 0.5})
    assert model.fc1.alpha == pytest.approx(3.0)


def test_eva_whiten_divides_each_component_by_its_eigenvalue():
    """The paper's EVA-whiten against a hand computation: the SVD of the activations each layer saw."""
    model = make_toy()
    batches = [torch.randn(5, 7, 16, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    captured = {t: [] for t in TARGETS}
    hooks = [model.get_submodule(t).register_forward_hook(lambda m, i, o, t=t: captured[t].append(i[0].reshape(-1, i[0].shape[-1])))
             for t in TARGETS]
    with torch.no_grad():
        for x in batches:
            model(x)
    for h in hooks:
        h.remove()
    # rho large enough that every layer keeps all its directions: the incremental SVD is then exact
    config = EvaConfig(rank=4, rho=6.0, tau=1.0, max_batches=3, progress=False)
    with pytest.warns(UserWarning, match="max_batches=3"):
        eva = compute_eva(model, batches, config, target_modules=TARGETS)
    ref = model(X)
    wrapped = inject_adapters(model, init="eva_whiten", eva=eva)
    assert len(wrapped) >= 2 and sum(wrapped.values()) == 12
    torch.testing.assert_close(model(X), ref)  # B = 0
    for name, r in wrapped.items():
        rows = torch.cat(captured[name]).double()
        m = rows.shape[0]
        assert eva.num_samples[name] == m == 3 * 35
        _, sigma, vh = torch.linalg.svd(rows - rows.mean(0), full_matrices=False)
        eigenvalues = sigma[:r] ** 2 / (m - 1)  # of the covariance of the layer's inputs
        a = adapter_layers(model)[name].lora_A.double()
        signs = torch.sign((a * vh[:r]).sum(dim=1, keepdim=True))  # an SVD fixes each row up to its sign
        torch.testing.assert_close(a, signs * vh[:r] / eigenvalues[:, None], rtol=1e-4, atol=1e-5)
        assert not torch.allclose(a.norm(dim=1), torch.ones(r, dtype=a.dtype), rtol=0.1)  # not EVA's unit rows
    comps, sv = eva.components["fc1"], eva.singular_values["fc1"]
    torch.testing.assert_close(whiten_components(comps, sv, 105), comps * 104 / sv[:, None] ** 2)


def test_eva_whiten_refuses_undefined_scalings_before_touching_the_model():
    model = make_toy()
    eva = fake_eva(model, {"fc1": 2, "mid": 2, "fc2": 2})
    eva.num_samples = {"fc1": 50, "mid": 50}
    with pytest.raises(ValueError, match=r"init='eva_whiten' needs the number of activation rows EVA saw for 'fc2'"):
        inject_adapters(model, init="eva_whiten", eva=eva)
    eva.num_samples["fc2"] = 50
    eva.singular_values["mid"] = torch.tensor([3.0, 0.0])
    with pytest.raises(ValueError, match=r"init='eva_whiten' for 'mid': EVA-whiten needs positive eigenvalues"):
        inject_adapters(model, init="eva_whiten", eva=eva)
    assert not adapter_layers(model)  # nothing was wrapped
    with pytest.raises(ValueError, match="number of activation rows"):
        whiten_components(eva.components["fc1"], eva.singular_values["fc1"], 1)


def test_lora_redist_takes_eva_ranks_with_random_a():
    model = make_toy()
    eva = fake_eva(model, {"fc1": 6, "mid": 4, "fc2": 2})
    torch.manual_seed(5)
    wrapped = inject_adapters(model, init="lora_redist", eva=eva)
    assert wrapped == {"fc1": 6, "mid": 4, "fc2": 2}
    # A is LoRA's random init with EVA's ranks: the same draws as init="random" with those ranks
    plain = make_toy()
    torch.manual_seed(5)
    inject_adapters(plain, TARGETS, ranks=dict(eva.ranks), init="random")
    assert sorted(adapter_layers(plain)) == sorted(TARGETS)
    for name, layer in adapter_layers(plain).items():
        assert torch.equal(adapter_layers(model)[name].lora_A, layer.lora_A), name
        assert torch.count_nonzero(adapter_layers(model)[name].lora_B) == 0
    assert not torch.allclose(model.fc1.lora_A[:6], eva.components["fc1"], atol=0.05)


# ---- merge / unmerge ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lora", "dora"])
@pytest.mark.parametrize("init", ["random", "pissa"])
def test_merged_and_unmerged_outputs_agree(method, init):
    model = make_toy()
    inject_adapters(model, TARGETS, method=method, rank=4, alpha=3.0, init=init)
    perturb(model)
    model.eval()
    unmerged = model(X)
    bases = {n: layer.base_layer.weight.detach().clone() for n, layer in adapter_layers(model).items()}
    assert merge_adapters(model) == 3
    assert all(layer.merged for layer in adapter_layers(model).values())
    torch.testing.assert_close(model(X), unmerged, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(model.fc1.base_layer.weight, bases["fc1"])
    assert unmerge_adapters(model) == 3
    torch.testing.assert_close(model(X), unmerged, rtol=1e-4, atol=1e-5)
    for name, layer in adapter_layers(model).items():
        torch.testing.assert_close(layer.base_layer.weight, bases[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_unload_with_merge_gives_a_plain_model_with_the_same_outputs(method):
    model = make_toy()
    inject_adapters(model, TARGETS, method=method, rank=4, init="olora")
    perturb(model)
    expected = model(X)
    assert unload_adapters(model) == {"fc1": 4, "mid": 4, "fc2": 4}
    assert not adapter_layers(model) and isinstance(model.mid, Conv1D)
    assert set(model.state_dict()) == set(make_toy().state_dict())
    torch.testing.assert_close(model(X), expected, rtol=1e-4, atol=1e-5)


# ---- save / load ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,init", [("lora", "random"), ("dora", "random"), ("lora", "pissa"), ("dora", "olora")]
)
def test_save_then_load_onto_a_fresh_base_model_reproduces_outputs(tmp_path, method, init):
    model = make_toy()
    inject_adapters(model, TARGETS, method=method, ranks={"fc2": 0}, rank=3, alpha=2.0, init=init, dropout=0.1)
    perturb(model)
    model.eval()
    expected = model(X)
    merge_adapters(model)  # saving a merged model still writes the unmerged adapter
    save_adapters(model, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]

    fresh = make_toy()  # same seed: the base model
    assert not torch.allclose(fresh(X), expected)
    wrapped = load_adapters(fresh, tmp_path / "adapter")
    assert wrapped == {"fc1": 3, "mid": 3}
    fresh.eval()
    torch.testing.assert_close(fresh(X), expected, rtol=1e-5, atol=1e-5)
    assert fresh.fc1.dropout_p == 0.1 and fresh.fc1.alpha == 2.0 and fresh.fc1.method == method
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == {
        n for n, p in model.named_parameters() if p.requires_grad
    }


def test_load_onto_the_wrong_base_model_says_so(tmp_path):
    model = make_toy()
    inject_adapters(model, ["fc1"], rank=2)
    save_adapters(model, tmp_path / "a")
    other = make_toy()
    other.fc1 = nn.Linear(16, 30)
    with pytest.raises(ValueError, match=r"'fc1' is 16 -> 30 but the adapters were saved for 16 -> 24"):
        load_adapters(other, tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="save_adapters"):
        load_adapters(make_toy(), tmp_path / "missing")
    with pytest.raises(ValueError, match="already has adapters"):
        load_adapters(model, tmp_path / "a")


# ---- errors ---------------------------------------------------------------------------------------------


def test_rank_above_the_layer_limit_names_layer_and_limit():
    model = make_toy()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"rank 13 for layer 'fc2' \(20 -> 12\) exceeds its limit .* = 12"):
        inject_adapters(model, TARGETS, rank=13)
    assert not adapter_layers(model)  # validation happens before any layer is wrapped
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_arguments_get_clear_errors():
    with pytest.raises(ValueError, match="unknown adapter method 'vera'; valid: lora, dora"):
        inject_adapters(make_toy(), TARGETS, method="vera")
    with pytest.raises(ValueError, match="unknown adapter init 'gauss'; valid: random, eva, eva_whiten, lora_redist, pissa, olora"):
        inject_adapters(make_toy(), TARGETS, init="gauss")
    with pytest.raises(ValueError, match="init='eva' needs an EvaResult"):
        inject_adapters(make_toy(), TARGETS, init="eva")
    with pytest.raises(ValueError, match="not targets: 'head'"):
        inject_adapters(make_toy(), TARGETS, ranks={"head": 2})
    with pytest.raises(ValueError, match="matched no module"):
        inject_adapters(make_toy(), ["nothing_here"])
    with pytest.raises(ValueError, match=r"cannot be adapted: '1' \(LayerNorm\)"):
        inject_adapters(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), ["0", "1"])
    model = make_toy()
    inject_adapters(model, TARGETS, rank=2)
    with pytest.raises(ValueError, match="already has adapters"):
        inject_adapters(model, TARGETS, rank=2)


def test_eva_result_that_does_not_fit_the_layer_is_rejected():
    model = make_toy()
    eva = fake_eva(model, {"fc1": 3, "mid": 3, "fc2": 3})
    eva.components["mid"] = torch.eye(3, 7)
    with pytest.raises(ValueError, match=r"EVA components for 'mid' have shape \(3, 7\) but the layer has in_features=24"):
        inject_adapters(model, init="eva", eva=eva)
    partial = fake_eva(model, {"fc1": 3})
    with pytest.raises(ValueError, match="no entry for 'mid', 'fc2'"):
        inject_adapters(make_toy(), TARGETS, init="eva", eva=partial)
    with pytest.raises(ValueError, match="takes its ranks from the EvaResult"):
        inject_adapters(make_toy(), init="eva", eva=partial, ranks={"fc1": 2})


def test_training_moves_only_adapters_and_lowers_the_loss():
    model = make_toy()
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    inject_adapters(model, TARGETS, method="dora", rank=4, alpha=4.0)
    target = torch.randn(5, 7, 3, generator=torch.Generator().manual_seed(5))
    opt = torch.optim.Adam(adapter_parameters(model), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = F.mse_loss(model(X), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    state = model.state_dict()
    for key, value in frozen.items():
        wrapped_key = key if key in state else key.replace(".weight", ".base_layer.weight").replace(
            ".bias", ".base_layer.bias"
        )
        assert torch.equal(state[wrapped_key], value), key


def test_every_user_of_a_layer_shape_reads_it_from_one_place():
    """nn.Linear stores (out, in) and Conv1D (in, out): EVA's matching, the adapters, the PEFT bridge and
    the fine-tuning rank check all get (in, out) from `eva.matching.weight_shape`; a module that only
    looks like a Conv1D (wrong layout) is adaptable nowhere."""
    from dt_eva.adapters.layers import layer_kind as adapters_layer_kind
    from dt_eva.eva.matching import adaptable_in_features, is_conv1d, layer_kind, weight_shape
    from dt_eva.methods.model import check_rank_fits

    linear, conv = nn.Linear(4, 6), Conv1D(6, 4)  # both 4 -> 6
    assert [layer_kind(linear), layer_kind(conv)] == ["linear", "conv1d"] and is_conv1d(conv)
    assert weight_shape(linear) == weight_shape(conv) == (4, 6)
    assert adaptable_in_features(linear) == adaptable_in_features(conv) == 4
    assert LoraLayer(conv, rank=2).in_features == 4 and adapters_layer_kind is layer_kind
    fake = Conv1D(6, 4)
    fake.nf = 5  # not the stored layout
    assert layer_kind(fake) is None and adaptable_in_features(fake) is None
    with pytest.raises(ValueError, match="cannot adapt a Conv1D: only nn.Linear and GPT-2 Conv1D"):
        LoraLayer(fake, rank=2)
    with pytest.raises(ValueError, match=r"^rank = 5 is too large for layer 'mid' \(4 -> 6 features\)"):
        check_rank_fits(nn.ModuleDict({"mid": conv}), ["mid"], 5)
