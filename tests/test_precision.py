"""Mixed precision: where `precision: auto` picks bf16, the error for a forced slow bf16, and what stays fp32."""

from __future__ import annotations

import pytest
import torch

from dt_eva.models import DecisionTransformer, DTConfig
from dt_eva.utils import precision as precision_module
from dt_eva.utils.precision import autocast, cpu_native_bf16_features, precision_name, resolve_precision

CPU = torch.device("cpu")


def test_native_bf16_detection_reads_the_cpu_feature_flags() -> None:
    assert cpu_native_bf16_features({"avx2", "fma", "avx512f"}) == []
    assert cpu_native_bf16_features({"avx512f", "avx512_bf16"}) == ["avx512_bf16"]
    assert cpu_native_bf16_features({"amx_tile", "amx_bf16"}) == ["amx_bf16"]
    # the host's answer comes from the same flag set (torch's cpuinfo or /proc/cpuinfo)
    host = precision_module._host_cpu_flags()
    assert precision_module.cpu_has_native_bf16() == any(f in host for f in ("avx512_bf16", "amx_bf16"))


@pytest.mark.parametrize("native", [True, False])
def test_auto_picks_bf16_exactly_on_cpus_with_native_bf16(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", CPU) == (torch.bfloat16 if native else None)
    assert resolve_precision("fp32", CPU) is None
    assert resolve_precision("auto", "cpu") == (torch.bfloat16 if native else None)


def test_forced_bf16_on_a_cpu_without_native_bf16_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ValueError, match=r"no native bf16 matmuls.*slower than fp32.*precision=auto or fp32"):
        resolve_precision("bf16", CPU)
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("bf16", CPU) == torch.bfloat16


def test_unknown_precision_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown precision 'fp16'.*'auto', 'bf16', 'fp32'"):
        resolve_precision("fp16", CPU)


def test_autocast_helper_and_names() -> None:
    with autocast(CPU, None):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(CPU, torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
    assert precision_name(None) == "fp32" and precision_name(torch.bfloat16) == "bf16"


def test_bf16_autocast_keeps_loss_weights_and_gradients_fp32() -> None:
    """Under autocast the matmuls run in bf16; the loss, the master weights and their grads stay fp32,
    and the loss stays close to the fp32 loss."""
    torch.manual_seed(0)
    cfg = DTConfig(state_dim=7, act_dim=3, hidden_size=32, n_layer=2, n_head=4, context_len=5, max_ep_len=40,
                   dropout=0.0)
    model = DecisionTransformer(cfg).train()
    g = torch.Generator().manual_seed(1)
    batch = {
        "states": torch.randn(4, 5, 7, generator=g),
        "actions": torch.rand(4, 5, 3, generator=g) * 2 - 1,
        "rewards": torch.rand(4, 5, 1, generator=g),
        "returns_to_go": torch.rand(4, 5, 1, generator=g),
        "timesteps": torch.arange(5).expand(4, 5).clone(),
    }
    seen_dtypes = set()
    model.blocks[0].mlp.fc.register_forward_hook(lambda m, i, out: seen_dtypes.add(out.dtype))
    fp32_loss = model.loss(batch)
    with autocast(CPU, torch.bfloat16):
        loss = model.loss(batch)
    loss.backward()
    assert seen_dtypes == {torch.float32, torch.bfloat16}  # the matmuls really ran in bf16
    assert loss.dtype == torch.float32
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    torch.testing.assert_close(loss, fp32_loss.detach(), rtol=2e-2, atol=1e-3)


# --- EVA's activation capture under bf16 autocast ---------------------------------------------------
def _lowrank_batches(n: int, rows: int = 64, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, 6, generator=g)).Q.T
    scales = torch.tensor([9.0, 6.0, 4.0, 2.5, 1.5, 1.0])
    return [(torch.randn(rows, 6, generator=g) * scales) @ basis + 0.01 * torch.randn(rows, d, generator=g)
            for _ in range(n)]


