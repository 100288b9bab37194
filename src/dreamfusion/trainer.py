"""The optimisation loop: one step is camera -> rays -> field -> shading -> image -> guidance -> gradient ->
optimiser (paper sec. 3, App. A.2). Read `Trainer.train_step` top to bottom to see all of it.

Optimiser: Adam rather than the paper's Distributed Shampoo, which PyTorch does not ship; Adam is what both
open implementations use, and separate learning rates for the feature grid and the MLPs matter more here
than the preconditioner. The learning rate follows the paper's shape: linear warm-up, then cosine decay.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from dreamfusion.background import BackgroundConfig, build_background
from dreamfusion.cameras import CameraConfig, orbit_cameras, sample_cameras
from dreamfusion.checkpoint import Checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint
from dreamfusion.config import dump_yaml, from_dict, load_yaml_overrides
from dreamfusion.errors import UserError
from dreamfusion.field import Field, FieldConfig, build_field
from dreamfusion.guidance import GuidanceConfig
from dreamfusion.guidance.base import Guidance, ViewBatch
from dreamfusion.guidance.embeddings import PromptEmbeddings
from dreamfusion.lights import LightConfig, sample_point_lights
from dreamfusion.losses import LossConfig, opacity_loss, orientation_loss
from dreamfusion.prompts import PromptConfig
from dreamfusion.renderer import render
from dreamfusion.run.log import append_record, prune_checkpoints, truncate_records
from dreamfusion.sampling import OccupancyGrid, SamplingConfig
from dreamfusion.schedules import LinearRamp, WarmupCosine
from dreamfusion.shading import ShadingConfig, ShadingMode, choose_shading
from dreamfusion.validation import grid_image, render_views, save_png_atomic


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


@dataclass(frozen=True)
class StepMetrics:
    step: int  # steps completed
    loss: float  # total: SDS surrogate 0.5 mean(grad^2) + weighted regularisers
    sds_grad_norm: float
    timestep: float  # mean t of the batch (integer timesteps)
    orientation: float
    opacity: float
    lr_scale: float
    occupied: float  # fraction of occupancy cells evaluated
    seconds: float


CHECKPOINT_FORMAT = "step_{:07d}.safetensors"


DEFAULT_RESOLUTION = 64


def render_resolution(config: Config, guidance: Guidance | None = None) -> int:
    """train.resolution if set; else a pixel prior's own (renders are what it denoises); else 64."""
    if config.train.resolution is not None:
        return config.train.resolution
    if guidance is not None and config.guidance.kind in ("builtin", "pixel"):
        return guidance.image_size
    return DEFAULT_RESOLUTION


