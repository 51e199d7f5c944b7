"""EVA core: reference computations, redistribution, convergence, dedup, memory, errors, save/load."""

from __future__ import annotations

import gc
import warnings
import weakref
from pathlib import Path

import pytest
import torch
from torch import nn

import dt_eva.eva.core as eva_core
from dt_eva.eva import EvaConfig, EvaResult, compute_eva, match_modules
from dt_eva.eva.isvd import IncrementalSVD
from dt_eva.eva.redistribute import redistribute_ranks


# ---------------------------------------------------------------------------------------------
# small models and data


class Conv1D(nn.Module):
    """Stand-in with GPT-2's Conv1D layout: weight (in, out), `nf` = out; y = x @ W + b."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.1)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return x @ self.weight + self.bias


class Block(nn.Module):
    """Separate q/k/v reading one input, an output projection, an MLP (Linear + Conv1D), a LayerNorm."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.fc = Conv1D(2 * d, d)
        self.proj = nn.Linear(2 * d, d)

    def forward(self, x):
        h = self.ln(x)
        att = torch.softmax(self.q(h) @ self.k(h).transpose(-1, -2) / 4.0, dim=-1) @ self.v(h)
        x = x + self.o(att)
        return x + self.proj(torch.relu(self.fc(x)))


def lowrank_batches(n, rows=64, d=16, scales=(9.0, 6.0, 4.0, 2.5, 1.5, 1.0), noise=0.01, seed=0, lead=None):
    """Rows = Gaussian coefficients on a fixed random basis with decaying scales + small noise, plus an offset."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, len(scales), generator=g)).Q.T
    offset = torch.randn(d, generator=g)
    s = torch.tensor(scales)
    for _ in range(n):
        z = torch.randn(rows, len(scales), generator=g) * s
        x = z @ basis + offset + noise * torch.randn(rows, d, generator=g)
        yield x if lead is None else x.view(*lead, d)


def cfg(**kw) -> EvaConfig:
    kw.setdefault("progress", False)
    return EvaConfig(**kw)


def abs_cos_rows(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=1).abs()


# ---------------------------------------------------------------------------------------------
# config and matching


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"rank": 0}, "rank"),
        ({"rank": 2.5}, "rank"),
        ({"rho": 0.5}, "rho"),
        ({"tau": 1.5}, "tau"),
        ({"tau": -0.1}, "tau"),
        ({"max_batches": 0}, "max_batches"),
        ({"svd": "qr"}, "svd"),
        ({"oversample": -1}, "oversample"),
    ],
)
def test_config_rejects_bad_values(kwargs, word):
    with pytest.raises(ValueError, match=word):
        EvaConfig(**kwargs)


def test_config_components_and_roundtrip():
    c = EvaConfig(rank=8, rho=1.5)
    assert c.num_components == 12
    assert EvaConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown keys"):
        EvaConfig.from_dict({"rank": 2, "bogus": 1})


def test_whiten_is_no_config_option_but_old_results_with_it_still_load():
    assert "whiten" not in EvaConfig().to_dict()
    with pytest.raises(TypeError, match="whiten"):
        EvaConfig(whiten=True)
    # dt-eva 0.1.0 saved `whiten` in the config: read and dropped, for either value
    assert EvaConfig.from_dict({"rank": 3, "whiten": True}) == EvaConfig(rank=3)
    legacy = Path(__file__).parent / "fixtures/legacy/runs/ft-eva/eva"
    assert '"whiten": false' in (legacy / "result.json").read_text()
    result = EvaResult.load(legacy)
    assert result.config == EvaConfig(rank=2, rho=2.0, tau=0.9, progress=False)
    assert result.ranks == {f"blocks.0.{m}": 2 for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")}
    assert result.num_samples["blocks.0.attn.proj"] == 480
    torch.testing.assert_close(result.lora_A("blocks.0.mlp.fc"), result.components["blocks.0.mlp.fc"])


def test_match_modules_peft_style():
    model = nn.Sequential(Block(), Block())
    names = lambda sel: [n for n, _ in match_modules(model, sel)]  # noqa: E731
    assert names(["q"]) == ["0.q", "1.q"]  # suffix after a dot
    assert names(["1.q", "o"]) == ["0.o", "1.q", "1.o"]  # full names and suffixes, named_modules order
    assert names(r"0\.(q|k)") == ["0.q", "0.k"]  # a regex string is full-matched
    assert names(r".*\.q") == ["0.q", "1.q"]
    with pytest.raises(ValueError, match="matched no module"):
        names("q")  # a regex must match the whole name, "0.q" is not "q"
    assert names(lambda n, m: n.endswith("proj")) == ["0.proj", "1.proj"]
    default = names(None)
    assert "0.fc" in default and "0.q" in default and "0.ln" not in default  # Conv1D recognised, LayerNorm not
    assert len(default) == 12


def test_match_modules_errors_name_the_problem():
    model = Block()
    with pytest.raises(ValueError, match="'nope'.*matched no module"):
        match_modules(model, ["nope"])
    with pytest.raises(ValueError, match=r"'ln' \(LayerNorm\)"):
        match_modules(model, ["ln", "q"])
    with pytest.raises(ValueError, match="target_modules must be"):
        match_modules(model, [])


# ---------------------------------------------------------------------------------------------
# the incremental SVD against a full SVD


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("method", ["exact", "randomized"])
def test_incremental_svd_equals_full_svd_of_stacked_rows(center, method):
    batches = list(lowrank_batches(12))
    svd = IncrementalSVD(6, center=center, method=method, oversample=4, power_iters=2)
    for x in batches:
        svd.update(x)
    stacked = torch.cat(batches)
    ref = stacked - stacked.mean(0) if center else stacked
    _, s, vh = torch.linalg.svd(ref.double(), full_matrices=False)
    assert svd.num_samples == stacked.shape[0]
    torch.testing.assert_close(svd.singular_values.double(), s[:6], rtol=1e-3, atol=1e-3)  # float32 state
    assert abs_cos_rows(svd.components.double(), vh[:6]).min() > 0.9999
    assert torch.allclose(svd.components @ svd.components.T, torch.eye(6), atol=1e-5)  # orthonormal rows
    evr = s[:6] ** 2 / ref.square().sum()
    torch.testing.assert_close(svd.explained_variance_ratio.double(), evr, rtol=1e-3, atol=1e-6)


def test_compute_eva_matches_reference_svd_on_consumed_batches():
    model = nn.Sequential(nn.Linear(16, 8))
    batches = list(lowrank_batches(60, lead=(4, 16)))
    result = compute_eva(model, batches, cfg(rank=4, rho=1.5, tau=0.9999, max_batches=60))
    assert result.converged == {"0": True}
    assert 2 <= result.num_batches < 60
    used = torch.cat(batches[: result.num_batches]).reshape(-1, 16)  # exactly the consumed batches
    assert result.num_samples["0"] == used.shape[0]
    centred = (used - used.mean(0)).double()
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    r = result.ranks["0"]
    assert r == 4  # one layer: it gets the whole budget
    assert abs_cos_rows(result.components["0"].double(), vh[:r]).min() > 0.9999
    torch.testing.assert_close(result.singular_values["0"].double(), s[:r], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(
        result.explained_variance_ratio["0"].double(), s[:r] ** 2 / centred.square().sum(), rtol=1e-4, atol=1e-6
    )
    assert result.candidate_explained_variance_ratio["0"].shape == (6,)


def test_token_mask_selects_rows_for_the_svd():
    model = nn.Sequential(nn.Linear(16, 8))
    batches = list(lowrank_batches(5, lead=(4, 16)))
    mask = torch.zeros(4, 16, dtype=torch.bool)
    mask[:, ::3] = True
    with pytest.warns(UserWarning, match="max_batches=5"):
        result = compute_eva(model, batches, cfg(rank=3, rho=2, tau=1.0, max_batches=5, svd="exact"),
                             token_mask_fn=lambda b: mask)
    rows = torch.cat([b[mask] for b in batches])
    assert result.num_samples["0"] == rows.shape[0] == 5 * 4 * 6
    _, s, vh = torch.linalg.svd((rows - rows.mean(0)).double(), full_matrices=False)
    assert abs_cos_rows(result.components["0"].double(), vh[:3]).min() > 0.9999


# ---------------------------------------------------------------------------------------------
# rank redistribution


def test_redistribution_on_hand_made_ratios():
    cands = {
        "a": torch.tensor([0.50, 0.20, 0.01]),
        "b": torch.tensor([0.30, 0.25, 0.10]),
        "c": torch.tensor([0.05, 0.04, 0.03]),
    }
    assert redistribute_ranks(cands, 4) == {"a": 2, "b": 2, "c": 0}
    assert redistribute_ranks(cands, 6) == {"a": 2, "b": 3, "c": 1}
    assert redistribute_ranks(cands, 100) == {"a": 3, "b": 3, "c": 3}
    assert redistribute_ranks(cands, 0) == {"a": 0, "b": 0, "c": 0}
    # ties keep the order of the candidates (deterministic)
    assert redistribute_ranks({"x": torch.tensor([0.5]), "y": torch.tensor([0.5])}, 1) == {"x": 1, "y": 0}


def test_rho_one_gives_uniform_ranks():
    model = nn.Sequential(Block(), Block())
    batches = list(lowrank_batches(30, lead=(4, 16)))
    result = compute_eva(model, batches, cfg(rank=3, rho=1.0, tau=0.99, max_batches=30))
    assert set(result.ranks.values()) == {3}
    assert sum(result.ranks.values()) == result.budget == 12 * 3


class Inputs(nn.Module):
    """One Linear per input tensor (named a, b, c, ...), so each layer sees its own spectrum."""

    def __init__(self, n: int, d: int = 8) -> None:
        super().__init__()
        self.names = "abcdefgh"[:n]
        for name in self.names:
            self.add_module(name, nn.Linear(d, 4))

    def forward(self, *xs):
        return sum(getattr(self, name)(x) for name, x in zip(self.names, xs))


def spectra_batches(n, *scales, rows=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        yield tuple(torch.randn(rows, len(s), generator=g) * torch.tensor(s) for s in scales)


STEEP, FLAT = (10.0, 3.0, 1.0, 0.3, 0.1, 0.1, 0.1, 0.1), (3.0, 2.7, 2.4, 2.1, 1.8, 1.5, 1.2, 0.9)


def test_rho_two_moves_rank_to_layers_with_concentrated_variance():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = compute_eva(Inputs(2), spectra_batches(40, STEEP, FLAT), cfg(rank=2, rho=2.0, tau=0.99, max_batches=40))
    # a's first component explains ~90 % of its variance, b's spread out: a keeps 1, b takes 3 of the budget 4
    assert result.ranks == {"a": 1, "b": 3}

    # by hand: each layer's SVD of the rows it consumed (a layer stops at its convergence), the
    # ratios sigma^2 / sum of squares, then the budget goes to the largest ratios of both layers pooled
    batches = list(spectra_batches(40, STEEP, FLAT))
    ratios, vhs = {}, {}
    for i, name in enumerate("ab"):
        rows = torch.cat([b[i] for b in batches[: result.num_samples[name] // 64]]).double()
        assert rows.shape[0] == result.num_samples[name]
        centred = rows - rows.mean(0)
        _, s, vhs[name] = torch.linalg.svd(centred, full_matrices=False)
        ratios[name] = s[:4] ** 2 / centred.square().sum()  # round(rho * rank) = 4 candidates
    pooled = sorted(((float(v), name) for name, r in ratios.items() for v in r), reverse=True)[: result.budget]
    assert {name: sum(n == name for _, n in pooled) for name in "ab"} == result.ranks
    # the incremental SVD keeps 4 of b's 8 (flat) directions between batches, so its tail is ~2 % off
    for name, r in result.ranks.items():
        candidates = result.candidate_explained_variance_ratio[name].double()
        torch.testing.assert_close(candidates, ratios[name], rtol=0.03, atol=1e-6)
        torch.testing.assert_close(result.explained_variance_ratio[name].double(), ratios[name][:r], rtol=0.03, atol=1e-6)
        assert result.components[name].shape == (r, 8)
        assert abs_cos_rows(result.components[name].double(), vhs[name][:r]).min() > 0.998


# ---------------------------------------------------------------------------------------------
# shared inputs


class CountingSVD(IncrementalSVD):
    instances: list["CountingSVD"] = []

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.updates = 0
        CountingSVD.instances.append(self)

    def update(self, rows):
        self.updates += 1
        super().update(rows)


@pytest.fixture
def counting_svd(monkeypatch):
    CountingSVD.instances = []
    monkeypatch.setattr(eva_core, "IncrementalSVD", CountingSVD)
    return CountingSVD.instances


def test_layers_reading_one_input_share_one_svd(counting_svd):
    model = Block()
    batches = list(lowrank_batches(4, lead=(4, 16)))
    with pytest.warns(UserWarning):
        result = compute_eva(model, batches, cfg(rank=2, tau=1.0, max_batches=4), target_modules=["q", "k", "v", "o"])
    assert result.shared_inputs == {"k": "q", "v": "q"}
    assert len(counting_svd) == 2  # one SVD for q/k/v, one for o
    assert [s.updates for s in counting_svd] == [4, 4]
    torch.testing.assert_close(result.candidate_explained_variance_ratio["k"], result.candidate_explained_variance_ratio["q"])
    r = min(result.ranks["q"], result.ranks["v"])
    torch.testing.assert_close(result.components["v"][:r], result.components["q"][:r])


class Temporaries(nn.Module):
    """Two layers reading different temporaries of the same shape: the second may reuse the first's freed memory."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        y = self.a(torch.relu(x))  # relu(x) is freed when a() returns ...
        return y + self.b(torch.tanh(x))  # ... and tanh(x) can land at the same address


