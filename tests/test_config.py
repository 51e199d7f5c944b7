"""Typed configs: YAML + dotted overrides, type checking, clear errors, round trips, presets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

import pytest
import torch
import yaml

from dt_eva.config import config_diff, config_to_dict, load_config, parse_override, save_config
from dt_eva.models import DTConfig
from dt_eva.runs.configs import PretrainConfig
from dt_eva.training import DataConfig, OptimConfig

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Inner:
    width: int = 4
    rate: float = 0.5
    tag: Optional[str] = None


@dataclass
class Outer:
    name: str = "x"
    flag: bool = False
    inner: Inner = field(default_factory=lambda: Inner(width=8))  # a non-class-default "preset"
    items: list[str] = field(default_factory=list)
    pair: tuple[float, float] = (0.1, 0.2)
    mode: Literal["a", "b"] = "a"
    either: Union[int, list[int]] = 1


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "text.yaml"
    path.write_text(text)
    return path


def test_yaml_then_overrides_with_type_conversion(tmp_path):
    path = write(tmp_path, {"name": "run", "inner": {"rate": "1e-4"}, "items": ["a"]})
    cfg = load_config(Outer, path, ["inner.tag=hello", "pair=[1, 2.5]", "items=b,c", "either=[3,4]", "flag=true"])
    assert cfg.name == "run" and cfg.flag is True
    # a partial section layers over the field's default instance (width 8, not the class default 4)
    assert cfg.inner == Inner(width=8, rate=1e-4, tag="hello")
    assert cfg.items == ["b", "c"]
    assert cfg.pair == (1.0, 2.5) and all(isinstance(v, float) for v in cfg.pair)
    assert cfg.either == [3, 4]
    assert load_config(Outer, None, ["inner.width=1e3"]).inner.width == 1000  # PyYAML reads 1e3 as a string


def test_later_overrides_win_and_null_for_optional():
    cfg = load_config(Outer, None, ["inner.tag=a", "inner.tag=null", "name=2024"])
    assert cfg.inner.tag is None
    assert cfg.name == "2024"  # a number given for a str field is a name


@pytest.mark.parametrize(
    "override, words",
    [
        ("inner.widht=3", ["inner.widht", "width", "rate", "tag"]),
        ("nope=1", ["nope", "name", "inner", "items"]),
        ("inner.width=abc", ["inner.width", "int", "abc"]),
        ("inner.width=2.5", ["inner.width", "int", "2.5"]),
        ("flag=maybe", ["flag", "bool", "maybe"]),  # OmegaConf reads 1/0, yes/no, on/off as bools
        ("pair=[1]", ["pair", "tuple[float, float]", "[1]"]),
        ("mode=c", ["mode", "'a'", "'b'", "'c'"]),
        ("name.sub=1", ["name.sub", "not a section"]),
        ("just-a-word", ["key=value"]),
    ],
)
def test_bad_overrides_name_the_problem(override, words):
    with pytest.raises(ValueError) as err:
        load_config(Outer, None, [override])
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_unknown_and_mistyped_yaml_keys(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key.*inner.size.*valid keys are \['width', 'rate', 'tag'\]"):
        load_config(Outer, write(tmp_path, {"inner": {"size": 3}}))
    with pytest.raises(ValueError, match=r"config key inner.rate expects float, got \[1\]"):
        load_config(Outer, write(tmp_path, {"inner": {"rate": [1]}}))
    with pytest.raises(ValueError, match=r"config key inner expects Inner, got 3"):
        load_config(Outer, write(tmp_path, {"inner": 3}))
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(Outer, tmp_path / "missing.yaml")


def test_save_config_round_trip_is_atomic(tmp_path):
    cfg = load_config(Outer, None, ["items=a,b", "inner.tag=t", "pair=[3, 4]"])
    path = tmp_path / "sub" / "config.yaml"
    save_config(cfg, path)
    assert load_config(Outer, path) == cfg
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temporary file left behind
    assert config_to_dict(cfg)["pair"] == [3, 4]
    assert config_diff(cfg, load_config(Outer, path, ["inner.width=2"])) == {"inner.width": (8, 2)}


def test_parse_override_values_are_yaml():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a=") == ("a", "")
    assert parse_override("a=x=y") == ("a", "x=y")


def test_pretrain_presets_match_the_model_presets_and_appendix_e():
    tiny = load_config(PretrainConfig, REPO / "configs/pretrain/tiny.yaml")
    paper = load_config(PretrainConfig, REPO / "configs/pretrain/paper.yaml")
    assert tiny.model == DTConfig.tiny(context_len=10)  # the context the quality run measured
    assert paper.model == DTConfig.paper()
    assert paper.optim == OptimConfig(
        lr=1e-4, weight_decay=0.01, warmup_steps=4000, min_lr=1e-6, grad_clip=0.25, betas=(0.9, 0.999)
    )
    assert (paper.train.batch_size, paper.train.steps, paper.model.dropout) == (128, 1_000_000, 0.2)
    assert paper.data.path == "data/mt40"


def test_validation_in_post_init_surfaces_as_value_error():
    with pytest.raises(ValueError, match="n_head"):
        load_config(PretrainConfig, None, ["model.hidden_size=130", "model.n_head=4"])
    with pytest.raises(ValueError, match="train.precision"):
        load_config(PretrainConfig, None, ["train.precision=fp16"])


@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_preset_eval_tasks_are_pretraining_tasks(preset):
    from dt_eva.envs import MT40, resolve_tasks

    cfg = load_config(PretrainConfig, REPO / f"configs/pretrain/{preset}.yaml")
    assert cfg.train.eval_tasks and set(resolve_tasks(cfg.train.eval_tasks)) <= set(MT40)


@pytest.mark.parametrize(
    "text, value",
    [
        ("name=exp #2", "exp #2"),  # YAML would have dropped ' #2' as a comment
        ("name=#2", "#2"),
        ("name=a#b", "a#b"),
        ("tags=['a #b', c]", ["a #b", "c"]),  # a quoted '#' in a list is kept
        ("n=3", 3),
        ("lr=1e-4", 1e-4),  # PyYAML alone reads this as a string
        ("steps=1e6", 1_000_000),
        ("steps=1.5e3", 1500),
        ("x=2.5", 2.5),
        ("flag=true", True),
        ("run_dir=null", None),
        ("tasks=[a, b]", ["a", "b"]),
    ],
)
def test_override_values_lose_nothing(text, value):
    key, parsed = parse_override(text)
    assert parsed == value and type(parsed) is type(value)


def test_a_comment_after_a_list_override_is_refused():
    with pytest.raises(ValueError, match="quote the item"):
        parse_override("tasks=[a, b] #c")


def test_exponent_numbers_in_yaml_files(tmp_path):
    cfg = load_config(Outer, _yaml(tmp_path, "inner: {width: 2e3, rate: 5e-1}"))
    assert (cfg.inner.width, cfg.inner.rate) == (2000, 0.5)


def test_a_section_given_as_a_mapping_override_layers_over_its_default():
    cfg = load_config(Outer, None, ["inner={rate: 0.25}"])
    assert cfg.inner == Inner(width=8, rate=0.25)


def test_interpolation_is_resolved_before_the_dataclass_is_built():
    cfg = load_config(PretrainConfig, None, ["seed=3", "name=run-s${seed}"])
    assert cfg.name == "run-s3"


@pytest.mark.parametrize(
    "spelling, value, tasks",
    [
        ("mt40", "mt40", 40),
        ("hammer,push", "hammer,push", ["hammer-v3", "push-v3"]),
        ("[hammer, push]", ["hammer", "push"], ["hammer-v3", "push-v3"]),
        ("null", None, None),
    ],
)
def test_data_tasks_keeps_every_old_spelling(tmp_path, spelling, value, tasks):
    from dt_eva.envs import resolve_tasks

    from_override = load_config(PretrainConfig, None, [f"data.tasks={spelling}"])
    from_yaml = load_config(PretrainConfig, _yaml(tmp_path, f"data:\n  tasks: {spelling}\n"))
    assert from_override.data.tasks == from_yaml.data.tasks == value
    if tasks is None:
        return
    resolved = resolve_tasks(from_override.data.tasks)
    assert resolved == tasks if isinstance(tasks, list) else len(resolved) == tasks
    save_config(from_override, tmp_path / "saved.yaml")  # what a run directory stores reloads equal
    assert load_config(PretrainConfig, tmp_path / "saved.yaml") == from_override


def test_comma_lists_fill_list_fields():
    from dt_eva.runs.configs import FinetuneConfig

    cfg = load_config(FinetuneConfig, None, ["eva.token_types=state,rtg"])
    pre = load_config(PretrainConfig, None, ["train.eval_tasks=reach, push"])
    assert (cfg.eva.token_types, pre.train.eval_tasks) == (["state", "rtg"], ["reach", "push"])


def test_finetune_refuses_keys_it_would_ignore():
    from dt_eva.runs.configs import FinetuneConfig

    with pytest.raises(ValueError, match=r"train.eval_tasks.*no effect in fine-tuning"):
        load_config(FinetuneConfig, None, ["train.eval_tasks=reach"])
    with pytest.raises(ValueError, match=r"data.tasks.*no effect in fine-tuning"):
        load_config(FinetuneConfig, None, ["data.tasks=mt40"])


def _shipped_configs() -> list[Path]:
    presets = sorted(REPO.glob("configs/pretrain/*.yaml")) + sorted(REPO.glob("configs/finetune/*.yaml"))
    return presets + sorted(REPO.glob("tests/fixtures/legacy/runs/*/config.yaml"))


@pytest.mark.parametrize("path", _shipped_configs(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_and_legacy_config_loads(path, tmp_path):
    from dt_eva.runs.configs import FinetuneConfig

    is_finetune = "finetune" in path.parts or path.parent.name.startswith("ft-")
    cls = FinetuneConfig if is_finetune else PretrainConfig
    cfg = load_config(cls, path)
    assert isinstance(cfg, cls)
    raw = yaml.safe_load(path.read_text())
    assert cfg.data.path == raw["data"]["path"] and cfg.train.steps == raw["train"]["steps"]
    save_config(cfg, tmp_path / "again.yaml")
    assert load_config(cls, tmp_path / "again.yaml") == cfg


def test_the_eva_section_produces_the_eva_config_with_its_defaults_and_checks():
    """`eva:` of a fine-tuning config reaches EVA as one `EvaConfig`: the same defaults, the run's rank,
    rho, seed and progress, and EvaConfig's own checks reported under the config key."""
    from dt_eva.eva import EvaConfig
    from dt_eva.experiments.eva_init import eva_config_of
    from dt_eva.runs.configs import EvaSettings, FinetuneConfig

    assert eva_config_of(FinetuneConfig()) == EvaConfig()  # the defaults agree field by field
    cfg = load_config(FinetuneConfig, None, ["rank=3", "rho=1.5", "seed=7", "eva.tau=1", "eva.max_batches=4",
                                             "train.progress=false"])
    assert eva_config_of(cfg) == EvaConfig(rank=3, rho=1.5, tau=1.0, max_batches=4, seed=7, progress=False)
    assert isinstance(eva_config_of(cfg).tau, float)  # saved in result.json as 1.0, as before
    with pytest.raises(ValueError, match=r"^eva\.tau must be a number in \[0, 1\].*got 1\.5$"):
        EvaSettings(tau=1.5)
    with pytest.raises(ValueError, match=r"^eva\.max_batches must be an integer >= 1, got 0$"):
        EvaSettings(max_batches=0)


