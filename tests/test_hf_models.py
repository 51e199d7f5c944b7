"""EVA + adapters on Hugging Face GPT-2 and ViT built from tiny configs (no downloads), and AdaLoRA via PEFT."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from dt_eva.adapters import (  # noqa: E402
    adapter_layers,
    adapter_parameters,
    inject_adapters,
    load_adapters,
    save_adapters,
)
from dt_eva.adapters.adalora import apply_adalora  # noqa: E402
from dt_eva.eva import EvaConfig, compute_eva  # noqa: E402

VOCAB, SEQ = 32, 16


def tiny_gpt2(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=SEQ, n_embd=32, n_layer=2, n_head=2, initializer_range=0.2, bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    return transformers.GPT2LMHeadModel(config)


def counting_batches(n: int, batch_size: int = 8, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Sequences that count up by a per-sequence step (mod VOCAB): learnable next-token structure."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        start = torch.randint(0, VOCAB, (batch_size, 1), generator=gen)
        step = torch.randint(1, 3, (batch_size, 1), generator=gen)
        ids = (start + step * torch.arange(SEQ)) % VOCAB
        mask = torch.ones_like(ids)
        mask[: batch_size // 2, -3:] = 0  # some padding, kept out of EVA by the token mask
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    return batches


def train(model, batches, params, steps: int, lr: float, extra_loss=None, after_step=None) -> list[float]:
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for step in range(steps):
        batch = batches[step % len(batches)]
        loss = model(**batch).loss
        total = loss + extra_loss() if extra_loss else loss
        total.backward()
        opt.step()
        if after_step:
            after_step(step)
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def test_gpt2_eva_lora_trains_and_round_trips(tmp_path):
    model = tiny_gpt2()
    batches = counting_batches(6)
    targets = ["c_attn", "c_proj", "c_fc"]  # GPT-2 Conv1D layers (attn and mlp c_proj both match)
    eva = compute_eva(
        model,
        batches,
        EvaConfig(rank=4, rho=2.0, tau=0.9, max_batches=6, progress=False),
        target_modules=targets,
        token_mask_fn=lambda b: b["attention_mask"].bool(),
    )
    assert len(eva.ranks) == 8 and sum(eva.ranks.values()) == 8 * 4
    wrapped = inject_adapters(model, targets, init="eva", eva=eva, alpha=16.0)
    assert wrapped == {n: r for n, r in eva.ranks.items() if r > 0}
    for name, layer in adapter_layers(model).items():
        assert layer.kind == "conv1d"
        torch.testing.assert_close(layer.lora_A, eva.components[name][: layer.rank])

    model.train()
    losses = train(model, batches, adapter_parameters(model), steps=20, lr=1e-2)
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses

    model.eval()
    with torch.no_grad():
        expected = model(**batches[0]).logits
    save_adapters(model, tmp_path / "gpt2_adapter")
    fresh = tiny_gpt2()
    load_adapters(fresh, tmp_path / "gpt2_adapter")
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batches[0]).logits, expected, rtol=1e-5, atol=1e-5)


def test_vit_eva_dora_lowers_the_loss():
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = transformers.ViTForImageClassification(config)
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (24,), generator=gen)
    images = torch.randn(24, 3, 16, 16, generator=gen) * 0.5
    images[torch.arange(24), labels] += 1.0  # the label is the brightest channel
    batches = [{"pixel_values": images[i : i + 8], "labels": labels[i : i + 8]} for i in range(0, 24, 8)]
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "mlp.fc1"]  # transformers 5 ViT names
    eva = compute_eva(
        model, batches, EvaConfig(rank=4, rho=1.5, tau=0.9, max_batches=3, progress=False), target_modules=targets
    )
    # query, key and value read the very same input: one SVD shared between them
    assert eva.shared_inputs.get("vit.layers.0.attention.k_proj") is not None
    wrapped = inject_adapters(model, targets, method="dora", init="eva", eva=eva, alpha=4.0, adjust_alpha=True)
    assert all(r > 0 for r in wrapped.values()) and len(wrapped) <= 10
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.endswith(".magnitude") for n in trainable)

    model.train()
    losses = train(model, batches, adapter_parameters(model), steps=18, lr=1e-2)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


def test_adalora_through_peft_trains_and_allocates_ranks():
    model = tiny_gpt2()
    batches = counting_batches(4)
    targets = ["c_attn", "attn.c_proj"]
    ada = apply_adalora(
        model, targets, init_r=6, target_r=2, total_steps=16, tinit=2, tfinal=4, delta_t=2, alpha=32.0
    )
    assert len(ada.target_names) == 4 and ada.budget() == 8
    assert ada.ranks() == {n: 0 for n in ada.target_names}  # AdaLoRA starts with E = 0
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)

    model.train()
    losses = train(
        model,
        batches,
        ada.parameters(),
        steps=16,
        lr=2e-2,
        extra_loss=ada.orthogonal_regularization,
        after_step=ada.step,
    )
    assert sum(losses[-4:]) / 4 < 0.9 * sum(losses[:4]) / 4, losses
    ranks = ada.ranks()
    assert 0 < sum(ranks.values()) <= ada.budget() < 6 * len(ranks), ranks
    assert set(ada.config.rank_pattern) and all(len(v) == 6 for v in ada.config.rank_pattern.values())


def test_adalora_step_without_gradients_says_when_to_call_it():
    model = tiny_gpt2()
    ada = apply_adalora(model, ["c_attn"], init_r=4, target_r=2, total_steps=10)
    with pytest.raises(ValueError, match="before optimizer.zero_grad"):
        ada.step(0)
    with pytest.raises(ValueError, match="no budgeting phase"):
        apply_adalora(tiny_gpt2(), ["c_attn"], total_steps=5, tinit=3, tfinal=2)