def test_different_inputs_at_a_reused_address_are_not_shared():
    batches = list(lowrank_batches(3, lead=(4, 16)))
    # the premise: without references held, the second temporary often reuses the first one's memory
    ptrs = []
    model = Temporaries()
    hooks = [m.register_forward_hook(lambda m, i, o: ptrs.append(i[0].data_ptr())) for m in (model.a, model.b)]
    with torch.no_grad():
        model(batches[0])
    for h in hooks:
        h.remove()
    with pytest.warns(UserWarning):
        result = compute_eva(model, batches, cfg(rank=2, tau=1.0, max_batches=3))
    assert result.shared_inputs == {}, f"addresses {ptrs}"
    assert not torch.allclose(result.components["a"], result.components["b"], atol=1e-3)


class InPlaceAfterUse(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 4)

    def forward(self, x):
        t = torch.relu(x)
        y = self.a(t)
        t.zero_()  # the layer's input is overwritten after the layer read it
        return y


def test_first_batch_rows_are_taken_at_call_time():
    batches = list(lowrank_batches(3, lead=(4, 16)))
    with pytest.warns(UserWarning):
        result = compute_eva(InPlaceAfterUse(), batches, cfg(rank=2, tau=1.0, max_batches=3, svd="exact"))
    reference = IncrementalSVD(4, method="exact")
    for x in batches:
        reference.update(torch.relu(x).reshape(-1, 16))
    torch.testing.assert_close(result.components["a"], reference.components[:2])
    torch.testing.assert_close(result.singular_values["a"], reference.singular_values[:2])