def test_captured_rows_are_fp32_when_the_forward_runs_in_bf16() -> None:
    from dt_eva.eva.capture import InputProbe, select_rows

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 8))
    x = torch.randn(4, 5, 16)
    with torch.no_grad(), autocast(CPU, torch.bfloat16):
        hidden = model[0](x)
    probe = InputProbe(["0", "1"], lambda name, x: select_rows(name, x, None))
    handles = [m.register_forward_hook(probe.hook(n), with_kwargs=True) for n, m in model.named_children()]
    with torch.no_grad(), autocast(CPU, torch.bfloat16):
        model(x)
    for h in handles:
        h.remove()
    assert hidden.dtype == torch.bfloat16  # layer 1 really received a bf16 input
    (rows0,), (rows1,) = probe.rows_of("0"), probe.rows_of("1")
    assert rows0.dtype == rows1.dtype == torch.float32
    torch.testing.assert_close(rows0, x.reshape(-1, 16))
    torch.testing.assert_close(rows1, hidden.float().reshape(-1, 16))
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[:, 1] = True
    assert select_rows("1", hidden, mask).dtype == torch.float32


@pytest.mark.parametrize("svd", ["exact", "randomized"])
def test_eva_svd_stays_fp32_under_a_bf16_forward(svd: str) -> None:
    """The forward runs under bf16 autocast, the SVD (called from hooks inside it) must not: on fp32
    inputs (the first layer reads the batch itself) the result equals the fp32 run."""
    from dt_eva.eva import EvaConfig, compute_eva

    batches = _lowrank_batches(6)
    config = EvaConfig(rank=4, rho=1.0, tau=1.0, max_batches=6, svd=svd, progress=False)

    def run(dtype):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 8))

        def forward(m, batch):
            with autocast(CPU, dtype):
                return m(batch)

        with pytest.warns(UserWarning, match="max_batches"):
            return compute_eva(model, batches, config, forward_fn=forward)

    fp32, bf16 = run(None), run(torch.bfloat16)
    torch.testing.assert_close(bf16.singular_values["0"], fp32.singular_values["0"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bf16.components["0"], fp32.components["0"], rtol=1e-5, atol=1e-5)


def test_auto_runs_a_model_that_is_not_fp32_as_it_is(monkeypatch) -> None:
    # autocast lowers fp32 ops only: bf16 weights beside a float64 model's float64 inputs would not multiply
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    resolve = precision_module.resolve_model_precision
    assert resolve("auto", CPU, torch.float32) == torch.bfloat16
    assert resolve("auto", CPU, torch.float64) is None
    assert resolve("fp32", CPU, torch.float64) is None
    assert resolve("bf16", CPU, torch.float32) == torch.bfloat16
    with pytest.raises(ValueError, match=r"precision=bf16 needs a model with fp32 weights.*are float64"):
        resolve("bf16", CPU, torch.float64)


def test_only_the_drivers_resolve_precision(tmp_path) -> None:
    # one path per setting: a driver resolves `train.precision` once per run and passes the dtype down;
    # a floor below the drivers that turned "auto" into a dtype itself could disagree with it
    from pathlib import Path
    from types import SimpleNamespace

    from dt_eva.training import Trainer, WholeModel
    from dt_eva.training.configs import OptimConfig, TrainConfig

    package = Path(precision_module.__file__).resolve().parents[1]
    floors = [p for sub in ("training", "evaluation", "methods", "models", "adapters", "eva", "data", "runs")
              for p in sorted((package / sub).rglob("*.py"))]
    assert floors
    resolving = [str(p.relative_to(package)) for p in floors
                 if "resolve_precision(" in p.read_text() or "resolve_model_precision(" in p.read_text()]
    assert not resolving, f"precision resolved below the drivers in {resolving}"
    files = SimpleNamespace(last_checkpoint=tmp_path / "last.pt", metrics=tmp_path / "m.jsonl", tensorboard=tmp_path)
    for option in ("auto", "bf16", "fp32"):
        with pytest.raises(TypeError, match="resolved autocast dtype"):
            Trainer(WholeModel(torch.nn.Linear(2, 2)), None, OptimConfig(), TrainConfig(), files, autocast_dtype=option)
    with pytest.raises(TypeError, match="autocast_dtype"):  # no default that would resolve it for the caller
        Trainer(WholeModel(torch.nn.Linear(2, 2)), None, OptimConfig(), TrainConfig(), files)
