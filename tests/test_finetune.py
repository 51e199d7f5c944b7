"""`dt-eva finetune`: every method trains the right parameters, EVA on chosen tokens, EVA artefacts,
exact resume with adapter-only checkpoints, merged export, and the error cases.

A tiny DT is pre-trained once per session with the real pipeline on a real 2-task dataset
(hammer from CW10 plus reach); every test fine-tunes it on hammer.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch

from dt_eva.config import load_config
from dt_eva.eva import EvaConfig
from dt_eva.experiments.finetune import run_finetune
from dt_eva.runs.base import load_pretrained_base
from dt_eva.runs.configs import FinetuneConfig
from dt_eva.runs.policy import load_finetune_model
from dt_eva.methods import METHODS
from dt_eva.methods.eva_dt import EVA_SEED_OFFSET, compute_dt_eva
from dt_eva.training.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
HIDDEN, LAYERS = 32, 2
TINY_MODEL = [f"model.hidden_size={HIDDEN}", f"model.n_layer={LAYERS}", "model.n_head=2", "model.context_len=5",
              "model.dropout=0.1"]


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """A real dataset (hammer + reach) and a tiny DT pre-trained on it for a few steps."""
    from dt_eva.data import collect_dataset
    from dt_eva.experiments.pretrain import run_pretrain
    from dt_eva.runs.configs import PretrainConfig

    root = tmp_path_factory.mktemp("finetune")
    data = root / "data"
    collect_dataset(data, ["hammer", "reach"], episodes=2, noise_levels=[0.0, 0.3], seed=0, workers=2, progress=False)
    cfg = load_config(PretrainConfig, REPO / "configs/pretrain/tiny.yaml", [
        f"data.path={data}", f"run_dir={root / 'runs' / 'pre'}", "name=pre", *TINY_MODEL,
        "train.steps=10", "train.batch_size=16", "train.log_every=5", "train.ckpt_every=10", "train.eval_every=0",
        "train.progress=false", "train.device=cpu", "optim.warmup_steps=2", "optim.lr=1e-3",
    ])
    pretrain = run_pretrain(cfg)
    return {"root": root, "data": data, "pretrain": pretrain}


def ft_cfg(ws: dict[str, Path], run_dir: Path, *extra: str) -> FinetuneConfig:
    return load_config(FinetuneConfig, REPO / "configs/finetune/tiny.yaml", [
        f"checkpoint={ws['pretrain']}", f"data.path={ws['data']}", f"run_dir={run_dir}", "task=hammer",
        "rank=2", "rho=2", "train.steps=4", "train.batch_size=8", "train.log_every=1", "train.ckpt_every=100",
        "train.eval_episodes=0", "train.progress=false", "train.device=cpu", "optim.warmup_steps=1",
        "optim.lr=3e-3", "eva.batch_size=4", "eva.max_batches=20", "eva.tau=0.9", *extra,
    ])


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


def sample_batch(ws: dict[str, Path], seed: int = 123, batch: int = 4) -> dict[str, torch.Tensor]:
    from dt_eva.data import WindowSampler, load_dataset

    return WindowSampler(load_dataset(ws["data"], tasks=["hammer"]), 5, batch, seed=seed).sample()


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


# --- every method ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_only_its_parameters(workspace, tmp_path, method):
    run_dir = run_finetune(ft_cfg(workspace, tmp_path / method, f"method={method}"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["method"] == method and summary["task"] == "hammer-v3" and summary["steps"] == 4
    assert all(map(lambda v: v == v and abs(v) < 1e3, losses(run_dir).values()))  # finite losses

    model, info = load_finetune_model(run_dir, merged=False)
    names = trainable_names(model)
    assert summary["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    if method == "fft":
        assert names == {n for n, _ in model.named_parameters()}
        return
    assert names and all("lora_" in n or "magnitude" in n for n in names), sorted(names)[:5]
    if method == "adalora":
        return
    # our adapters: r * (in + out) per wrapped layer (+ out for DoRA's magnitude), base frozen
    from dt_eva.adapters import adapter_layers

    layers = adapter_layers(model)
    expected = sum(l.rank * (l.in_features + l.out_features) + (l.out_features if l.method == "dora" else 0)
                   for l in layers.values())
    assert summary["trainable_params"] == expected
    assert sum(l.rank for l in layers.values()) == summary["total_rank"] == LAYERS * 4 * 2  # budget N * r
    if method not in ("pissa", "olora"):  # those two replace W by its residual on purpose
        base = load_pretrained_base(workspace["pretrain"]).state
        for name, layer in layers.items():
            assert torch.equal(layer.base_layer.weight, base[f"{name}.weight"]), name


def test_eva_finetuning_lowers_the_loss_and_writes_its_artifacts(workspace, tmp_path):
    from dt_eva.runs import load_run_model

    run_dir = run_finetune(ft_cfg(workspace, tmp_path / "eva", "method=eva", "train.steps=30", "optim.lr=1e-2",
                                  "alpha=4", "train.eval_episodes=1"))
    held_out = sample_batch(workspace, seed=999, batch=256)
    base, _ = load_run_model(workspace["pretrain"])
    tuned, _ = load_run_model(run_dir)
    with torch.no_grad():
        before, after = base.loss(held_out).item(), tuned.loss(held_out).item()
    assert after < 0.9 * before, (before, after)

    eva = json.loads((run_dir / "eva" / "eva.json").read_text())
    assert eva["total_rank"] == LAYERS * 4 * 2
    assert eva["rank_table"]["modules"] == ["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"]
    assert eva["rank_table"]["layers"] == list(range(LAYERS))
    assert set(eva["ranks"]) == {f"blocks.{i}.{m}" for i in range(LAYERS) for m in eva["rank_table"]["modules"]}
    assert eva["init_seconds"] > 0 and eva["num_batches"] >= 1
    assert all(0 <= v <= 1 for v in eva["explained_variance_kept"].values())
    assert (run_dir / "eva" / "ranks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "eva" / "result.safetensors").is_file()
    # every setting of the config reached the SVD (ft_cfg: rank 2, rho 2, eva.tau 0.9, eva.max_batches 20)
    from dt_eva.eva import EvaResult

    assert EvaResult.load(run_dir / "eva").config == EvaConfig(rank=2, rho=2.0, tau=0.9, max_batches=20, seed=0,
                                                               progress=False)
    # the adapters got exactly EVA's ranks, and their A is EVA's components
    model, info = load_finetune_model(run_dir)
    assert info["ranks"] == {k: v for k, v in eva["ranks"].items() if v > 0}

    ev = json.loads((run_dir / "eval.json").read_text())
    assert set(ev["tasks"]) == {"hammer-v3"} and ev["episodes"] == 1
    assert json.loads((run_dir / "summary.json").read_text())["eval"] == ev["mean"]


def test_eva_on_state_tokens_uses_exactly_the_state_rows(workspace):
    """One EVA batch with token_types=['state']: the components of blocks.0.attn.qkv are the top
    right-singular vectors of the centred state-token inputs of that layer, computed here directly."""
    from dt_eva.data import WindowSampler, load_dataset

    base = load_pretrained_base(workspace["pretrain"])
    model = base.build().eval()
    dataset = load_dataset(workspace["data"], tasks=["hammer"])
    config = EvaConfig(rank=2, rho=1.0, tau=0.99, max_batches=1, seed=5, progress=False)
    with pytest.warns(UserWarning):  # one batch cannot converge
        result = compute_dt_eva(model, dataset, "hammer-v3", config, token_types=["state"], batch_size=8)
    batch = WindowSampler(dataset, 5, 8, seed=5 + EVA_SEED_OFFSET, tasks=["hammer-v3"]).sample()
    captured = []
    handle = model.blocks[0].attn.qkv.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    with torch.no_grad():
        model(batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"], batch["rewards"])
    handle.remove()
    x = captured[0]  # [B, K * 4, H]; the layout is s, R, a, r
    state_rows = x[:, 0::4].reshape(-1, HIDDEN)
    all_rows = x.reshape(-1, HIDDEN)

    def top_components(rows: torch.Tensor, k: int) -> torch.Tensor:
        return torch.linalg.svd(rows - rows.mean(0), full_matrices=False).Vh[:k]

    name = "blocks.0.attn.qkv"
    got = result.components[name]
    k = got.shape[0]
    assert k >= 1
    cos_state = (got @ top_components(state_rows, k).T).abs().diagonal()
    assert torch.all(cos_state > 0.99), cos_state
    assert result.num_samples[name] == state_rows.shape[0]
    cos_all = (got @ top_components(all_rows, k).T).abs().diagonal()
    assert cos_all.min() < 0.9  # all tokens give other directions, so the check above can fail


# --- resume and checkpoints ----------------------------------------------------------------------------
def test_resume_after_ctrl_c_reproduces_the_uninterrupted_run(workspace, tmp_path, monkeypatch):
    from dt_eva.data import WindowSampler
    from dt_eva.training import TrainingInterrupted
    from dt_eva.training.checkpoint import load_checkpoint

    extra = ("method=eva", "train.steps=10", "train.ckpt_every=100")
    straight = run_finetune(ft_cfg(workspace, tmp_path / "straight", *extra))

    original = WindowSampler.sample
    drawn = {"n": 0}

    def sample_then_ctrl_c(self):
        batch = original(self)
        if self.batch_size == 8:  # the training sampler (EVA's draws 4 windows)
            drawn["n"] += 1
            if drawn["n"] == 6:
                signal.raise_signal(signal.SIGINT)  # a real Ctrl-C during step 6
        return batch

    monkeypatch.setattr(WindowSampler, "sample", sample_then_ctrl_c)
    cfg = ft_cfg(workspace, tmp_path / "resumed", *extra)
    with pytest.raises(TrainingInterrupted):
        run_finetune(cfg)
    monkeypatch.setattr(WindowSampler, "sample", original)
    ckpt = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert ckpt["step"] == 6
    assert not (tmp_path / "resumed" / "summary.json").exists()
    # adapter-only: the checkpoint holds the adapter tensors and which base they belong to
    assert ckpt["model"] and all(k.rsplit(".", 1)[-1] in ("lora_A", "lora_B") for k in ckpt["model"])
    base = load_pretrained_base(workspace["pretrain"])
    assert ckpt["extra"]["base"] == base.identity()

    resumed = run_finetune(cfg, resume=True)
    assert losses(resumed) == losses(straight)
    a, b = torch.load(straight / "model.pt"), torch.load(resumed / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_adapter_checkpoint_is_much_smaller_than_a_full_one(workspace, tmp_path):
    lora = run_finetune(ft_cfg(workspace, tmp_path / "lora", "method=lora", "train.steps=2"))
    fft = run_finetune(ft_cfg(workspace, tmp_path / "fft", "method=fft", "train.steps=2"))
    small, full = (d / "checkpoints" / "last.pt" for d in (lora, fft))
    assert small.stat().st_size < 0.3 * full.stat().st_size, (small.stat().st_size, full.stat().st_size)


def test_a_changed_base_model_is_detected(workspace, tmp_path):
    pre = tmp_path / "pre-copy"
    shutil.copytree(workspace["pretrain"], pre)
    cfg = ft_cfg(workspace, tmp_path / "run", "method=lora", f"checkpoint={pre}", "train.steps=2")
    run_dir = run_finetune(cfg)
    state = torch.load(pre / "model.pt")
    state["action_head.bias"] += 0.1
    torch.save(state, pre / "model.pt")
    with pytest.raises(ValueError, match="base changed"):
        load_finetune_model(run_dir)
    (run_dir / "summary.json").unlink()  # as if it had been interrupted after its last checkpoint
    with pytest.raises(ValueError, match="base changed"):
        run_finetune(cfg, resume=True)


# --- merged export -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["dora", "pissa", "adalora"])
def test_merged_export_equals_the_adapter_model(workspace, tmp_path, method):
    from dt_eva.models import DecisionTransformer
    from dt_eva.runs import load_run_model

    run_dir = run_finetune(ft_cfg(workspace, tmp_path / method, f"method={method}", "export_merged=true",
                                  "train.steps=10", "optim.lr=3e-2"))
    adapted, _ = load_finetune_model(run_dir, merged=False)
    merged, info = load_run_model(run_dir)  # prefers merged_model.pt when it exists
    assert type(merged) is DecisionTransformer and info["weights"].endswith("merged_model.pt")
    assert not any("lora" in n for n in merged.state_dict())
    batch = sample_batch(workspace)
    args = (batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"], batch["rewards"])
    with torch.no_grad():
        a, m = adapted(*args), merged(*args)
    assert torch.allclose(a, m, atol=1e-5), (a - m).abs().max()
    base, _ = load_run_model(workspace["pretrain"])
    with torch.no_grad():
        assert (base(*args) - m).abs().max() > 1e-4  # the export holds the fine-tuned weights


# --- bad input: clear errors, nothing written ----------------------------------------------------------
def _expect_error(cfg: FinetuneConfig, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        run_finetune(cfg)
    assert not cfg.resolved_run_dir.exists(), "a failed call must not leave a run directory"


def test_unknown_method_and_task_list_the_valid_ones(workspace, tmp_path):
    _expect_error(ft_cfg(workspace, tmp_path / "a", "method=qlora"), ValueError, r"valid methods are: fft, lora, adalora")
    _expect_error(ft_cfg(workspace, tmp_path / "b", "task=hamer"), ValueError, r"hammer")


def test_task_missing_from_the_dataset_says_which_collect_to_run(workspace, tmp_path):
    _expect_error(ft_cfg(workspace, tmp_path / "a", "task=push-wall"), ValueError,
                  r"push-wall-v3.*dt-eva collect --tasks push-wall")
    _expect_error(ft_cfg(workspace, tmp_path / "b", f"data.path={tmp_path / 'nowhere'}"), FileNotFoundError,
                  r"dt-eva collect")


def test_rank_too_large_names_the_layer(workspace, tmp_path):
    _expect_error(ft_cfg(workspace, tmp_path / "a", "method=lora", f"rank={HIDDEN + 1}"), ValueError,
                  r"blocks\.0\.attn\.qkv.*at most 32")
    # EVA needs round(rho * rank) components per layer
    _expect_error(ft_cfg(workspace, tmp_path / "b", "method=eva", "rank=20", "rho=2"), ValueError,
                  r"round\(rho \* rank\).*blocks\.0\.attn\.qkv")


def test_missing_or_corrupt_pretrain_checkpoint(workspace, tmp_path):
    _expect_error(ft_cfg(workspace, tmp_path / "a", f"checkpoint={tmp_path / 'nope'}"), FileNotFoundError,
                  r"does not exist")
    pre = tmp_path / "pre-copy"
    shutil.copytree(workspace["pretrain"], pre)
    (pre / "model.pt").write_bytes(b"not a torch file")
    _expect_error(ft_cfg(workspace, tmp_path / "b", f"checkpoint={pre}"), ValueError, r"model\.pt is corrupt")
    (pre / "model.pt").unlink()
    _expect_error(ft_cfg(workspace, tmp_path / "c", f"checkpoint={pre}"), FileNotFoundError, r"model\.pt is missing")


def test_dataset_dims_that_do_not_fit_the_model(workspace, tmp_path):
    """A pre-trained model built for 20-d states cannot be fine-tuned on Meta-World's 39-d data."""
    from dt_eva.config import save_config
    from dt_eva.models import DecisionTransformer
    from dt_eva.runs.configs import PretrainConfig

    pre = tmp_path / "pre-20d"
    shutil.copytree(workspace["pretrain"], pre)
    cfg = load_config(PretrainConfig, pre / "config.yaml", ["model.state_dim=20"])
    save_config(cfg, pre / "config.yaml")
    torch.save(DecisionTransformer(cfg.model).state_dict(), pre / "model.pt")
    _expect_error(ft_cfg(workspace, tmp_path / "a", f"checkpoint={pre}"), ValueError,
                  r"state_dim=39.*expects state_dim=20")