# ---------------------------------------------------------------------------------------------
# convergence, re-hooking, the cap, memory


def test_converged_layer_is_unhooked_and_rehooked_when_it_gains_rank(counting_svd, monkeypatch):
    """a converges on its top-2 early; once b's spectrum concentrates, a is allotted a 3rd component
    that had not converged, so a is hooked again until it does."""
    step = {"i": -1}
    seen: dict[int, list[int]] = {}
    update = CountingSVD.update

    def logging_update(self, rows):
        seen.setdefault(id(self), []).append(step["i"])
        update(self, rows)

    monkeypatch.setattr(CountingSVD, "update", logging_update)

    def batches():
        g = torch.Generator().manual_seed(0)
        sa = torch.tensor([4.0, 3.0, 1.5, 1.5, 0.1, 0.1, 0.1, 0.1])
        for i in range(20):
            step["i"] = i
            sb = torch.tensor([1.0 if i < 6 else 30.0, 1, 1, 1, 1, 0.1, 0.1, 0.1])
            yield torch.randn(64, 8, generator=g) * sa, torch.randn(64, 8, generator=g) * sb

    result = compute_eva(Inputs(2), batches(), cfg(rank=2, rho=2, tau=0.999, max_batches=20))
    steps_a = seen[id(counting_svd[0])]
    steps_b = seen[id(counting_svd[1])]
    gaps = [j for i, j in zip(steps_a, steps_a[1:]) if j != i + 1]
    assert gaps, f"a was never unhooked and re-hooked: {steps_a}"
    assert steps_a[-1] > steps_b[-1] >= 6  # a resumed after b's change and kept going
    assert result.ranks == {"a": 3, "b": 1}
    assert all(result.converged.values())
    assert result.num_samples["a"] == 64 * len(steps_a)