def test_the_eva_token_types_are_the_models():
    """The config's token types are the model's (one definition): the default selects every token."""
    from dt_eva.models import TOKEN_TYPES, DTConfig, DecisionTransformer
    from dt_eva.runs.configs import EvaSettings

    assert EvaSettings().token_types == list(TOKEN_TYPES) == ["state", "rtg", "action", "reward"]
    model = DecisionTransformer(DTConfig.tiny())
    mask = model.token_mask({"states": torch.zeros(1, 2, model.cfg.state_dim)}, EvaSettings().token_types)
    assert bool(mask.all())
    with pytest.raises(ValueError, match=r"must be a non-empty list out of \['state', 'rtg', 'action', 'reward'\]"):
        EvaSettings(token_types=["states"])


def test_the_models_scales_are_set_by_the_data_section_only():
    """`data.rtg_scale` / `data.reward_scale` set the model's own scaling; `model.rtg_scale` is not a key,
    and config.yaml names the scales once (under data:), as every earlier version wrote them."""
    cfg = load_config(PretrainConfig, None, ["data.rtg_scale=300", "data.reward_scale=50"])
    assert (cfg.model.rtg_scale, cfg.model.reward_scale) == (300.0, 50.0)
    assert "rtg_scale" not in config_to_dict(cfg)["model"] and config_to_dict(cfg)["data"]["rtg_scale"] == 300.0
    with pytest.raises(ValueError, match=r"'model.rtg_scale'.*set by data.rtg_scale"):
        load_config(PretrainConfig, None, ["model.rtg_scale=300"])


def test_a_model_scale_given_in_python_that_disagrees_with_data_is_refused():
    """In the Python API `DTConfig(rtg_scale=100)` used to be overwritten by `data.rtg_scale` without a word;
    it is refused and the message names the key to set. Agreeing or default model scales are fine."""
    with pytest.raises(ValueError, match=r"model.rtg_scale=100 disagrees with data.rtg_scale=200.*set data.rtg_scale=100"):
        PretrainConfig(model=DTConfig.tiny(rtg_scale=100.0))
    with pytest.raises(ValueError, match=r"model.reward_scale=7 disagrees with data.reward_scale=200"):
        PretrainConfig(model=DTConfig.tiny(reward_scale=7.0))
    cfg = PretrainConfig(data=DataConfig(rtg_scale=100.0), model=DTConfig.tiny(rtg_scale=100.0))
    assert cfg.model.rtg_scale == 100.0
    assert PretrainConfig(data=DataConfig(reward_scale=9.0), model=DTConfig.tiny()).model.reward_scale == 9.0
