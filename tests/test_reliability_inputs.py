"""Hostile inputs and faults, round two (issue 16, items 12-18, 21, 23 and the smaller ones on inputs).

Each test reproduces a defect found by handing the real `dt-eva` entry point (`dt_eva.cli.main`) or
the public API a bad value, a crafted file or a full disk, on the committed legacy fixture's dataset.
Every bad input must give a one-line error that names the file or key, and leave nothing behind.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from dt_eva.cli import main

REPO = Path(__file__).resolve().parents[1]
LEGACY = REPO / "tests" / "fixtures" / "legacy"
TRAIN = ["train.batch_size=8", "train.log_every=1", "train.eval_every=0", "train.progress=false", "train.device=cpu",
         "optim.warmup_steps=1"]
TINY = ["model.hidden_size=16", "model.n_layer=1", "model.n_head=2", "model.context_len=5", *TRAIN]
DEEP = "[" * 100_000  # deeper than Python's recursion limit


@pytest.fixture
def ws(tmp_path, monkeypatch) -> Path:
    """A working folder with the legacy fixture's dataset; the tests run `dt-eva` inside it."""
    shutil.copytree(LEGACY / "data", tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny pre-training run and an EVA fine-tuning run on it (made once; tests copy them)."""
    root = tmp_path_factory.mktemp("trained")
    shutil.copytree(LEGACY / "data", root / "data")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert pretrain("name=pre") == 0
        assert finetune("--method", "eva", "--name", "ft") == 0
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def runs(trained, ws) -> Path:
    """The trained runs, copied into the working folder."""
    shutil.copytree(trained / "runs", ws / "runs")
    return ws / "runs"


def pretrain(*args: str) -> int:
    return main(["pretrain", "data.path=data/tiny", *TINY, "train.steps=2", "train.ckpt_every=1", *args])


def finetune(*args: str) -> int:
    return main(["finetune", "--checkpoint", "runs/pre", "--task", "hammer", "data.path=data/tiny", *TRAIN,
                 "rank=2", "train.steps=2", "train.ckpt_every=1", "train.eval_episodes=0", "eva.batch_size=4",
                 "eva.tau=0.9", *args])


def error_line(capsys) -> str:
    """The error `dt-eva` printed: one line, no traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# 12. a number that passes `> 0` (inf) or compares false (NaN) is refused before the run folder exists --------
@pytest.mark.parametrize("override, message", [
    ("seed=-1", "seed must be an integer in [0, 2**32), got -1"),
    ("optim.weight_decay=nan", "optim.weight_decay must be a finite number >= 0, got nan"),
    ("optim.eps=nan", "optim.eps must be a finite number > 0, got nan"),
    ("optim.betas=[2,0.999]", "optim.betas[0] must be a finite number in [0, 1), got 2.0"),
    ("optim.betas=[0.9,1]", "optim.betas[1] must be a finite number in [0, 1), got 1.0"),
    ("data.rtg_scale=inf", "data.rtg_scale must be a finite number > 0, got inf"),
    ("data.reward_scale=nan", "data.reward_scale must be a finite number > 0, got nan"),
    ("optim.lr=inf", "optim.lr must be a finite number > 0, got inf"),
    ("optim.grad_clip=nan", "optim.grad_clip must be a finite number >= 0, got nan (0 = no clipping)"),
    ("optim.grad_clip=inf", "optim.grad_clip must be a finite number >= 0, got inf"),
    ("train.eval_tasks=[bogus]", "unknown Meta-World task 'bogus'"),
])
def test_bad_numbers_are_refused_before_the_pretrain_folder_exists(ws, capsys, override, message):
    assert pretrain("name=bad", override) == 1
    assert message in error_line(capsys)
    assert not (ws / "runs").exists()


@pytest.mark.parametrize("override, message", [
    ("alpha=nan", "alpha must be a finite number > 0, got nan"),
    ("alpha=inf", "alpha must be a finite number > 0, got inf"),
    ("rho=inf", "rho must be a finite number >= 1, got inf"),
    ("seed=-1", "seed must be an integer in [0, 2**32), got -1"),
    ("optim.lr=nan", "optim.lr must be a finite number > 0, got nan"),
    ("adalora.orth_reg_weight=nan", "adalora.orth_reg_weight must be a finite number >= 0, got nan"),
])
def test_bad_numbers_are_refused_before_the_finetune_folder_exists(runs, capsys, override, message):
    before = sorted(p.name for p in runs.iterdir())
    assert finetune("--method", "lora", "--name", "bad", override) == 1
    assert message in error_line(capsys)
    assert sorted(p.name for p in runs.iterdir()) == before


def test_a_dataset_listing_an_unknown_task_is_refused_before_the_folder_exists(ws, capsys):
    meta_path = ws / "data/tiny/metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["tasks"] = ["hammer-v3", "bogus-v3"]
    meta_path.write_text(json.dumps(meta))
    (ws / "data/tiny/reach-v3").rename(ws / "data/tiny/bogus-v3")
    assert pretrain("name=bad") == 1
    err = error_line(capsys)
    assert f"{meta_path.relative_to(ws)}: 'tasks' lists ['bogus-v3'], which are not Meta-World task names" in err
    assert not (ws / "runs").exists()


def test_returns_to_go_edited_mid_episode_is_detected(ws):
    from dt_eva.data import load_dataset

    path = ws / "data/tiny/hammer-v3/returns_to_go.npy"
    rtg = np.load(path)
    rtg[1, 100] += 5.0  # first and last step still agree with the rewards
    np.save(path, rtg)
    with pytest.raises(ValueError, match=r"returns_to_go.npy: does not match the reverse cumulative sum of "
                                         r"rewards.npy \(first at episode 1, step 100\)"):
        load_dataset(ws / "data/tiny")


def test_a_rewards_file_holding_text_is_not_called_pickled(ws):
    from dt_eva.data import load_dataset

    (ws / "data/tiny/hammer-v3/rewards.npy").write_text("0.5 0.5 0.5\n")
    with pytest.raises(ValueError) as info:
        load_dataset(ws / "data/tiny")
    message = str(info.value)
    assert "hammer-v3/rewards.npy: not a readable .npy array: it holds no NumPy .npy header (text" in message
    assert "pickle" not in message


# 13. an unknown train.device is a one-line error, not a traceback ---------------------------------------------
def test_an_unknown_train_device_is_a_one_line_error(runs, capsys):
    assert pretrain("name=dev", "train.device=banana") == 1
    assert "train.device='banana' is not a torch device; use cpu, cuda, cuda:N or auto" in error_line(capsys)
    assert finetune("--method", "lora", "--name", "dev", "train.device=banana") == 1
    assert "train.device='banana' is not a torch device" in error_line(capsys)
    assert not (runs / "dev").exists()


# 14. deeply nested JSON / YAML is a clear error naming the file; `report` flags the run and goes on ---------
def test_deeply_nested_files_are_errors_that_name_the_file(runs, ws):
    from dt_eva.config import read_yaml_mapping
    from dt_eva.data import load_dataset
    from dt_eva.runs.marker import read_meta
    from dt_eva.utils.io import load_json_object

    for name in ("summary.json", "eval.json", "meta.json"):
        (runs / "pre" / name).write_text(DEEP)
    with pytest.raises(ValueError, match=r"summary.json is corrupt \(nested too deeply to parse"):
        load_json_object(runs / "pre" / "summary.json")
    with pytest.raises(ValueError, match=r"pre/meta.json is corrupt \(nested too deeply to parse.*damaged"):
        read_meta(runs / "pre")
    (runs / "pre" / "config.yaml").write_text(DEEP)
    with pytest.raises(ValueError, match=r"config file .*pre/config.yaml is not valid YAML \(nested too deeply"):
        read_yaml_mapping(runs / "pre" / "config.yaml")
    for name in ("metadata.json", "hammer-v3/task.json"):
        data = ws / "data" / "tiny"
        shutil.copytree(data, ws / "deep", dirs_exist_ok=True)
        (ws / "deep" / name).write_text(DEEP)
        with pytest.raises(ValueError, match=rf"deep/{name} is corrupt \(nested too deeply"):
            load_dataset(ws / "deep")
        shutil.rmtree(ws / "deep")


def test_report_flags_a_run_with_deeply_nested_files_and_reports_the_others(runs, ws, capsys):
    assert main(["evaluate", "--run", "runs/ft", "--episodes", "1", "--no-progress"]) == 0
    shutil.copytree(runs / "ft", runs / "bad")
    summary = json.loads((runs / "bad" / "summary.json").read_text())
    (runs / "bad" / "summary.json").write_text(json.dumps({**summary, "name": "bad"}))
    for path in (runs / "bad" / "config.yaml", runs / "bad" / "eval.json", *(runs / "bad" / "evals").glob("*.json")):
        path.write_text(DEEP)
    capsys.readouterr()
    assert main(["report", "runs", "--out", "rep", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "bad/config.yaml is not valid YAML (nested too deeply" in out
    assert "Report: 1 run(s)" in out  # ft; pre has no evaluation
    assert "runs/bad: " in out.split("Skipped 2 run(s):")[1]


def test_a_config_file_that_is_not_utf8_or_a_directory_is_named(ws, capsys):
    Path("bad.yaml").write_bytes(b"name: caf\xe9\n")
    assert main(["pretrain", "--config", "bad.yaml"]) == 1
    assert "config file bad.yaml is not valid YAML (not UTF-8 text: 'utf-8' codec can't decode byte 0xe9 in position 9" in \
        error_line(capsys)
    Path("sw").mkdir()
    assert main(["sweep", "sw"]) == 1
    assert "config file sw is a directory; pass a YAML file" in error_line(capsys)


def test_a_sweep_file_or_results_csv_that_is_not_utf8_is_named(runs, capsys):
    from dt_eva.runs.results import committed_results

    Path("s.yaml").write_bytes(b"kind: finetune\nout: sweeps/caf\xe9\n")
    assert main(["sweep", "s.yaml", "--dry-run"]) == 1
    assert "config file s.yaml is not valid YAML (not UTF-8 text: 'utf-8' codec can't decode byte 0xe9" in \
        error_line(capsys)
    Path("results.csv").write_bytes(b"name,status,config_hash\ncaf\xe9,done,abc\n")
    message = "results file results.csv is not UTF-8 text ('utf-8' codec can't decode byte 0xe9 in position 27"
    with pytest.raises(ValueError, match=re.escape(message)):
        committed_results("results.csv")  # what a sweep reads of an earlier sweep in its folder
    assert main(["report", "results.csv", "--out", "rep", "--no-plots"]) == 1  # the study report
    assert message in error_line(capsys)


def test_report_with_a_deeply_nested_eva_result_draws_the_other_plots(runs, capsys):
    assert main(["evaluate", "--run", "runs/ft", "--episodes", "1", "--no-progress"]) == 0
    (runs / "ft" / "eva" / "result.json").write_text(DEEP)
    capsys.readouterr()
    assert main(["report", "runs", "--out", "rep"]) == 0
    out = capsys.readouterr().out
    assert "ft/eva/result.json is corrupt (ValueError: " in out and "nested too deeply" in out
    assert "no rank heatmap for it" in out and (Path("rep") / "report.md").is_file()


# 15 / 21. a damaged EVA result names the file and what is wrong ------------------------------------------------
@pytest.mark.parametrize("damage, message", [
    ("truncate", r"EVA result .*eva/result.safetensors is corrupt or not a safetensors file"),
    ("garbage", r"EVA result .*eva/result.safetensors is corrupt or not a safetensors file"),
    ("no rank", r"eva/result.json \(with result.safetensors\) is not a valid EVA result: no entry 'blocks.0.attn.qkv'"),
    ("rank abc", r"eva/result.json .* the rank of blocks.0.attn.qkv is 'abc', not a non-negative integer"),
    ("names 5", r"eva/result.json .* 'names' is 5, not a list of layer names"),
    ("a list", r"eva/result.json is not a dt_eva EVA result \(format 'list'\)"),
    ("not json", r"eva/result.json is corrupt \("),
])
def test_a_damaged_eva_result_names_the_file(runs, damage, message):
    from dt_eva.eva import EvaResult

    eva = runs / "ft" / "eva"
    meta = json.loads((eva / "result.json").read_text())
    tensors = (eva / "result.safetensors").read_bytes()
    if damage == "truncate":
        (eva / "result.safetensors").write_bytes(tensors[: len(tensors) // 2])
    elif damage == "garbage":
        (eva / "result.safetensors").write_bytes(os.urandom(256))
    elif damage == "no rank":
        del meta["ranks"]["blocks.0.attn.qkv"]
    elif damage == "rank abc":
        meta["ranks"]["blocks.0.attn.qkv"] = "abc"
    elif damage == "names 5":
        meta["names"] = 5
    elif damage == "a list":
        meta = [meta]
    if damage != "not json":
        (eva / "result.json").write_text(json.dumps(meta))
    else:
        (eva / "result.json").write_text("{not json")
    with pytest.raises(ValueError, match=message):
        EvaResult.load(eva)


# 16. a crafted base config is checked against the weights' shapes before the model is built --------------------
def test_a_crafted_base_config_fails_before_the_model_is_allocated(runs, capsys, monkeypatch):
    import dt_eva.runs.base as base_module

    config = runs / "pre" / "config.yaml"
    config.write_text(config.read_text().replace("hidden_size: 16", "hidden_size: 65536").replace("n_layer: 1",
                                                                                                  "n_layer: 64"))
    built = []
    real = base_module.DecisionTransformer

    def spy(cfg):  # records every model built off the meta device (a real allocation)
        if torch.empty(0).device.type != "meta":
            built.append(cfg.hidden_size)
        return real(cfg)

    monkeypatch.setattr(base_module, "DecisionTransformer", spy)
    assert finetune("--method", "lora", "--name", "big") == 1
    err = error_line(capsys)
    assert "runs/pre/model.pt do not fit the model described by runs/pre/config.yaml (embed_state.weight: (16, 39) " \
           "in the weights, (65536, 39) in the config" in err
    assert built == []
    assert not (runs / "big").exists()


# 17. meta.json entries of the wrong type are named ------------------------------------------------------------
@pytest.mark.parametrize("key, value, expected", [
    ("base", "x", "'base' is 'x', expected an object"),
    ("resumed", "oops", "'resumed' is 'oops', expected a list"),
    ("kind", 5, "'kind' is 5, expected a string"),
])
def test_meta_json_with_wrong_types_is_a_clear_error(runs, capsys, key, value, expected):
    path = runs / "ft" / "meta.json"
    meta = json.loads(path.read_text())
    meta[key] = value
    path.write_text(json.dumps(meta))
    assert finetune("--method", "eva", "--name", "ft", "--resume") == 1
    assert f"runs/ft/meta.json: {expected}; the run directory is damaged" in error_line(capsys)
    assert main(["evaluate", "--run", "runs/ft", "--episodes", "1", "--no-progress"]) == 1
    assert expected in error_line(capsys)


def test_meta_json_with_a_wrong_base_step_is_named(runs):
    from dt_eva.runs.marker import read_meta

    path = runs / "ft" / "meta.json"
    meta = json.loads(path.read_text())
    meta["base"]["step"] = "six"
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"'base.step' is 'six', expected an integer or null"):
        read_meta(runs / "ft")


# 21. load_adapters on tampered files: ValueError naming the file, and the model is left without adapters -------
def tamper_adapters(adapters: Path, how: str) -> None:
    config_path, weights_path = adapters / "adapter_config.json", adapters / "adapter_model.safetensors"
    config = json.loads(config_path.read_text())
    first = next(iter(config["modules"]))
    if how == "no rank":
        del config["modules"][first]["rank"]
    elif how == "modules list":
        config["modules"] = [1]
    elif how == "nan alpha":
        config["modules"][first]["alpha"] = float("nan")
    elif how == "deep":
        config_path.write_text(DEEP)
        return
    elif how in ("nan weight", "inf weight"):
        from safetensors.torch import load_file, save_file

        state = load_file(str(weights_path))
        state[f"{first}.lora_A"][0, 0] = float(how.split()[0])
        save_file(state, str(weights_path))
        return
    elif how == "truncated":
        weights_path.write_bytes(weights_path.read_bytes()[:100])
        return
    config_path.write_text(json.dumps(config, allow_nan=True))


@pytest.mark.parametrize("how, message", [
    ("no rank", r"adapter_config.json: 'blocks.0.attn.qkv': 'rank' is None, not a int"),
    ("modules list", r"adapter_config.json: 'modules' is \[1\], not an object"),
    ("nan alpha", r"adapter_config.json: adapter alpha must be a finite number > 0, got nan"),
    ("deep", r"adapter_config.json is corrupt \(nested too deeply"),
    ("nan weight", r"adapter_model.safetensors: blocks.0.attn.qkv.lora_A: holds non-finite values"),
    ("inf weight", r"adapter_model.safetensors: blocks.0.attn.qkv.lora_A: holds non-finite values"),
    ("truncated", r"adapter weights .*adapter_model.safetensors is corrupt or not a safetensors file"),
])
def test_tampered_adapters_are_named_and_a_failed_load_leaves_no_adapters(runs, ws, how, message):
    from dt_eva.adapters import adapter_layers, load_adapters
    from dt_eva.runs import load_run_model

    base, _ = load_run_model(runs / "pre")
    trainable = {n: p.requires_grad for n, p in base.named_parameters()}
    before = {k: v.clone() for k, v in base.state_dict().items()}
    shutil.copytree(runs / "ft" / "adapters", ws / "bad")
    tamper_adapters(ws / "bad", how)
    with pytest.raises(ValueError, match=message):
        load_adapters(base, ws / "bad")
    assert adapter_layers(base) == {}
    assert {n: p.requires_grad for n, p in base.named_parameters()} == trainable
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    wrapped = load_adapters(base, runs / "ft" / "adapters")  # the corrected retry
    assert len(wrapped) == 4


# 18. a full disk is named: "no space left on device while writing <path>", and no partial file is left ---------
@pytest.fixture
def tiny_disk(tmp_path):
    """A real 64 KiB file system (tmpfs); skipped where mounting is not permitted (not root, containers)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def leftovers(folder: Path) -> list[str]:
    """Temporaries of atomic writes (`.<name>.<random>.tmp`, `.tmpdir`) below `folder`."""
    return [str(p) for p in folder.rglob(".*") if ".tmp" in p.name]


def test_pretrain_on_a_full_disk_names_the_file(ws, tiny_disk, capsys):
    assert pretrain(f"run_dir={tiny_disk}/pre") == 1
    err = error_line(capsys)
    assert f"no space left on device while writing {tiny_disk}/pre/" in err
    assert err.endswith(": free space or choose another folder")
    assert leftovers(tiny_disk) == []


def test_collect_on_a_full_disk_names_the_file(ws, tiny_disk, capsys):
    args = ["collect", "--tasks", "reach", "--episodes", "4", "--noise", "0", "--workers", "1", "--no-progress"]
    assert main([*args, "--out", str(tiny_disk / "data")]) == 1
    err = error_line(capsys)
    assert f"no space left on device while writing {tiny_disk}/data/reach-v3: free space or choose another folder" in err
    assert not any(p.name.startswith(".") for p in (tiny_disk / "data").rglob("*"))


def test_a_checkpoint_save_that_meets_enospc_names_the_file_and_resume_works(ws, capsys, monkeypatch):
    real_save = torch.save

    def full(obj, f, *args, **kwargs):  # the disk fills while the checkpoint is written
        real_save(obj, f, *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    assert pretrain("name=pre") == 1
    err = error_line(capsys)
    assert err.endswith("no space left on device while writing runs/pre/checkpoints/last.pt: free space or choose "
                        "another folder")
    assert list((ws / "runs/pre/checkpoints").iterdir()) == []  # the partial file is gone
    monkeypatch.setattr(torch, "save", real_save)  # space freed: the retry resumes the run
    assert pretrain("name=pre", "--resume") == 0
    assert (ws / "runs/pre/model.pt").is_file()


def test_a_sweep_run_on_a_full_disk_is_recorded_with_the_message(ws, tiny_disk):
    from dt_eva.experiments.sweep.worker import RunJob, run_job

    overrides = ("data.path=data/tiny", *TINY, "train.steps=2", "train.ckpt_every=1", f"run_dir={tiny_disk}/r0")
    error = run_job(RunJob("r0", "pretrain", None, overrides, resume=False, cwd=str(ws)))
    assert error is not None and error.startswith(f"DiskFullError: no space left on device while writing {tiny_disk}/r0/")
    assert error.endswith(": free space or choose another folder")
    assert leftovers(tiny_disk) == []


def test_enospc_without_a_path_becomes_a_disk_full_error_naming_the_file(tmp_path, monkeypatch):
    from dt_eva.utils.io import DiskFullError, atomic_write_text

    def quota(self, data):  # the write meets the user's quota (EDQUOT) after a partial write
        os.write(os.open(self, os.O_WRONLY), data[:1])
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(Path, "write_bytes", quota)
    with pytest.raises(DiskFullError) as info:
        atomic_write_text(tmp_path / "results.csv", "x,y")
    assert str(info.value) == f"no space left on device while writing {tmp_path}/results.csv: free space or choose " \
                              "another folder"
    assert list(tmp_path.iterdir()) == []


# 23. files and folders written atomically get the umask's mode, as open() / mkdir() would give them ------------
@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_respect_the_umask(tmp_path, umask):
    from dt_eva.utils.io import atomic_dir, atomic_write_json

    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "summary.json", {"a": 1})
        with atomic_dir(tmp_path / "adapters") as tmp:
            (tmp / "x").write_text("1")
        with open(tmp_path / "plain", "w"):
            pass
        (tmp_path / "plain_dir").mkdir()
    finally:
        os.umask(old)
    mode = lambda p: (tmp_path / p).stat().st_mode & 0o777  # noqa: E731
    assert mode("summary.json") == mode("plain") == 0o666 & ~umask
    assert mode("adapters") == mode("plain_dir") == 0o777 & ~umask


def test_a_run_is_readable_by_the_group_under_umask_002(ws):
    old = os.umask(0o002)
    try:
        assert pretrain("name=pre") == 0
    finally:
        os.umask(old)
    run = ws / "runs/pre"
    for name in ("config.yaml", "meta.json", "summary.json", "model.pt", "checkpoints/last.pt"):
        assert (run / name).stat().st_mode & 0o777 == 0o664, name
