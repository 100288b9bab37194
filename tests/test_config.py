"""Config machinery on small toy dataclasses: types, unknown keys, overrides, YAML round trips, presets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from dreamfusion.config import (
    apply_overrides,
    dotted_keys,
    dump_yaml,
    from_dict,
    load_yaml_overrides,
    merge_dicts,
    to_dict,
)
from dreamfusion.errors import UserError


@dataclass(frozen=True)
class OptimToy:
    lr_grid: float = 0.01
    lr_mlp: float = 0.001
    betas: tuple[float, float] = (0.9, 0.99)

    def __post_init__(self) -> None:
        if self.lr_grid < 0:
            raise ValueError(f"lr_grid must be >= 0, got {self.lr_grid}")


@dataclass(frozen=True)
class ScheduleToy:
    t_max_start: float = 0.98
    t_max_end: float = 0.98


@dataclass(frozen=True)
class ModelToy:
    name: str = "tiny"
    channels: int = 4


@dataclass(frozen=True)
class GuidanceToy:
    kind: Literal["sds", "target"] = "sds"
    scale: float = 100.0
    sds: ScheduleToy = field(default_factory=ScheduleToy)
    model: ModelToy | None = None
    negative_prompt: str | None = None


@dataclass(frozen=True)
class TrainToy:
    steps: int = 100
    seed: int | None = 0
    prompt: str = "a hamburger"
    mode_probs: tuple[float, ...] = (0.25, 0.25, 0.5)
    shading: Literal["albedo", "lambertian", "textureless"] = "lambertian"
    verbose: bool = False
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise UserError(f"steps must be > 0, got {self.steps}")


@dataclass(frozen=True)
class ToyConfig:
    train: TrainToy = field(default_factory=TrainToy)
    optim: OptimToy = field(default_factory=OptimToy)
    guidance: GuidanceToy = field(default_factory=GuidanceToy)


@dataclass(frozen=True)
class Required:
    name: str
    count: int = 1


def error_text(excinfo: pytest.ExceptionInfo[UserError]) -> str:
    text = str(excinfo.value)
    assert "\n" not in text, "errors are one line"
    return text


# ----------------------------------------------------------------------------------------------------------
# from_dict


def test_from_dict_empty_gives_defaults() -> None:
    assert from_dict(ToyConfig, {}) == ToyConfig()


def test_from_dict_nested_values_and_conversions() -> None:
    config = from_dict(
        ToyConfig,
        {
            "train": {
                "steps": 7,
                "mode_probs": [0.2, 0.3, 0.5],
                "shading": "albedo",
                "seed": None,
                "tags": ["a"],
            },
            "optim": {"lr_grid": 1, "betas": [0.5, 0.6]},
            "guidance": {"model": {"channels": 8}, "sds": {"t_max_end": 0.5}},
        },
    )
    assert config.train.steps == 7
    assert config.train.mode_probs == (0.2, 0.3, 0.5)
    assert config.train.seed is None
    assert config.train.tags == ["a"]
    assert config.optim.lr_grid == 1.0 and isinstance(config.optim.lr_grid, float)  # int accepted for float
    assert config.optim.betas == (0.5, 0.6)
    assert config.guidance.model == ModelToy(name="tiny", channels=8)
    assert config.guidance.sds == ScheduleToy(t_max_start=0.98, t_max_end=0.5)


def test_unknown_key_suggests_closest_dotted_key() -> None:
    with pytest.raises(UserError) as excinfo:
        from_dict(ToyConfig, {"optim": {"lr_grdi": 0.1}})
    assert error_text(excinfo) == "unknown config key 'optim.lr_grdi'; did you mean 'optim.lr_grid'?"


def test_unknown_key_in_the_wrong_section_suggests_the_right_one() -> None:
    with pytest.raises(UserError, match=r"'train\.lr_grid'; did you mean 'optim\.lr_grid'\?"):
        from_dict(ToyConfig, {"train": {"lr_grid": 0.1}})


def test_unknown_section_suggests_closest_section() -> None:
    with pytest.raises(UserError, match=r"unknown config key 'optm'; did you mean 'optim'\?"):
        from_dict(ToyConfig, {"optm": {"lr_grid": 0.1}})


def test_unknown_key_without_close_match_lists_section_keys() -> None:
    with pytest.raises(UserError) as excinfo:
        from_dict(ToyConfig, {"guidance": {"zzzzzz": 1}})
    assert error_text(excinfo) == (
        "unknown config key 'guidance.zzzzzz'; valid keys in 'guidance': kind, scale, sds, model, "
        "negative_prompt"
    )


def test_non_string_key_is_unknown() -> None:
    with pytest.raises(UserError, match=r"unknown config key 'train\.True'"):
        from_dict(ToyConfig, {"train": {True: 1}})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"train": {"steps": "ten"}}, "config key 'train.steps' expects int, got 'ten' (str)"),
        ({"train": {"steps": 1.5}}, "config key 'train.steps' expects int, got 1.5 (float)"),
        ({"train": {"steps": True}}, "config key 'train.steps' expects int, got True (bool)"),
        ({"train": {"verbose": 1}}, "config key 'train.verbose' expects bool, got 1 (int)"),
        ({"optim": {"lr_grid": False}}, "config key 'optim.lr_grid' expects float, got False (bool)"),
        ({"train": {"prompt": 3}}, "config key 'train.prompt' expects str, got 3 (int)"),
        ({"train": {"seed": "x"}}, "config key 'train.seed' expects int | null, got 'x' (str)"),
        (
            {"train": {"mode_probs": [0.2, "a"]}},
            "config key 'train.mode_probs' expects a list of float, got [0.2, 'a'] (list)",
        ),
        (
            {"optim": {"betas": [0.1, 0.2, 0.3]}},
            "config key 'optim.betas' expects a list of 2 values [float, float], got [0.1, 0.2, 0.3] (list)",
        ),
        ({"train": {"tags": "a"}}, "config key 'train.tags' expects a list of str, got 'a' (str)"),
        ({"guidance": {"sds": 3}}, "config key 'guidance.sds' expects a ScheduleToy section, got 3 (int)"),
        (
            {"guidance": {"model": 3}},
            "config key 'guidance.model' expects a ModelToy section | null, got 3 (int)",
        ),
    ],
)
def test_type_errors_name_key_type_and_value(data: dict, message: str) -> None:
    with pytest.raises(UserError) as excinfo:
        from_dict(ToyConfig, data)
    assert error_text(excinfo) == message


def test_literal_error_lists_options_and_suggests() -> None:
    with pytest.raises(UserError) as excinfo:
        from_dict(ToyConfig, {"train": {"shading": "lambertain"}})
    assert error_text(excinfo) == (
        "config key 'train.shading' must be one of 'albedo', 'lambertian', 'textureless', "
        "got 'lambertain' (str); did you mean 'lambertian'?"
    )


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(UserError, match="the config must be a mapping of keys, got"):
        from_dict(ToyConfig, ["train"])  # type: ignore[arg-type]


def test_post_init_value_error_names_the_section() -> None:
    with pytest.raises(UserError) as excinfo:
        from_dict(ToyConfig, {"optim": {"lr_grid": -1}})
    assert error_text(excinfo) == "invalid config section 'optim': lr_grid must be >= 0, got -1.0"


def test_post_init_user_error_names_the_section() -> None:
    with pytest.raises(UserError, match=r"^invalid config section 'train': steps must be > 0, got 0$"):
        from_dict(ToyConfig, {"train": {"steps": 0}})


def test_post_init_error_at_top_level() -> None:
    with pytest.raises(UserError, match=r"^invalid config: lr_grid must be >= 0"):
        from_dict(OptimToy, {"lr_grid": -1})


def test_path_prefixes_errors_for_a_sub_config() -> None:
    with pytest.raises(
        UserError, match=r"'guidance\.sds\.t_max_edn'; did you mean 'guidance\.sds\.t_max_end'"
    ):
        from_dict(ScheduleToy, {"t_max_edn": 0.5}, path="guidance.sds")


def test_missing_required_key() -> None:
    assert from_dict(Required, {"name": "x"}) == Required(name="x")
    with pytest.raises(UserError, match=r"^missing config key 'name'$"):
        from_dict(Required, {"count": 2})


def test_unsupported_annotation_is_a_bug_not_a_user_error() -> None:
    @dataclass(frozen=True)
    class Bad:
        table: dict = field(default_factory=dict)

    with pytest.raises(TypeError, match="not support"):
        from_dict(Bad, {"table": {}})


# ----------------------------------------------------------------------------------------------------------
# to_dict, dotted_keys, YAML


def test_dotted_keys_lists_every_leaf_in_field_order() -> None:
    assert dotted_keys(ToyConfig) == [
        "train.steps",
        "train.seed",
        "train.prompt",
        "train.mode_probs",
        "train.shading",
        "train.verbose",
        "train.tags",
        "optim.lr_grid",
        "optim.lr_mlp",
        "optim.betas",
        "guidance.kind",
        "guidance.scale",
        "guidance.sds.t_max_start",
        "guidance.sds.t_max_end",
        "guidance.model.name",
        "guidance.model.channels",
        "guidance.negative_prompt",
    ]


def test_to_dict_is_plain_data_and_round_trips() -> None:
    config = ToyConfig(guidance=GuidanceToy(model=ModelToy(channels=3)))
    data = to_dict(config)
    assert data["train"]["mode_probs"] == [0.25, 0.25, 0.5]
    assert data["guidance"]["model"] == {"name": "tiny", "channels": 3}
    assert data["guidance"]["negative_prompt"] is None
    assert from_dict(ToyConfig, data) == config


def test_dump_yaml_round_trips_in_field_order_with_header() -> None:
    config = ToyConfig(
        train=TrainToy(prompt="yes: a 'quoted' prompt #1", tags=["1e-3", "on"], seed=None),
        optim=OptimToy(lr_grid=1e-5, lr_mlp=float("inf")),
        guidance=GuidanceToy(model=ModelToy()),
    )
    text = dump_yaml(config)
    lines = text.splitlines()
    assert lines[0].startswith("# dreamfusion ") and "ToyConfig" in lines[0]
    assert lines[1:3] == ["train:", "  steps: 100"]
    assert "  mode_probs: [0.25, 0.25, 0.5]" in lines  # lists in flow style, sections in block style
    sections = [line for line in lines if line and not line.startswith((" ", "#"))]
    assert sections == ["train:", "optim:", "guidance:"]
    assert from_dict(ToyConfig, load_yaml_overrides(text)) == config


def test_dump_yaml_custom_header_must_be_one_line() -> None:
    assert dump_yaml(ScheduleToy(), header="run 3").startswith("# run 3\n")
    with pytest.raises(ValueError):
        dump_yaml(ScheduleToy(), header="a\nb")


def test_load_yaml_reads_exponent_floats() -> None:
    # PyYAML alone reads `1e-3` as a string; learning rates are written that way.
    assert load_yaml_overrides("optim:\n  lr_grid: 1e-3\n  lr_mlp: -2E+2\n") == {
        "optim": {"lr_grid": 0.001, "lr_mlp": -200.0}
    }


def test_load_yaml_from_path_and_empty(tmp_path: Path) -> None:
    path = tmp_path / "preset.yaml"
    path.write_text("train:\n  steps: 5\n", encoding="utf-8")
    assert load_yaml_overrides(path) == {"train": {"steps": 5}}
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n", encoding="utf-8")
    assert load_yaml_overrides(empty) == {}


def test_load_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError) as excinfo:
        load_yaml_overrides(tmp_path / "missing.yaml")
    assert error_text(excinfo).startswith("cannot read config file ")
    with pytest.raises(UserError) as excinfo:
        load_yaml_overrides("train:\n  steps: [1, 2\n")
    assert error_text(excinfo).startswith("invalid YAML in '<config text>': ")
    assert "line" in error_text(excinfo)
    with pytest.raises(UserError) as excinfo:
        load_yaml_overrides("- a\n- b\n")
    assert "must hold a mapping of config keys at the top level" in error_text(excinfo)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match="cannot read config file"):
        load_yaml_overrides(binary)


# ----------------------------------------------------------------------------------------------------------
# Presets and overrides


def test_merge_dicts_is_deep_and_does_not_modify_inputs() -> None:
    base = {"train": {"steps": 10, "prompt": "a"}, "optim": {"betas": [0.9, 0.99]}}
    override = {"train": {"steps": 20}, "optim": {"betas": [0.5, 0.5]}, "guidance": {"scale": 7.5}}
    merged = merge_dicts(base, override)
    assert merged == {
        "train": {"steps": 20, "prompt": "a"},
        "optim": {"betas": [0.5, 0.5]},
        "guidance": {"scale": 7.5},
    }
    assert base == {"train": {"steps": 10, "prompt": "a"}, "optim": {"betas": [0.9, 0.99]}}
    merged["train"]["prompt"] = "changed"
    merged["guidance"]["scale"] = 0.0
    assert base["train"]["prompt"] == "a" and override["guidance"]["scale"] == 7.5


def test_preset_then_overrides_flow() -> None:
    preset = load_yaml_overrides("train:\n  steps: 50\nguidance:\n  sds:\n    t_max_end: 0.5\n")
    user = load_yaml_overrides("train:\n  prompt: a corgi\n")
    config = from_dict(ToyConfig, merge_dicts(preset, user))
    config = apply_overrides(config, ["train.steps=200"])
    assert config.train == TrainToy(steps=200, prompt="a corgi")
    assert config.guidance.sds.t_max_end == 0.5


def test_apply_overrides_parses_yaml_values() -> None:
    config = apply_overrides(
        ToyConfig(guidance=GuidanceToy(model=ModelToy())),
        [
            "train.steps=200",
            "guidance.sds.t_max_end=0.5",
            "guidance.model=null",
            "train.mode_probs=[0.2,0.3,0.5]",
            "train.verbose=true",
            "optim.lr_grid=1e-3",
            "train.seed=null",
            "guidance.kind=target",
        ],
    )
    assert config.train.steps == 200
    assert config.guidance.sds.t_max_end == 0.5
    assert config.guidance.model is None
    assert config.train.mode_probs == (0.2, 0.3, 0.5)
    assert config.train.verbose is True
    assert config.optim.lr_grid == 0.001
    assert config.train.seed is None
    assert config.guidance.kind == "target"


def test_apply_overrides_returns_a_new_object() -> None:
    original = ToyConfig()
    changed = apply_overrides(original, ["train.steps=3"])
    assert original.train.steps == 100 and changed.train.steps == 3


def test_apply_overrides_keeps_strings_as_written() -> None:
    config = apply_overrides(
        ToyConfig(),
        ["train.prompt=a photo: a cat, = sitting", "guidance.negative_prompt=no", "train.tags=[a, b]"],
    )
    assert config.train.prompt == "a photo: a cat, = sitting"
    assert config.guidance.negative_prompt == "no"  # YAML alone would read a bool
    assert config.train.tags == ["a", "b"]
    assert apply_overrides(ToyConfig(), ["train.prompt=123"]).train.prompt == "123"
    assert apply_overrides(ToyConfig(), ["train.prompt="]).train.prompt == ""
    assert apply_overrides(ToyConfig(), ["guidance.negative_prompt=null"]).guidance.negative_prompt is None


def test_apply_overrides_into_an_unset_optional_section_fills_defaults() -> None:
    config = apply_overrides(ToyConfig(), ["guidance.model.channels=16"])
    assert config.guidance.model == ModelToy(name="tiny", channels=16)


def test_apply_overrides_section_mapping_merges() -> None:
    config = apply_overrides(ToyConfig(optim=OptimToy(lr_mlp=0.5)), ["optim={lr_grid: 0.2}"])
    assert config.optim == OptimToy(lr_grid=0.2, lr_mlp=0.5)


def test_apply_overrides_unknown_key_suggests() -> None:
    with pytest.raises(UserError) as excinfo:
        apply_overrides(ToyConfig(), ["optim.lr_grdi=0.1"])
    assert error_text(excinfo) == "unknown config key 'optim.lr_grdi'; did you mean 'optim.lr_grid'?"
    with pytest.raises(UserError) as excinfo:
        apply_overrides(ToyConfig(), ["guidance.sds.qqqqqq=1"])
    assert error_text(excinfo) == (
        "unknown config key 'guidance.sds.qqqqqq'; valid keys in 'guidance.sds': t_max_start, t_max_end"
    )


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("optm.lr_grid=1", "unknown config key 'optm.lr_grid'; did you mean 'optim.lr_grid'?"),
        ("train.lr_grid=1", "unknown config key 'train.lr_grid'; did you mean 'optim.lr_grid'?"),
        (
            "guidance.sds.t_max_edn=1",
            "unknown config key 'guidance.sds.t_max_edn'; did you mean 'guidance.sds.t_max_end'?",
        ),
        ("qqq=1", "unknown config key 'qqq'; valid keys at the top level: train, optim, guidance"),
    ],
)
def test_apply_overrides_suggestions(item: str, message: str) -> None:
    with pytest.raises(UserError) as excinfo:
        apply_overrides(ToyConfig(), [item])
    assert error_text(excinfo) == message


@pytest.mark.parametrize("item", ["train.steps", "=5", " = 5", ""])
def test_apply_overrides_malformed_item(item: str) -> None:
    with pytest.raises(UserError) as excinfo:
        apply_overrides(ToyConfig(), [item])
    assert "is not key=value" in error_text(excinfo)


def test_apply_overrides_validates_types_and_values() -> None:
    with pytest.raises(UserError, match=r"config key 'train\.steps' expects int, got 'many' \(str\)"):
        apply_overrides(ToyConfig(), ["train.steps=many"])
    with pytest.raises(UserError, match=r"invalid config section 'optim': lr_grid must be >= 0"):
        apply_overrides(ToyConfig(), ["optim.lr_grid=-0.5"])
    with pytest.raises(UserError, match=r"must be one of 'sds', 'target'"):
        apply_overrides(ToyConfig(), ["guidance.kind=sdss"])


def test_apply_overrides_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError):
        apply_overrides(ToyConfig(), "train.steps=3")