def test_cap_warns_and_names_unconverged_layers():
    model = Block()
    batches = lowrank_batches(10, lead=(4, 16))
    with pytest.warns(UserWarning, match=r"max_batches=3 was reached") as rec:
        result = compute_eva(model, batches, cfg(rank=2, tau=1.0, max_batches=3), target_modules=["q", "o", "fc"])
    msg = str(rec[0].message)
    for name in ("q", "o", "fc"):
        assert f" {name}" in msg or msg.endswith(name)
    assert result.num_batches == 3
    assert result.converged == {"q": False, "o": False, "fc": False}
    assert all(result.components[n].shape[0] == result.ranks[n] for n in result.names)  # latest estimates used


def test_running_out_of_batches_warns():
    with pytest.warns(UserWarning, match="batches ran out.*: 0"):
        compute_eva(nn.Sequential(nn.Linear(16, 4)), list(lowrank_batches(2)), cfg(rank=2, tau=1.0))


def test_state_size_is_independent_of_the_number_of_batches(counting_svd):
    def state_after(n):
        counting_svd.clear()
        with pytest.warns(UserWarning):
            compute_eva(Block(), lowrank_batches(n, lead=(4, 16)), cfg(rank=2, tau=1.0, max_batches=n))
        return [s.state_bytes() for s in counting_svd]

    small, large = state_after(2), state_after(12)
    assert small == large and sum(small) > 0