class Trainer:
    def __init__(
        self,
        config: Config,
        run_dir: Path,
        guidance: Guidance,
        device: torch.device,
        text_cache_dir: Path | None,
    ):
        if config.train.resolution is None:
            train = dataclasses.replace(config.train, resolution=render_resolution(config, guidance))
            config = dataclasses.replace(config, train=train)
        self.config = config  # with train.resolution resolved: what config.yaml records
        self.run_dir = run_dir
        self.guidance = guidance
        self.device = device
        seed = config.train.seed
        init_rng = torch.Generator().manual_seed(seed)
        self.field = build_field(config.field, init_rng).to(device)
        self.background = build_background(config.background, init_rng).to(device)
        res = config.sampling.occupancy_resolution
        self.occupancy = OccupancyGrid(res, config.field.bound).to(device) if res > 0 else None
        groups = self.field.parameter_groups()
        o = config.optim
        self.optimizer = torch.optim.Adam(
            [
                {"params": groups["grid"], "lr": o.lr_grid, "name": "grid"},
                {"params": groups["mlp"], "lr": o.lr_mlp, "name": "mlp"},
                {"params": list(self.background.parameters()), "lr": o.lr_background, "name": "background"},
            ],
            betas=o.betas,
            eps=o.eps,
        )
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        steps = config.train.steps
        self.lr_schedule = WarmupCosine(steps, o.warmup_fraction, o.lr_start_ratio, o.lr_end_ratio)
        loss = config.loss
        self.orientation_weight = LinearRamp(
            steps, loss.orientation_weight_start, loss.orientation_weight, loss.orientation_ramp_fraction
        )
        # Cameras, lights, shading modes, sample jitter and background colours all draw from this generator.
        self.scene_rng = torch.Generator().manual_seed(seed + 1)
        self.prompts = PromptEmbeddings(config.prompt, guidance, text_cache_dir)
        self.step = 0
        self._stop_requested = False

    # -- one step -----------------------------------------------------------------------------------------
    def train_step(self) -> StepMetrics:
        cfg, step, rng = self.config, self.step, self.scene_rng
        started = time.perf_counter()
        if self.occupancy is not None and step % cfg.sampling.occupancy_update_every == 0:
            self.update_occupancy()

        cameras = sample_cameras(cfg.camera, cfg.train.batch_size, cfg.train.resolution, rng)
        lights = sample_point_lights(cameras.position, cfg.light, rng)
        modes = choose_shading(cfg.shading, step, cfg.train.steps, cfg.train.batch_size, rng)
        cameras = cameras.to(self.device)
        orientation_weight = self.orientation_weight(step)
        with_normals = bool((modes != ShadingMode.ALBEDO).any()) or orientation_weight > 0
        out = render(
            self.field,
            cameras,
            lambda d: self.background(d, rng),
            lights,
            modes,
            cfg.sampling,
            cfg.light.ambient,
            cfg.light.diffuse,
            with_normals,
            self.occupancy,
            rng,
        )
        images = out.image.permute(0, 3, 1, 2)  # (B, 3, H, W)

        text = self.prompts.for_cameras(cameras, self.device, torch.float32)
        views = ViewBatch(cameras, lights, modes, out.background.detach())
        guided = self.guidance(images, text, step, views)
        grad = guided.image_grad.to(images.dtype)
        # d(sds_surrogate)/d(images) = grad: the prior's Jacobian is skipped (paper eq. 3).
        sds_surrogate = (grad * images).sum()
        orient = (
            orientation_loss(out.weights, out.sample_normals, out.directions)
            if out.sample_normals is not None
            else images.new_zeros(())
        )
        opacity = opacity_loss(out.opacity)
        total = sds_surrogate + orientation_weight * orient + cfg.loss.opacity_weight * opacity

        lr_scale = self.lr_schedule(step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * lr_scale
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.step += 1

        orient, opacity = float(orient.detach()), float(opacity.detach())
        regularisers = orientation_weight * orient + cfg.loss.opacity_weight * opacity
        return StepMetrics(
            step=self.step,
            loss=0.5 * float(grad.square().mean()) + regularisers,
            sds_grad_norm=guided.grad_norm,
            timestep=float(guided.timesteps.float().mean()),
            orientation=orient,
            opacity=opacity,
            lr_scale=lr_scale,
            occupied=self.occupancy.occupied_fraction if self.occupancy is not None else 1.0,
            seconds=time.perf_counter() - started,
        )

    def update_occupancy(self) -> None:
        step_size = 2 * self.config.field.bound / self.config.sampling.samples_per_ray
        s = self.config.sampling
        self.occupancy.update(self.field.density, step_size, s.occupancy_decay, s.occupancy_threshold)

    # -- the loop -----------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Finish the current step, save a checkpoint and return (what Ctrl-C does)."""
        self._stop_requested = True

    def train(self, progress: bool = True, handle_sigint: bool = True) -> bool:
        """Run until config.train.steps. Returns True when finished, False when stopped early by request."""
        cfg = self.config.train
        previous_handler = None
        if handle_sigint:
            previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not progress, unit="step", dynamic_ncols=True)
        try:
            while self.step < cfg.steps:
                metrics = self.train_step()
                self._log(metrics)
                bar.update(1)
                bar.set_postfix(loss=f"{metrics.loss:.4g}", opacity=f"{metrics.opacity:.3f}", refresh=False)
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps or self._stop_requested:
                    self.save()
                if self.step % cfg.validation_every == 0 or self.step == cfg.steps:
                    self.validate()
                if self._stop_requested:
                    return False
            return True
        finally:
            bar.close()
            if handle_sigint:
                signal.signal(signal.SIGINT, previous_handler)

    def _on_sigint(self, signum, frame) -> None:
        if self._stop_requested:  # a second Ctrl-C stops at once, without a checkpoint
            raise KeyboardInterrupt
        tqdm.write("stopping after this step and saving a checkpoint (Ctrl-C again to abort without one)")
        self._stop_requested = True

    def _log(self, metrics: StepMetrics) -> None:
        append_record(self.run_dir / "metrics.jsonl", metrics.__dict__)

    def validate(self) -> Path:
        cfg = self.config
        cameras = orbit_cameras(cfg.train.validation_views, cfg.train.resolution).to(self.device)
        renders = render_views(self.field, self.background, cameras, cfg.sampling, cfg.light, self.occupancy)
        path = self.run_dir / "validation" / f"step_{self.step:07d}.png"
        path.parent.mkdir(exist_ok=True)
        save_png_atomic(grid_image(renders), path)
        return path

    # -- checkpoints --------------------------------------------------------------------------------------
    def save(self) -> Path:
        folder = self.run_dir / "checkpoints"
        folder.mkdir(exist_ok=True)
        modules = {"field": self.field.state_dict(), "background": self.background.state_dict()}
        if self.occupancy is not None:
            modules["occupancy"] = self.occupancy.state_dict()
        ckpt = Checkpoint(
            step=self.step,
            modules={k: {n: t.detach().cpu() for n, t in sd.items()} for k, sd in modules.items()},
            optimizer=self.optimizer.state_dict(),
            rng={"scene": self.scene_rng.get_state(), "guidance": self.guidance.rng_state().cpu()},
            meta={"config": dump_yaml(self.config), "prompt": self.config.prompt.text},
        )
        path = folder / CHECKPOINT_FORMAT.format(self.step)
        save_checkpoint(path, ckpt)
        prune_checkpoints(folder, self.config.train.keep_checkpoints)
        return path

    def restore(self, ckpt: Checkpoint) -> None:
        """Continue from a checkpoint of a run with this config. A mismatch is a user error, not a crash."""
        try:
            self.field.load_state_dict(ckpt.modules["field"])
            self.background.load_state_dict(ckpt.modules["background"])
            if self.occupancy is not None:
                self.occupancy.load_state_dict(ckpt.modules["occupancy"])
            self.optimizer.load_state_dict(ckpt.optimizer)
            self.scene_rng.set_state(ckpt.rng["scene"])
            self.guidance.set_rng_state(ckpt.rng["guidance"])
        except (KeyError, RuntimeError, ValueError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"checkpoint does not match this run's configuration: {first_line}") from exc
        self.step = ckpt.step
        truncate_records(self.run_dir / "metrics.jsonl", ckpt.step)


def read_run_config(run_dir: Path) -> Config:
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        if not run_dir.is_dir():
            raise UserError(f"run folder {run_dir} does not exist")
        raise UserError(f"{run_dir} is not a run folder: it has no config.yaml")
    # load_yaml_overrides reads YAML as dump_yaml writes it (1e-3 is a float) and reports errors in one line.
    return from_dict(Config, load_yaml_overrides(config_path))


def load_field(config: Config, checkpoint: Checkpoint, where: str) -> Field:
    """The field saved in `checkpoint`, built from `config`, on the CPU in eval mode. A checkpoint that does
    not fit the config is a UserError naming `where` (the run folder or checkpoint file)."""
    # The initial weights are overwritten; a fixed generator keeps the global RNG untouched.
    field = build_field(config.field, torch.Generator().manual_seed(0))
    try:
        field.load_state_dict(checkpoint.modules["field"])
    except (KeyError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"the checkpoint in {where} does not match its config.yaml: {first_line}") from exc
    return field.eval()


def load_latest(run_dir: Path) -> Checkpoint:
    path = latest_checkpoint(run_dir / "checkpoints")
    if path is None:
        raise UserError(f"no checkpoint in {run_dir / 'checkpoints'}: nothing to resume")
    return load_checkpoint(path)
