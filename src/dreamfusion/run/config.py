"""A `generate` run's settings (config.yaml), the rule that resolves them (paper defaults <- preset <- flags
<- `--set` overrides), and what reads a run folder back: its config, its latest checkpoint and the field in
it. Export and evaluation read runs through this module, not the trainer."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from dreamfusion.checkpoint import Checkpoint, latest_checkpoint, load_checkpoint
from dreamfusion.config import apply_overrides, from_dict, load_yaml_overrides, merge_dicts, to_dict
from dreamfusion.errors import RunFolderError, SettingsError
from dreamfusion.fields import FieldConfig, build_field, field_kinds
from dreamfusion.fields.base import Field
from dreamfusion.guidance import BACKENDS, GuidanceConfig
from dreamfusion.guidance.base import Guidance
from dreamfusion.prompts import PromptConfig, validate_prompt
from dreamfusion.refine.stage import RefineConfig, RefinedMesh
from dreamfusion.render.background import BackgroundConfig
from dreamfusion.render.cameras import CameraConfig
from dreamfusion.render.lights import LightConfig
from dreamfusion.render.sampling import SamplingConfig
from dreamfusion.render.shading import ShadingConfig
from dreamfusion.training.losses import LossConfig


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 15000  # sec. 3.2
    batch_size: int = 1  # views per step; the paper rendered 4 (one per TPU chip)
    # Render width = height. None: a pixel prior's own resolution (64 for IF, like the paper's Imagen base
    # model; 32 for the built-in prior), else 64 (a latent prior's VAE decodes from 64x64 latents).
    resolution: int | None = None
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3  # older periodic checkpoints are removed; the final one is always kept
    validation_every: int = 500
    validation_views: int = 4
    # A step whose loss or gradient is not finite changes nothing and is counted; this many in a row stop the
    # run with an error, its checkpoints untouched.
    max_skipped_steps: int = 20

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise ValueError(f"steps must be > 0, got {self.steps}")
        if not 0 <= self.seed < 2**32 - 2:  # seed, seed + 1 and seed + 2 seed three generators
            raise ValueError(f"seed must be in [0, 2**32 - 2), got {self.seed}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {self.batch_size}")
        if self.resolution is not None and not (16 <= self.resolution <= 1024 and self.resolution % 8 == 0):
            raise ValueError(f"resolution must be a multiple of 8 between 16 and 1024, got {self.resolution}")
        if (
            min(self.checkpoint_every, self.validation_every, self.validation_views, self.keep_checkpoints)
            <= 0
        ):
            raise ValueError(
                "checkpoint_every, validation_every, validation_views and keep_checkpoints must be > 0"
            )
        if self.max_skipped_steps <= 0:
            raise ValueError(f"max_skipped_steps must be > 0, got {self.max_skipped_steps}")


@dataclass(frozen=True)
class OptimConfig:
    lr_grid: float = 1e-2  # feature planes / hash tables
    lr_mlp: float = 1e-3  # the field's MLP
    lr_background: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-15  # SDS gradients on grid cells are tiny; a large eps would mute them (as threestudio)
    warmup_fraction: float = 3000 / 15000  # App. A.2: warm-up over 3,000 of 15,000 steps ...
    lr_start_ratio: float = 1e-5  # ... from 1e-9 = 1e-5 x the peak 1e-4 ...
    lr_end_ratio: float = 1e-2  # ... then cosine decay to 1e-6 = 1e-2 x the peak

    def __post_init__(self) -> None:
        if min(self.lr_grid, self.lr_mlp, self.lr_background) < 0:
            raise ValueError("learning rates must be >= 0")
        if not 0.0 <= self.warmup_fraction <= 1.0:
            raise ValueError("warmup_fraction must be in [0, 1]")


@dataclass(frozen=True)
class RunExportConfig:
    """`export`: what a finished run writes into RUN/export/ (GLB, OBJ, PLY, and the turntable). The
    `dreamfusion export` command has flags for everything else (texture size, faces, panels, ...)."""

    # A turntable, the shaded mesh beside its textureless shading: MP4 (H.264), GIF and a contact sheet.
    video: bool = True
    video_frames: int = 48
    video_size: int = 256  # of each panel
    video_fps: int = 24
    video_supersample: int = 1  # 2 is smoother and costs 3.5 s more on one core; `dreamfusion export` uses 2

    def __post_init__(self) -> None:
        if self.video_frames < 1 or self.video_fps < 1:
            raise ValueError("video_frames and video_fps must be >= 1")
        if self.video_size < 16 or self.video_size % 2:
            raise ValueError(f"video_size must be an even number >= 16, got {self.video_size}")
        if not 1 <= self.video_supersample <= 4:
            raise ValueError(f"video_supersample must be in [1, 4], got {self.video_supersample}")


@dataclass(frozen=True)
class Config:
    """Everything a run needs; written to the run folder as config.yaml."""

    prompt: PromptConfig = dataclasses.field(default_factory=PromptConfig)
    guidance: GuidanceConfig = dataclasses.field(default_factory=GuidanceConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    camera: CameraConfig = dataclasses.field(default_factory=CameraConfig)
    light: LightConfig = dataclasses.field(default_factory=LightConfig)
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    shading: ShadingConfig = dataclasses.field(default_factory=ShadingConfig)
    background: BackgroundConfig = dataclasses.field(default_factory=BackgroundConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    export: RunExportConfig = dataclasses.field(default_factory=RunExportConfig)
    refine: RefineConfig = dataclasses.field(default_factory=RefineConfig)

    @property
    def total_steps(self) -> int:
        """The NeRF steps and then the mesh stage's (refine.steps, 0 without one)."""
        return self.train.steps + self.refine.steps


