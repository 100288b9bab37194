"""The optimisation loop: one step is camera -> rays -> field -> shading -> image -> guidance -> gradient ->
optimiser (paper sec. 3, App. A.2). Read `Trainer.train_step` top to bottom to see all of it.

Optimiser: Adam rather than the paper's Distributed Shampoo, which PyTorch does not ship; Adam is what both
open implementations use, and separate learning rates for the feature grid and the MLPs matter more here
than the preconditioner. The learning rate follows the paper's shape: linear warm-up, then cosine decay.

With a `Shard` (one of several processes, dreamfusion.distributed) the trainer renders its rows of each
batch, the gradients are averaged over processes before Adam steps, and only rank 0 writes to the run folder.

A step whose loss or gradient is not finite (a NaN from the prior, an overflow) is skipped: the optimiser
does not step, so the field and Adam's moments stay as the last good step left them, and the step is
counted in metrics.jsonl (`skipped`). `train.max_skipped_steps` of them in a row stop the run with a
`DivergedError`, before anything is saved over its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from dreamfusion.checkpoint import Checkpoint, latest_checkpoint, save_checkpoint
from dreamfusion.config import dump_yaml
from dreamfusion.distributed import Shard
from dreamfusion.errors import UserError
from dreamfusion.fields import build_field
from dreamfusion.fields.mesh import extract_mesh
from dreamfusion.guidance.base import Guidance, ViewBatch
from dreamfusion.guidance.embeddings import PromptEmbeddings
from dreamfusion.refine.render import mesh_views, render_mesh
from dreamfusion.refine.stage import RefinedMesh
from dreamfusion.render.background import build_background
from dreamfusion.render.cameras import Cameras, orbit_cameras, sample_cameras
from dreamfusion.render.lights import sample_point_lights
from dreamfusion.render.renderer import RenderOutput, RenderSettings, render
from dreamfusion.render.sampling import OccupancyGrid
from dreamfusion.render.shading import ShadingMode, choose_shading
from dreamfusion.render.views import grid_image, render_views, save_png_atomic
from dreamfusion.run.config import CHECKPOINT_FORMAT, Config, load_refined_mesh, render_resolution
from dreamfusion.run.log import append_record, last_record, prune_checkpoints, truncate_records
from dreamfusion.training.losses import (
    distortion_loss,
    normal_smoothness_loss,
    opacity_loss,
    orientation_loss,
)
from dreamfusion.training.schedules import LinearRamp, WarmupCosine


class DivergedError(UserError):
    """Training produced non-finite losses or gradients for `train.max_skipped_steps` steps in a row."""


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
    skipped: int = 0  # steps of this run so far whose loss or gradient was not finite (this one included)
    mesh_smoothness: float | None = None  # the mesh stage's Laplacian term (refine), None in the NeRF stage


class Trainer:
    def __init__(
        self,
        config: Config,
        run_dir: Path,
        guidance: Guidance,
        device: torch.device,
        text_cache_dir: Path | None,
        shard: Shard | None = None,
    ):
        if config.train.resolution is None:
            train = dataclasses.replace(config.train, resolution=render_resolution(config, guidance))
            config = dataclasses.replace(config, train=train)
        self.config = config  # with train.resolution resolved: what config.yaml records
        self.run_dir = run_dir
        self.guidance = guidance
        self.device = device
        self.shard = shard
        self.is_main = shard is None or shard.is_main  # the process that writes to run_dir
        if shard is not None:
            guidance.use_shard(shard)
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
        self.prompts = PromptEmbeddings(
            config.prompt, guidance, text_cache_dir, perp_neg=config.guidance.sds.perp_neg
        )
        self.mesh: RefinedMesh | None = None  # the mesh stage's, from its first step on (refine.steps)
        self.mesh_optimizer: torch.optim.Optimizer | None = None
        self.step = 0
        self.skipped_steps = 0  # in this run, counted across resumes from metrics.jsonl
        self.skipped_in_a_row = 0
        self._stop_requested = False

    # -- one step -----------------------------------------------------------------------------------------
    def train_step(self) -> StepMetrics:
        cfg, step, rng = self.config, self.step, self.scene_rng
        started = time.perf_counter()
        self.field.anneal(step / max(cfg.train.steps, 1))
        if self.occupancy is not None and step % cfg.sampling.occupancy_update_every == 0:
            self.update_occupancy()

        cameras = sample_cameras(cfg.camera, cfg.train.batch_size, cfg.train.resolution, rng)
        lights = sample_point_lights(cameras.position, cfg.light, rng)
        modes = choose_shading(cfg.shading, step, cfg.train.steps, cfg.train.batch_size, rng)
        shard = self.shard
        if shard is not None:  # every process drew the whole batch; each keeps its own views
            n = cfg.train.batch_size // shard.world
            cameras = cameras.rows(shard.rank * n, (shard.rank + 1) * n)
            lights, modes = shard.take(lights), shard.take(modes)
        cameras = cameras.to(self.device)
        orientation_weight = self.orientation_weight(step)
        with_normals = bool((modes != ShadingMode.ALBEDO).any()) or orientation_weight > 0
        out = render(
            self.field,
            cameras,
            RenderSettings.of(cfg.sampling, cfg.light, with_normals),
            background=lambda d: self.background(d, rng, shard),
            lights=lights,
            modes=modes,
            occupancy=self.occupancy,
            generator=rng,
            shard=shard,
        )
        images = out.image.permute(0, 3, 1, 2)  # (B, 3, H, W)

        text = self.prompts.for_cameras(cameras, self.device, torch.float32)
        views = ViewBatch(cameras, lights, modes, out.background.detach())
        guided = self.guidance(images, text, step, views)
        grad = guided.image_grad.to(images.dtype)
        # d(sds_surrogate)/d(images) = grad: the prior's Jacobian is skipped (paper eq. 3).
        # The SDS term sums over the batch's views: with N processes each holds 1/N of them, and the
        # gradients are averaged, so each scales its share by N (the regularisers are means already).
        sds_surrogate = (grad * images).sum() * (shard.world if shard is not None else 1)
        orient = (
            orientation_loss(out.weights, out.sample_normals, out.directions)
            if out.sample_normals is not None
            else images.new_zeros(())
        )
        opacity = opacity_loss(out.opacity)
        total = sds_surrogate + orientation_weight * orient + cfg.loss.opacity_weight * opacity
        # The options outside the paper, each (weight, term); none of them in the paper preset.
        extras = []
        if cfg.loss.smoothness_weight > 0 and (smoothness := self.field.smoothness()) is not None:
            extras.append((cfg.loss.smoothness_weight, smoothness))
        if out.eikonal is not None:
            extras.append((cfg.loss.eikonal_weight, out.eikonal))
        if cfg.loss.distortion_weight > 0:
            extras.append(
                (cfg.loss.distortion_weight, distortion_loss(out.weights, out.distances, out.deltas))
            )
        if cfg.loss.normal_smoothness_weight > 0:
            extras.append((cfg.loss.normal_smoothness_weight, self.normal_smoothness(out, cameras, rng)))
        for weight, term in extras:
            total = total + weight * term

        lr_scale = self.lr_schedule(step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * lr_scale
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        orient, opacity = float(orient.detach()), float(opacity.detach())
        sds_square, grad_norm, timestep = float(grad.square().mean()), guided.grad_norm, guided.timesteps
        timestep = float(timestep.float().mean())
        extra_terms = [float(term.detach()) for _, term in extras]
        loss_value = total.detach()
        if shard is not None:
            shard.average_gradients(self._parameters())
            # The step's figures over the whole batch: means of the processes' means (equal shares), and
            # the norm from the sum of squared norms. A non-finite loss anywhere makes the sum non-finite.
            local = [float(loss_value), sds_square, grad_norm**2, timestep, orient, opacity, *extra_terms]
            summed = shard.sum(torch.tensor(local, dtype=torch.float64, device=self.device)).tolist()
            loss_value = torch.tensor(summed[0])
            sds_square, grad_norm = summed[1] / shard.world, math.sqrt(summed[2])
            timestep, orient, opacity = (v / shard.world for v in summed[3:6])
            extra_terms = [v / shard.world for v in summed[6:]]
        self._apply_if_finite(self.optimizer, loss_value)
        self.step += 1

        regularisers = orientation_weight * orient + cfg.loss.opacity_weight * opacity
        regularisers += sum(weight * term for (weight, _), term in zip(extras, extra_terms, strict=True))
        return StepMetrics(
            step=self.step,
            loss=0.5 * sds_square + regularisers,
            sds_grad_norm=grad_norm,
            timestep=timestep,
            orientation=orient,
            opacity=opacity,
            lr_scale=lr_scale,
            occupied=self.occupancy.occupied_fraction if self.occupancy is not None else 1.0,
            seconds=time.perf_counter() - started,
            skipped=self.skipped_steps,
        )

    def normal_smoothness(self, out: RenderOutput, cameras: Cameras, rng: torch.Generator) -> torch.Tensor:
        """`loss.normal_smoothness_weight`'s term at each ray's expected surface point (its depth), over the
        rays at least half opaque, weighted by their opacity. The points are fixed: the term shapes the
        normals around the surface, not where the surface is."""
        radius = self.config.loss.normal_smoothness_radius
        shape = (out.depth.numel(), 3)
        # a draw of the same size in every process (the whole batch's, sliced), so the rng stays in step
        shard = self.shard
        draw = shard.randn(shape, rng, torch.float32) if shard else torch.randn(shape, generator=rng)
        offsets = torch.nn.functional.normalize(draw.to(out.depth.device), dim=-1) * radius
        with torch.no_grad():
            origins = cameras.position.view(-1, 1, 1, 3)
            points = (origins + out.depth[..., None] * out.directions).reshape(-1, 3)
            weights = out.opacity.reshape(-1)
            keep = (weights > 0.5).nonzero().squeeze(-1)
        if keep.numel() == 0:
            return out.depth.new_zeros(())
        both = torch.cat([points[keep], points[keep] + offsets[keep]])  # one field call for both sets
        normals, neighbours = self.field(both, with_normals=True).normals.chunk(2)
        return normal_smoothness_loss(normals, neighbours, weights[keep])

    # -- the mesh stage ---------------------------------------------------------------------------------
    def start_mesh_stage(self) -> None:
        """The field's surface as the mesh export would write it, with an offset per vertex to optimise."""
        with torch.no_grad():
            extracted = extract_mesh(self.field.eval())
        cell = 2.0 * float(self.field.bound) / extracted.resolution
        mesh = RefinedMesh.from_trimesh(extracted.mesh, cell, extracted.threshold)
        self.start_mesh_optimizer(mesh.to(self.device))

    def start_mesh_optimizer(self, mesh: RefinedMesh) -> None:
        self.mesh = mesh
        self.mesh_optimizer = torch.optim.Adam(
            [mesh.offsets], lr=self.config.refine.lr, betas=self.config.optim.betas
        )
        self.field.requires_grad_(False)

    def refine_step(self) -> StepMetrics:
        """One step of the mesh stage: the same cameras, lights, shading and guidance as `train_step`, the
        mesh rendered by the rasteriser instead of the field by volume rendering."""
        cfg, step, rng, refine = self.config, self.step, self.scene_rng, self.config.refine
        started = time.perf_counter()
        if self.mesh is None:
            self.start_mesh_stage()
        cameras = sample_cameras(cfg.camera, cfg.train.batch_size, cfg.train.resolution, rng)
        lights = sample_point_lights(cameras.position, cfg.light, rng)
        modes = choose_shading(cfg.shading, step, cfg.train.steps, cfg.train.batch_size, rng)
        shard = self.shard
        if shard is not None:
            n = cfg.train.batch_size // shard.world
            cameras = cameras.rows(shard.rank * n, (shard.rank + 1) * n)
            lights, modes = shard.take(lights), shard.take(modes)
        cameras = cameras.to(self.device)
        out = render_mesh(
            self.mesh.vertices,
            self.mesh.faces,
            cameras,
            albedo=lambda points: self.field(points).albedo,
            background=lambda d: self.background(d, rng, shard),
            lights=lights.to(self.device),
            modes=modes.to(self.device),
            ambient=cfg.light.ambient,
            diffuse=cfg.light.diffuse,
            supersample=refine.supersample,
        )
        images = out.image.permute(0, 3, 1, 2)
        text = self.prompts.for_cameras(cameras, self.device, torch.float32)
        guided = self.guidance(images, text, step, ViewBatch(cameras, lights, modes, out.background.detach()))
        grad = guided.image_grad.to(images.dtype)
        sds_surrogate = (grad * images).sum() * (shard.world if shard is not None else 1)
        smoothness = self.mesh.smoothness()
        regularisers = refine.laplacian_weight * smoothness + refine.anchor_weight * self.mesh.displacement()
        total = sds_surrogate + regularisers

        progress = (step - cfg.train.steps) / max(refine.steps, 1)
        lr_scale = refine.lr_end_ratio + (1 - refine.lr_end_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in self.mesh_optimizer.param_groups:
            group["lr"] = refine.lr * lr_scale
        self.mesh_optimizer.zero_grad(set_to_none=True)
        total.backward()
        sds_square, grad_norm = float(grad.square().mean()), guided.grad_norm
        timestep, smooth, loss_value = (
            float(guided.timesteps.float().mean()),
            float(smoothness.detach()),
            total.detach(),
        )
        opacity = float(out.opacity.detach().mean())
        if shard is not None:
            shard.average_gradients([self.mesh.offsets])
            local = [float(loss_value), sds_square, grad_norm**2, timestep, opacity]
            summed = shard.sum(torch.tensor(local, dtype=torch.float64, device=self.device)).tolist()
            loss_value = torch.tensor(summed[0])
            sds_square, grad_norm = summed[1] / shard.world, math.sqrt(summed[2])
            timestep, opacity = summed[3] / shard.world, summed[4] / shard.world
        self._apply_if_finite(self.mesh_optimizer, loss_value)
        self.step += 1
        return StepMetrics(
            step=self.step,
            loss=0.5 * sds_square + float(regularisers.detach()),
            sds_grad_norm=grad_norm,
            timestep=timestep,
            orientation=0.0,
            opacity=opacity,
            lr_scale=lr_scale,
            occupied=1.0,
            seconds=time.perf_counter() - started,
            skipped=self.skipped_steps,
            mesh_smoothness=smooth,
        )

    def _apply_if_finite(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        """Step `optimizer` if the loss and its gradients are finite; else skip and count the step."""
        if self._finite(loss, optimizer):
            optimizer.step()
            self.skipped_in_a_row = 0
        else:  # the parameters and Adam's moments stay as the last good step left them
            optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self.skipped_in_a_row += 1

    def _parameters(self) -> list[torch.nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def _finite(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> bool:
        """Whether the loss and every gradient of `optimizer`'s parameters are finite (one norm over all
        gradients: inf or NaN anywhere makes it non-finite)."""
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else loss.new_zeros(())
        return bool(torch.isfinite(loss) & torch.isfinite(norm))

    def update_occupancy(self) -> None:
        step_size = 2 * self.config.field.bound / self.config.sampling.samples_per_ray
        s = self.config.sampling
        self.occupancy.update(self.field.density, step_size, s.occupancy_decay, s.occupancy_threshold)

    # -- the loop -----------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Finish the current step, save a checkpoint and return (what Ctrl-C does)."""
        self._stop_requested = True

    def train(
        self,
        progress: bool = True,
        handle_sigint: bool = True,
        on_step: Callable[[StepMetrics, Path | None], None] | None = None,
    ) -> bool:
        """Run until config.total_steps (the NeRF steps, then the mesh stage's). Returns True when finished,
        False when stopped early by request.
        `on_step(metrics, grid)` is called after every step, with the validation grid's path when that step
        wrote one; it may call `request_stop()`. Of several processes only rank 0 logs, saves, validates
        and calls `on_step`; a stop asked for on any of them stops all after the same step."""
        cfg = self.config.train
        previous_handler = None
        if handle_sigint:
            previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
        main = self.is_main
        total = self.config.total_steps
        bar = tqdm(
            total=total,
            initial=self.step,
            disable=not (progress and main),
            unit="step",
            dynamic_ncols=True,
        )
        try:
            while self.step < total:
                metrics = self.train_step() if self.step < cfg.steps else self.refine_step()
                if main:
                    self._log(metrics)
                if self.skipped_in_a_row >= cfg.max_skipped_steps:
                    raise DivergedError(self._diverged_message())
                bar.update(1)
                bar.set_postfix(loss=f"{metrics.loss:.4g}", opacity=f"{metrics.opacity:.3f}", refresh=False)
                stage_end = self.step in (cfg.steps, total)
                due = self.step % cfg.checkpoint_every == 0 or stage_end
                saved = main and (due or self._stop_requested)
                if saved:
                    self.save()
                grid = None
                if main and (self.step % cfg.validation_every == 0 or stage_end):
                    grid = self.validate()
                if main and on_step is not None:
                    on_step(metrics, grid)
                stop = self._stop_requested
                if self.shard is not None:
                    stop = self.shard.any(stop, self.device)
                if stop:
                    if main and not saved:  # the stop was asked for by on_step (the API's stop flag)
                        self.save()
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
        # A non-finite figure is written as null: NaN is not JSON.
        record = {
            k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in vars(metrics).items()
        }
        append_record(self.run_dir / "metrics.jsonl", record)

    def _diverged_message(self) -> str:
        saved = latest_checkpoint(self.run_dir / "checkpoints")
        kept = f"its last checkpoint, {saved.name}, is kept" if saved else "no checkpoint had been saved yet"
        return (
            f"training diverged: {self.skipped_in_a_row} steps in a row up to step {self.step} had a "
            f"non-finite loss or gradient and were skipped; {kept} (lower optim.lr_grid or try another seed)"
        )

    def validate(self) -> Path:
        cfg = self.config
        cameras = orbit_cameras(cfg.train.validation_views, cfg.train.resolution).to(self.device)
        if self.mesh is not None:
            albedo = lambda points: self.field(points).albedo  # noqa: E731
            renders = mesh_views(self.mesh.vertices, self.mesh.faces, albedo, cameras, cfg.light)
        else:
            renders = render_views(
                self.field, self.background, cameras, cfg.sampling, cfg.light, self.occupancy
            )
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
        optimizer = self.optimizer
        if self.mesh is not None:  # in the mesh stage the field is frozen: its Adam state is not needed
            modules["mesh"] = self.mesh.state_dict()
            optimizer = self.mesh_optimizer
        ckpt = Checkpoint(
            step=self.step,
            modules={k: {n: t.detach().cpu() for n, t in sd.items()} for k, sd in modules.items()},
            optimizer=optimizer.state_dict(),
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
            mesh = load_refined_mesh(ckpt)
            if mesh is not None:  # a checkpoint of the mesh stage
                self.start_mesh_optimizer(mesh.train().to(self.device))
                self.mesh_optimizer.load_state_dict(ckpt.optimizer)
            else:
                self.optimizer.load_state_dict(ckpt.optimizer)
            self.scene_rng.set_state(ckpt.rng["scene"])
            self.guidance.set_rng_state(ckpt.rng["guidance"])
        except (KeyError, RuntimeError, ValueError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"checkpoint does not match this run's configuration: {first_line}") from exc
        self.step = ckpt.step
        if not self.is_main:  # the run folder is rank 0's
            return
        truncate_records(self.run_dir / "metrics.jsonl", ckpt.step)
        self.skipped_steps = int((last_record(self.run_dir / "metrics.jsonl") or {}).get("skipped") or 0)