def test_batches_are_not_kept_alive():
    alive: list[weakref.ref] = []
    max_alive = [0]

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l = nn.Linear(16, 4)

        def forward(self, x):
            max_alive[0] = max(max_alive[0], sum(r() is not None for r in alive))
            return self.l(x)

    def stream():
        for x in lowrank_batches(25, lead=(4, 16)):
            alive.append(weakref.ref(x))
            yield x

    with pytest.warns(UserWarning):
        compute_eva(Probe(), stream(), cfg(rank=2, tau=1.0, max_batches=25))
    gc.collect()
    assert len(alive) == 25
    assert max_alive[0] <= 2, "past batches are held in memory"
    assert all(r() is None for r in alive)


def test_model_mode_and_grad_restored_and_forward_stops_after_last_hooked_layer():
    seen = {}

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l = nn.Linear(16, 16)
            self.drop = nn.Dropout(0.5)
            self.tail_calls = 0

        def forward(self, x):
            seen["training"] = self.training
            seen["grad"] = torch.is_grad_enabled()
            h = self.l(x)
            self.tail_calls += 1  # runs only when the forward was not stopped after l
            return self.drop(h)

    model = Model()
    model.train()
    model.drop.eval()  # a mixed state must come back exactly
    result = compute_eva(model, lowrank_batches(40, lead=(4, 16)), cfg(rank=2, tau=0.99, max_batches=40))
    assert seen == {"training": False, "grad": False}
    assert model.training and not model.drop.training and model.l.training
    assert model.tail_calls == 1  # the probe pass ran to the end, later batches stopped after `l`
    assert result.num_batches > 1
    assert not model.l._forward_hooks  # every hook removed


