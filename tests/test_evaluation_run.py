"""`evaluate_run` and `dt-eva evaluate` on a real (hand-assembled, tiny) pre-training run directory."""

from __future__ import annotations

import json

import pytest
import torch

from dt_eva.cli import main
from dt_eva.data import collect_dataset, load_dataset
from dt_eva.experiments.evaluate import evaluate_run
from dt_eva.models import DecisionTransformer, DTConfig


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "reach"
    collect_dataset(out, ["reach"], episodes=2, noise_levels=[0.0, 0.5], workers=1, progress=False)
    return out


def make_run(root, dataset_path, eval_tasks=("reach",)):
    """A pre-training run directory as `dt-eva pretrain` leaves it (config, meta, weights)."""
    from dt_eva.config import save_config
    from dt_eva.runs.configs import PretrainConfig
    from dt_eva.runs.marker import write_meta
    from dt_eva.training.configs import DataConfig, TrainConfig

    run = root / "run"
    model_cfg = DTConfig.tiny(hidden_size=32, n_layer=1, n_head=2, context_len=4)
    cfg = PretrainConfig(
        name="run", run_dir=str(run), model=model_cfg,
        data=DataConfig(path=str(dataset_path), rtg_scale=300.0, reward_scale=50.0),
        train=TrainConfig(steps=1, eval_tasks=list(eval_tasks)),
    )
    run.mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    write_meta(run, "pretrain")
    torch.manual_seed(0)
    torch.save(DecisionTransformer(model_cfg).state_dict(), run / "model.pt")
    return run


@pytest.mark.slow
def test_evaluate_run_keeps_a_record_with_dataset_targets(tmp_path, dataset_dir):
    from dt_eva.runs.evals import read_eval_records

    run = make_run(tmp_path, dataset_dir)
    result = evaluate_run(run, episodes=2, progress=False)  # tasks: the run's eval_tasks
    assert list(result["tasks"]) == ["reach-v3"]
    best = load_dataset(dataset_dir).max_return("reach-v3")
    assert result["tasks"]["reach-v3"]["target_return"] == pytest.approx(best)
    assert result["rtg_scale"] == 300.0 and result["reward_scale"] == 50.0  # the run's own scaling
    assert json.loads((run / "eval.json").read_text()) == json.loads(json.dumps(result))
    [record] = read_eval_records(run)
    assert record["result"] == json.loads(json.dumps(result))
    assert record["settings"] == {"episodes": 2, "seed": 0, "tasks": ["reach-v3"],
                                  "target_returns": {"reach-v3": pytest.approx(best)},
                                  "rtg_scale": 300.0, "reward_scale": 50.0}
    assert record["model"] == {"weights": "model.pt", "step": None}
    assert (run / "evals" / f"{record['key']}.json").is_file() and record["key"].startswith("ep2-seed0-")
    assert not (run / "eval").exists()  # dt-eva 0.1.0's per-task files are no longer written
    assert not list(run.glob(".*tmp*")) and not list((run / "evals").glob(".*"))  # no temp files left


@pytest.mark.slow
def test_cli_prints_table_with_mean_row_last(tmp_path, dataset_dir, capsys):
    run = make_run(tmp_path, dataset_dir)
    code = main(["evaluate", "--run", str(run), "--tasks", "reach,push", "--episodes", "1",
                 "--target-return", "700", "--num-envs", "2", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    rows = [line.split()[0] for line in out.splitlines() if line and not line.startswith("-")]
    assert rows[:4] == ["task", "reach-v3", "push-v3", "mean"]
    assert "700.0" in out and f"wrote {run / 'evals'}/ep1-seed0-" in out
    saved = json.loads((run / "eval.json").read_text())
    assert saved["tasks"]["push-v3"]["target_return"] == 700.0


def test_cli_errors_say_what_to_do(tmp_path, dataset_dir, capsys):
    assert main(["evaluate", "--run", str(tmp_path / "missing")]) == 1
    assert "dt-eva pretrain" in capsys.readouterr().err

    run = make_run(tmp_path, dataset_dir)
    assert main(["evaluate", "--run", str(run), "--tasks", "hamer", "--target-return", "1"]) == 1
    err = capsys.readouterr().err
    assert "unknown Meta-World task 'hamer'" in err and "hammer" in err and "window-close" in err

    # a task the training data lacks: no default target return -> say --target-return
    assert main(["evaluate", "--run", str(run), "--tasks", "push", "--episodes", "1"]) == 1
    assert "--target-return" in capsys.readouterr().err

    (run / "model.pt").unlink()
    assert main(["evaluate", "--run", str(run), "--target-return", "1"]) == 1
    assert "model.pt" in capsys.readouterr().err
    assert not (run / "eval.json").exists() and not (run / "evals").exists()


def test_missing_dataset_asks_for_target_return(tmp_path):
    run = make_run(tmp_path, tmp_path / "no-such-dataset")
    with pytest.raises(ValueError, match="--target-return"):
        evaluate_run(run, episodes=1, progress=False)
    assert not (run / "eval.json").exists()
