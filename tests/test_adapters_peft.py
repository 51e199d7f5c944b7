"""Our LoRA, DoRA, PiSSA and OLoRA layers against PEFT's on the same weights (needs the `peft` extra)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")
pytest.importorskip("transformers")

from peft import LoraConfig, inject_adapter_in_model  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402

from dt_eva.adapters import adapter_layers, inject_adapters, merge_adapters  # noqa: E402


class Net(nn.Module):
    """Linear and GPT-2 Conv1D layers, non-square, with and without bias."""

    def __init__(self):
        super().__init__()
        self.up = nn.Linear(12, 20)
        self.c_fc = Conv1D(16, 20)  # 20 -> 16, weight stored (20, 16)
        self.down = nn.Linear(16, 10, bias=False)
        self.sq = nn.Linear(10, 10)

    def forward(self, x):
        return self.sq(torch.tanh(self.down(torch.tanh(self.c_fc(torch.tanh(self.up(x)))))))


TARGETS = ["up", "c_fc", "down", "sq"]
X = torch.randn(4, 5, 12, generator=torch.Generator().manual_seed(7))


def make_net() -> Net:
    torch.manual_seed(0)
    return Net()


def peft_layers(model: nn.Module, targets=TARGETS) -> dict[str, nn.Module]:
    """PEFT's LoRA layers by name; exactly `targets`, so that no comparison loop runs over nothing."""
    layers = {n: m for n, m in model.named_modules() if hasattr(m, "lora_A") and isinstance(m.lora_A, nn.ModuleDict)}
    assert sorted(layers) == sorted(targets), f"PEFT adapted {sorted(layers)}, expected {sorted(targets)}"
    return layers


def peft_model(init, targets, use_dora=False, r=4, alpha=8.0, **kw) -> nn.Module:
    config = LoraConfig(
        r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights=init, use_dora=use_dora, **kw
    )
    return inject_adapter_in_model(config, make_net())


def copy_ours_into_peft(ours: nn.Module, theirs: nn.Module) -> None:
    """Write our A, B (and DoRA magnitude) into PEFT's layers of the same name."""
    layers = adapter_layers(ours)
    with torch.no_grad():
        for name, m in peft_layers(theirs, list(layers)).items():
            m.lora_A["default"].weight.copy_(layers[name].lora_A)
            m.lora_B["default"].weight.copy_(layers[name].lora_B)
            if isinstance(m.lora_magnitude_vector, nn.ModuleDict) and "default" in m.lora_magnitude_vector:
                m.lora_magnitude_vector["default"].weight.copy_(layers[name].magnitude)


def randomise(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            for p in layer.adapter_tensors().values():
                p.add_(0.3 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("use_dora", [False, True])
def test_lora_and_dora_outputs_and_gradients_equal_peft(use_dora):
    ours = make_net()
    inject_adapters(ours, TARGETS, method="dora" if use_dora else "lora", rank=4, alpha=8.0, dropout=0.3)
    randomise(ours, seed=1)
    theirs = peft_model(True, TARGETS, use_dora=use_dora, lora_dropout=0.3)
    copy_ours_into_peft(ours, theirs)
    outputs = {}
    for mode in ("eval", "train"):
        getattr(ours, mode)()
        getattr(theirs, mode)()
        # the same seed before each forward: both draw the same dropout masks, layer by layer
        torch.manual_seed(11)
        out_ours = ours(X)
        torch.manual_seed(11)
        out_theirs = theirs(X)
        torch.testing.assert_close(out_ours, out_theirs, rtol=1e-5, atol=1e-6)
        outputs[mode] = out_ours
    assert not torch.allclose(outputs["train"], outputs["eval"], atol=1e-3)  # dropout acted in training
    g = torch.randn_like(out_ours)
    (out_ours * g).sum().backward()
    (out_theirs * g).sum().backward()
    layers = adapter_layers(ours)
    for name, m in peft_layers(theirs).items():
        torch.testing.assert_close(layers[name].lora_A.grad, m.lora_A["default"].weight.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(layers[name].lora_B.grad, m.lora_B["default"].weight.grad, rtol=1e-4, atol=1e-6)
        if use_dora:
            torch.testing.assert_close(
                layers[name].magnitude.grad, m.lora_magnitude_vector["default"].weight.grad, rtol=1e-4, atol=1e-6
            )


def test_dora_magnitude_at_init_equals_peft():
    ours = make_net()
    inject_adapters(ours, TARGETS, method="dora", rank=4, alpha=8.0)
    theirs = peft_model(True, TARGETS, use_dora=True)
    layers = adapter_layers(ours)
    for name, m in peft_layers(theirs).items():
        torch.testing.assert_close(layers[name].magnitude, m.lora_magnitude_vector["default"].weight)


@pytest.mark.parametrize("use_dora", [False, True])
def test_dora_merge_equals_peft_merge(use_dora):
    ours = make_net()
    inject_adapters(ours, TARGETS, method="dora" if use_dora else "lora", rank=4, alpha=8.0)
    randomise(ours, seed=2)
    theirs = peft_model(True, TARGETS, use_dora=use_dora)
    copy_ours_into_peft(ours, theirs)
    merge_adapters(ours)
    layers = adapter_layers(ours)
    for name, m in peft_layers(theirs).items():
        m.merge()
        torch.testing.assert_close(layers[name].base_layer.weight, m.base_layer.weight, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("use_dora", [False, True])
def test_pissa_equals_peft(use_dora):
    # Linear and Conv1D: PEFT transposes Conv1D before the SVD as we do
    ours = make_net()
    inject_adapters(ours, TARGETS, method="dora" if use_dora else "lora", rank=4, alpha=8.0, init="pissa")
    theirs = peft_model("pissa", TARGETS, use_dora=use_dora)
    layers = adapter_layers(ours)
    for name, m in peft_layers(theirs).items():
        torch.testing.assert_close(layers[name].lora_A, m.lora_A["default"].weight, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(layers[name].lora_B, m.lora_B["default"].weight, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(layers[name].base_layer.weight, m.base_layer.weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours(X), theirs(X), rtol=1e-5, atol=1e-5)
    # after a training-like change to both, they still agree
    randomise(ours, seed=3)
    copy_ours_into_peft(ours, theirs)
    torch.testing.assert_close(ours(X), theirs(X), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_dora", [False, True])
def test_olora_equals_peft_on_linear_layers(use_dora):
    # PEFT's OLoRA factorises Conv1D's stored (in, out) tensor, which only fits square layers, so the
    # comparison uses the nn.Linear targets (square and non-square)
    targets = ["up", "down", "sq"]
    ours = make_net()
    inject_adapters(ours, targets, method="dora" if use_dora else "lora", rank=4, alpha=8.0, init="olora")
    theirs = peft_model("olora", targets, use_dora=use_dora)
    layers = adapter_layers(ours)
    for name, m in peft_layers(theirs, targets).items():
        torch.testing.assert_close(layers[name].lora_A, m.lora_A["default"].weight, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(layers[name].lora_B, m.lora_B["default"].weight, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(layers[name].base_layer.weight, m.base_layer.weight, rtol=1e-4, atol=1e-5)
    randomise(ours, seed=4)
    copy_ours_into_peft(ours, theirs)
    torch.testing.assert_close(ours(X), theirs(X), rtol=1e-5, atol=1e-5)