def test_forward_fn_defaults_and_custom():
    class Kw(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l = nn.Linear(16, 4)

        def forward(self, x, scale=1.0):
            return self.l(x * scale)

    model = Kw()
    xs = list(lowrank_batches(3, lead=(4, 16)))
    kw = dict(config=cfg(rank=2, tau=1.0, max_batches=3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = compute_eva(model, [{"x": x} for x in xs], **kw)
        b = compute_eva(model, [(x,) for x in xs], **kw)
        c = compute_eva(model, xs, **kw)
        calls = []
        d = compute_eva(model, xs, forward_fn=lambda m, batch: calls.append(1) or m(batch, scale=2.0), **kw)
    for r in (b, c):
        torch.testing.assert_close(r.components["l"], a.components["l"])
    torch.testing.assert_close(d.components["l"], a.components["l"], atol=1e-4, rtol=1e-4)  # scale: same directions
    torch.testing.assert_close(d.singular_values["l"], 2 * a.singular_values["l"], rtol=1e-4, atol=1e-4)
    assert len(calls) >= 3


def test_conv1d_layers_use_in_features_from_weight_layout():
    model = Block()
    with pytest.warns(UserWarning):
        result = compute_eva(model, lowrank_batches(3, lead=(4, 16)), cfg(rank=2, tau=1.0, max_batches=3),
                             target_modules=["fc"])
    assert result.components["fc"].shape == (2, 16)


# ---------------------------------------------------------------------------------------------
# errors


def test_errors_are_clear():
    model = Block()
    batches = list(lowrank_batches(3, lead=(4, 16)))
    with pytest.raises(ValueError, match="batches is empty"):
        compute_eva(model, [], cfg())
    with pytest.raises(ValueError, match="batches is empty"):
        compute_eva(model, iter(()), cfg())
    with pytest.raises(ValueError, match="batches must be an iterable"):
        compute_eva(model, batches[0], cfg())
    with pytest.raises(ValueError, match="'attn'.*matched no module"):
        compute_eva(model, batches, cfg(), target_modules=["attn"])
    with pytest.raises(ValueError, match=r"cannot be adapted: 'ln' \(LayerNorm\)"):
        compute_eva(model, batches, cfg(), target_modules=["ln"])
    with pytest.raises(ValueError, match="selected no rows in batch 0"):
        compute_eva(model, batches, cfg(), token_mask_fn=lambda b: torch.zeros(4, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="must return a bool tensor"):
        compute_eva(model, batches, cfg(), token_mask_fn=lambda b: torch.ones(4, 16))
    with pytest.raises(ValueError, match=r"mask of shape \(4, 8\) but layer 'q'"):
        compute_eva(model, batches, cfg(), token_mask_fn=lambda b: torch.ones(4, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="config must be an EvaConfig"):
        compute_eva(model, batches, {"rank": 2})

    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.spare = nn.Linear(16, 4), nn.Linear(16, 4)

        def forward(self, x):
            return self.used(x)

    with pytest.raises(ValueError, match=r"\['spare'\] were not called"):
        compute_eva(Unused(), batches, cfg())
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed after errors too


# ---------------------------------------------------------------------------------------------
# result persistence


def test_save_load_round_trip(tmp_path):
    batches = spectra_batches(30, (3.0, 1.5, 0.5), (3.0, 2.8, 0.3), (1.0, 1.0, 1.0), rows=256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = compute_eva(Inputs(3, d=3), batches, cfg(rank=1, rho=3.0, tau=0.99, max_batches=30))
    assert result.ranks == {"a": 1, "b": 2, "c": 0}  # a zero-row tensor must round-trip too
    for target in (tmp_path / "eva", tmp_path / "file.safetensors"):
        result.save(target)
        loaded = EvaResult.load(target)
        assert loaded.ranks == result.ranks and list(loaded.ranks) == list(result.ranks)
        assert loaded.converged == result.converged
        assert loaded.shared_inputs == result.shared_inputs and loaded.num_samples == result.num_samples
        assert (loaded.num_batches, loaded.seconds, loaded.budget, loaded.config) == (
            result.num_batches, result.seconds, result.budget, result.config)
        for field in ("components", "singular_values", "explained_variance_ratio", "candidate_explained_variance_ratio"):
            for name, t in getattr(result, field).items():
                assert torch.equal(getattr(loaded, field)[name], t), (field, name)
    assert (tmp_path / "eva" / "result.json").is_file() and (tmp_path / "file.json").is_file()
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary files left behind
    with pytest.raises(FileNotFoundError, match="does not exist"):
        EvaResult.load(tmp_path / "missing")
    assert "total rank 3 (budget 3)" in result.summary()


def test_lora_a_is_the_components():
    model = nn.Sequential(nn.Linear(16, 4))
    result = compute_eva(model, lowrank_batches(30, lead=(4, 16)), cfg(rank=3, rho=1, tau=0.99))
    assert torch.equal(result.lora_A("0"), result.components["0"])


def test_eva_imports_torch_only():
    import subprocess
    import sys

    code = (
        "import sys, dt_eva.eva, dt_eva.eva.peft_interop; "
        "print(sorted(m for m in ('transformers', 'peft', 'safetensors', 'numpy.random._pickle', 'yaml', "
        "'gymnasium', 'metaworld', 'dt_eva.models', 'dt_eva.adapters', 'dt_eva.training') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"dt_eva.eva imported {out} at module level"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_svd_runs_on_the_activations_device(counting_svd):
    model = Inputs(2)
    batches = list(spectra_batches(10, STEEP, FLAT))
    config = cfg(rank=2, rho=2.0, tau=1.0, max_batches=10)  # tau=1: both run all 10 batches
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cpu = compute_eva(model, batches, config)
        counting_svd.clear()
        gpu = compute_eva(model.cuda(), batches, config)  # CPU batches are moved to the model's device
    assert counting_svd and all(s.components.device.type == "cuda" for s in counting_svd)
    assert gpu.ranks == cpu.ranks == {"a": 1, "b": 3}
    for name, r in cpu.ranks.items():
        assert gpu.components[name].device.type == "cpu"
        assert abs_cos_rows(gpu.components[name], cpu.components[name]).min() > 0.999