def test_cli_runs_and_reports_errors(workspace, tmp_path, capsys):
    from dt_eva.cli import main

    common = ["finetune", "--checkpoint", str(workspace["pretrain"]), "--task", "hammer", "--config",
              str(REPO / "configs/finetune/tiny.yaml"), f"data.path={workspace['data']}", "train.steps=2",
              "train.batch_size=8", "train.eval_episodes=0", "train.progress=false", "train.device=cpu"]
    assert main([*common, "--method", "nope"]) == 1
    assert "valid methods are" in capsys.readouterr().err
    run_dir = tmp_path / "cli"
    assert main([*common, "--method", "lora", "--rank", "3", "--run-dir", str(run_dir)]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["rank"] == 3
    assert main([*common, "--method", "lora", "--rank", "3", "--run-dir", str(run_dir)]) == 1  # exists
    assert "--resume" in capsys.readouterr().err


def test_heldout_loss_is_logged_at_every_evaluation_step(workspace, tmp_path):
    from dt_eva.data import load_dataset
    from dt_eva.evaluation.offline import heldout_batches, heldout_loss

    run_dir = run_finetune(ft_cfg(workspace, tmp_path / "ho", "method=lora", "train.eval_every=2",
                                  "train.precision=fp32", f"heldout_path={workspace['data']}"))
    logged = {r["step"]: r["heldout/loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "heldout/loss" in r}
    assert sorted(logged) == [2, 4]
    model, _ = load_finetune_model(run_dir, merged=False)
    batches = heldout_batches(load_dataset(workspace["data"], tasks=["hammer"]), "hammer-v3", model.cfg)
    assert sum(int(b["states"].shape[0]) for b in batches) == 2 * 40  # 2 episodes x 40 windows of 5 steps
    assert logged[4] == pytest.approx(heldout_loss(model, batches), rel=1e-6)
    assert json.loads((run_dir / "summary.json").read_text())["heldout_loss"] == logged[4]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_finetune(ft_cfg(workspace, tmp_path / "ho2", "method=lora", f"heldout_path={tmp_path / 'none'}"))
    assert not (tmp_path / "ho2").exists()


def test_probe_logs_heldout_loss_between_evaluations_without_changing_training(workspace, tmp_path):
    from dt_eva.runs.guard import config_hash

    plain = ft_cfg(workspace, tmp_path / "plain", "method=lora", "train.eval_every=4", f"heldout_path={workspace['data']}")
    probed = ft_cfg(workspace, tmp_path / "probed", "method=lora", "train.eval_every=4", "train.probe_every=1",
                    f"heldout_path={workspace['data']}")
    same_dir = [ft_cfg(workspace, tmp_path / "x", *extra) for extra in ((), ("train.probe_every=1",))]
    assert config_hash(same_dir[0]) == config_hash(same_dir[1])  # a cadence: a sweep's finished rows stay valid
    runs = [run_finetune(cfg) for cfg in (plain, probed)]
    heldout = [{r["step"]: r["heldout/loss"] for r in read_metrics(d / "metrics.jsonl") if "heldout/loss" in r}
               for d in runs]
    assert sorted(heldout[0]) == [4] and sorted(heldout[1]) == [1, 2, 3, 4]
    assert heldout[1][4] == heldout[0][4]
    assert losses(runs[1]) == losses(runs[0])  # the probe runs in eval mode on its own RNG
    probe_seconds = [r for r in read_metrics(runs[1] / "metrics.jsonl") if "probe/seconds" in r]
    assert [r["step"] for r in probe_seconds] == [1, 2, 3]  # step 4 is an evaluation step: eval/seconds
    with pytest.raises(ValueError, match="train.probe_every must be >= 0"):
        ft_cfg(workspace, tmp_path / "bad", "train.probe_every=-1")


def test_pinned_fp32_finetune_evaluates_in_fp32_on_a_cpu_with_native_bf16(workspace, tmp_path, monkeypatch):
    """The run's precision is resolved once and reaches every evaluation: online rollouts, the held-out
    probe, `evaluate_run`'s default and the records (before the fix, in-training evaluation re-resolved
    `auto` and ran bf16 autocast under a pinned fp32)."""
    from dt_eva.data import load_dataset
    from dt_eva.evaluation.offline import heldout_batches, heldout_loss
    from dt_eva.experiments.evaluate import evaluate_run
    from dt_eva.utils import precision as precision_module

    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    common = ("method=lora", "train.eval_every=4", "train.eval_episodes=1", f"heldout_path={workspace['data']}")
    pinned = run_finetune(ft_cfg(workspace, tmp_path / "fp32", *common, "train.precision=fp32"))
    auto = run_finetune(ft_cfg(workspace, tmp_path / "auto", *common, "train.precision=auto"))
    for run_dir, want in ((pinned, "fp32"), (auto, "bf16")):
        record = json.loads((run_dir / "eval.json").read_text())
        assert (record["precision"], record["train_precision"]) == (want, want)
        assert record["cpu"] == precision_module.cpu_model()
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["precision"] == want and summary["machines"] == [precision_module.cpu_model()]
        model, _ = load_finetune_model(run_dir, merged=False)
        batches = heldout_batches(load_dataset(workspace["data"], tasks=["hammer"]), "hammer-v3", model.cfg)
        dtype = torch.bfloat16 if want == "bf16" else None
        assert summary["heldout_loss"] == heldout_loss(model, batches, dtype)  # the probe ran at the run's precision
        again = evaluate_run(run_dir, episodes=1, progress=False)  # default: the run's own precision
        assert (again["precision"], again["train_precision"]) == (want, want)
    assert evaluate_run(pinned, episodes=1, progress=False, precision="auto")["precision"] == "bf16"
    bf16_loss = heldout_loss(load_finetune_model(pinned, merged=False)[0], batches, torch.bfloat16)
    assert bf16_loss != json.loads((pinned / "summary.json").read_text())["heldout_loss"]  # the check can fail
