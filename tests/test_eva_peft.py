"""EVA on a Hugging Face GPT-2 (tiny config, no downloads) and the hand-over to PEFT."""

from __future__ import annotations

import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from peft import LoraConfig, get_peft_model  # noqa: E402
from peft.tuners.lora.config import EvaConfig as PeftEvaConfig  # noqa: E402
from peft.tuners.lora.eva import get_eva_state_dict, initialize_lora_eva_weights  # noqa: E402

from dt_eva.eva import EvaConfig, compute_eva, match_modules  # noqa: E402
from dt_eva.eva.peft_interop import to_peft_eva_state_dict  # noqa: E402

TARGETS = ["c_attn", "c_proj", "c_fc"]


def tiny_gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def token_batches(n, seed=0, pad_last=4):
    """Zipf-like token ids; the last `pad_last` positions of each row are padding (attention_mask 0)."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.arange(1, 65, dtype=torch.float64).pow(-1.1)
    out = []
    for _ in range(n):
        ids = torch.multinomial(probs, 8 * 16, replacement=True, generator=g).view(8, 16)
        mask = torch.ones_like(ids)
        mask[:, -pad_last:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def test_gpt2_conv1d_layers_are_matched_without_importing_transformers_types():
    names = [n for n, _ in match_modules(tiny_gpt2(), TARGETS)]
    assert names == [f"transformer.h.{i}.{m}" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]


def test_result_loads_into_peft_and_agrees_with_peft_eva():
    model = tiny_gpt2()
    batches = token_batches(40)
    result = compute_eva(model, batches, EvaConfig(rank=4, rho=2.0, tau=0.99, max_batches=40, progress=False),
                         target_modules=TARGETS, token_mask_fn=lambda b: b["attention_mask"].bool())
    assert all(result.converged.values())
    # padding masked out: 8 x 12 rows per batch; the last layer to converge saw every batch
    assert max(result.num_samples.values()) == result.num_batches * 8 * 12
    assert all(n % 96 == 0 for n in result.num_samples.values())
    assert result.components["transformer.h.0.mlp.c_proj"].shape[1] == 128  # Conv1D in_features from (in, out)

    # PEFT's own EVA on the same model and batches (reference implementation, randomized SVD)
    peft_cfg = LoraConfig(r=4, target_modules=TARGETS, init_lora_weights="eva",
                          eva_config=PeftEvaConfig(rho=2.0, tau=0.99))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = get_eva_state_dict(model, batches, peft_config=peft_cfg, show_progress_bar=False)
    assert {n: v.shape[0] for n, v in reference.items()} == result.ranks
    for name, v in reference.items():
        top = torch.nn.functional.cosine_similarity(result.components[name][:1], v[:1].float(), dim=1).abs()
        assert top.item() > 0.99, name

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, peft_cfg)
        state = to_peft_eva_state_dict(result, peft_model)
        assert set(state) == {f"base_model.model.{n}" for n in result.ranks}
        initialize_lora_eva_weights(peft_model, eva_state_dict=dict(state))
    loaded = {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            loaded[name.removeprefix("base_model.model.")] = module.lora_A["default"].weight.detach()
    assert {n: w.shape[0] for n, w in loaded.items()} == {n: r for n, r in result.ranks.items() if r > 0}
    for name, weight in loaded.items():
        torch.testing.assert_close(weight, result.components[name])
    # the adapters start at zero (B = 0): the PEFT model's output equals the base model's
    ids = batches[0]["input_ids"]
    peft_model.eval()  # no dropout
    with torch.no_grad():
        out = peft_model(input_ids=ids).logits
        with peft_model.disable_adapter():
            base = peft_model(input_ids=ids).logits
    torch.testing.assert_close(out, base)

    # a result computed on the PeftModel itself (wrapped layers) names the same layers
    again = compute_eva(peft_model, batches[:3], EvaConfig(rank=4, tau=0.0, progress=False),
                        target_modules=TARGETS)
    assert [n.removeprefix("base_model.model.") for n in again.ranks] == list(result.ranks)


class TwoLinear(torch.nn.Module):
    """Inputs of 6 features: PEFT's randomized SVD (q = 2 * 3 components = 6) is then exact, as ours is."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = torch.nn.Linear(6, 6), torch.nn.Linear(6, 4)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


@pytest.mark.parametrize("whiten", [True, False])
def test_peft_whitening_equals_peft_own(whiten):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 6, generator=g) * torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.3]) + torch.randn(6, generator=g)
    # one batch repeated: both implementations converge on the 2nd batch and factorise the same 128 rows
    batches = [{"x": x}] * 4
    peft_cfg = LoraConfig(r=2, target_modules=["fc1", "fc2"], init_lora_weights="eva",
                          eva_config=PeftEvaConfig(rho=1.5, tau=0.99, whiten=whiten))
    model = TwoLinear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = get_eva_state_dict(model, batches, peft_config=peft_cfg, show_progress_bar=False,
                                       prepare_model_inputs_fn=None, prepare_layer_inputs_fn=None)
    result = compute_eva(model, batches, EvaConfig(rank=2, rho=1.5, tau=0.99, progress=False), target_modules=["fc1", "fc2"])
    assert result.num_samples == {"fc1": 128, "fc2": 128}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, peft_cfg)
    state = to_peft_eva_state_dict(result, peft_model, whiten=whiten)
    assert {k.removeprefix("base_model.model."): v.shape[0] for k, v in state.items()} == {
        n: v.shape[0] for n, v in reference.items()} == result.ranks
    for name, theirs in reference.items():
        ours, theirs = state[f"base_model.model.{name}"], theirs.float()
        signs = torch.sign((ours * theirs).sum(dim=1, keepdim=True))  # each row is fixed up to its sign
        torch.testing.assert_close(ours, signs * theirs, rtol=1e-4, atol=1e-6)
        norms = ours.norm(dim=1)
        expected = result.singular_values[name].rsqrt() if whiten else torch.ones_like(norms)
        torch.testing.assert_close(norms, expected)


def test_peft_interop_errors():
    model = tiny_gpt2()
    result = compute_eva(model, token_batches(3), EvaConfig(rank=2, tau=0.0, progress=False), target_modules=["c_attn"])
    with pytest.raises(ValueError, match="must be a PeftModel"):
        to_peft_eva_state_dict(result, model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=TARGETS, init_lora_weights="eva"))
    with pytest.raises(ValueError, match="no components for LoRA layers .*c_proj"):
        to_peft_eva_state_dict(result, peft_model)