CHECKPOINT_FORMAT = "step_{:07d}.safetensors"


def render_resolution(config: Config, guidance: Guidance) -> int:
    """train.resolution if set, else the size the guidance asks for (a pixel prior's own)."""
    return config.train.resolution or guidance.render_size


# ---- resolving a run's settings


def preset_overrides(name_or_path: str) -> dict[str, Any]:
    """The overrides in a packaged preset (dreamfusion/presets/NAME.yaml) or in a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return load_yaml_overrides(path)
    names = sorted(
        p.name[:-5] for p in resources.files("dreamfusion.presets").iterdir() if p.name.endswith(".yaml")
    )
    if name_or_path not in names:
        raise SettingsError(
            f"unknown preset {name_or_path!r}: use one of {', '.join(names)} or a path to a YAML file"
        )
    return load_yaml_overrides(
        resources.files("dreamfusion.presets").joinpath(f"{name_or_path}.yaml").read_text()
    )


def default_preset(guidance: str | None) -> str:
    """The backend's own preset (the built-in prior's tuned settings when none is named)."""
    return BACKENDS[guidance or "builtin"].preset


def resolve_config(
    settings: Mapping[str, Any], preset: str | None = None, overrides: Sequence[str] = ()
) -> Config:
    """Paper defaults <- preset <- `settings` (dotted keys, e.g. {"prompt.text": ..., "train.steps": ...};
    None values are left out) <- `overrides` ("key=value" strings), validated as one Config.

    A model to load without a guidance kind means a downloaded pixel prior. The prompt is checked here, not
    first in the Trainer, so that an empty one (also one given as an override) fails before the prior
    loads; a local model folder is made absolute, so that a resumed run finds it from any working folder."""
    settings = {k: v for k, v in settings.items() if v is not None}
    if "guidance.model" in settings and "guidance.kind" not in settings:
        settings["guidance.kind"] = "pixel"
    data = merge_dicts(
        to_dict(Config()), preset_overrides(preset or default_preset(settings.get("guidance.kind")))
    )
    for key, value in settings.items():
        section, name = key.split(".")
        data[section][name] = value
    config = apply_overrides(from_dict(Config, data), overrides)
    prompt = dataclasses.replace(config.prompt, text=validate_prompt(config.prompt.text))
    guidance = dataclasses.replace(config.guidance, model=absolute_if_local(config.guidance.model))
    return dataclasses.replace(config, prompt=prompt, guidance=guidance)


def absolute_if_local(model: str | None) -> str | None:
    """A local model folder as an absolute path; hub ids stay as typed (a folder of that name wins, as in
    diffusers)."""
    if model is None or not Path(model).expanduser().is_dir():
        return model
    return str(Path(model).expanduser().resolve())


# ---- reading a run folder back

# Settings renamed since runs were first written (issue #16 gave each field and backend its own section):
# an older config.yaml still loads.
RENAMED_KEYS = {
    ("field", "plane_resolution"): ("field", "triplane", "resolution"),
    ("field", "plane_channels"): ("field", "triplane", "channels"),
    **{
        ("field", f"hash_{name}"): ("field", "hashgrid", name)
        for name in ("levels", "features_per_level", "log2_table_size", "base_resolution", "max_resolution")
    },
    ("guidance", "attention_slicing"): ("guidance", "diffusers", "attention_slicing"),
    ("guidance", "cpu_offload"): ("guidance", "diffusers", "cpu_offload"),
    ("guidance", "target_shape"): ("guidance", "target", "shape"),
}


def migrate_keys(data: dict[str, Any]) -> dict[str, Any]:
    """`data` (a parsed config.yaml) with renamed keys moved to their new places, and the sections of field
    kinds the run does not use dropped: they were never read, and a later change to one of their defaults
    or checks must not make an old run folder unreadable."""
    field = data.get("field")
    if isinstance(field, dict):
        used = field.get("kind", FieldConfig.kind)
        for kind in field_kinds():
            if kind != used:
                field.pop(kind, None)
    for (section, old), new in RENAMED_KEYS.items():
        part = data.get(section)
        if isinstance(part, dict) and old in part:
            value = part.pop(old)
            for key in new[1:-1]:
                part = part.setdefault(key, {})
            part.setdefault(new[-1], value)
    return data


def read_run_config(run_dir: Path) -> Config:
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        if not run_dir.is_dir():
            raise RunFolderError(f"run folder {run_dir} does not exist")
        raise RunFolderError(f"{run_dir} is not a run folder: it has no config.yaml")
    # load_yaml_overrides reads YAML as dump_yaml writes it (1e-3 is a float) and reports errors in one line.
    return from_dict(Config, migrate_keys(load_yaml_overrides(config_path)))


def load_field(config: Config, checkpoint: Checkpoint, where: str) -> Field:
    """The field saved in `checkpoint`, built from `config`, on the CPU in eval mode. A checkpoint that does
    not fit the config is a UserError naming `where` (the run folder or checkpoint file)."""
    # The initial weights are overwritten; a fixed generator keeps the global RNG untouched.
    field = build_field(config.field, torch.Generator().manual_seed(0))
    try:
        field.load_state_dict(checkpoint.modules["field"])
    except (KeyError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunFolderError(
            f"the checkpoint in {where} does not match its config.yaml: {first_line}"
        ) from exc
    return field.eval()


def load_refined_mesh(checkpoint: Checkpoint) -> RefinedMesh | None:
    """The mesh of the mesh stage (`refine`), once a run has reached it; None before and without one."""
    state = checkpoint.modules.get("mesh")
    return RefinedMesh.from_state(state).eval() if state is not None else None


def load_latest(run_dir: Path) -> Checkpoint:
    path = latest_checkpoint(run_dir / "checkpoints")
    if path is None:
        raise RunFolderError(f"no checkpoint in {run_dir / 'checkpoints'}: nothing to resume")
    return load_checkpoint(path)
