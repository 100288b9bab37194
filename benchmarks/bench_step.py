"""Milliseconds per optimisation step, split by phase, and peak memory, for a few diffusion priors on the CPU.

One step of `Trainer.train_step` is: sample cameras, lights and shading modes -> render (the field's forward,
normals included) -> guidance (the prior's SDS gradient w.r.t. the image) -> losses and backward through the
renderer -> Adam. This script replays that step with the same public functions and a timer around each
phase:

- render:    the render forward *without* normals (albedo-only shading): rays, samples, field, compositing;
- normals:   what a render with normals and the step's shading costs on top of that (the same cameras,
             lights and sample jitter are rendered both ways; normals = with - without);
- guidance:  text embeddings for the views plus the guidance call (resize / VAE encode, U-Net, pull-back);
             "(U-Net)" is the part of it spent inside the U-Net's forward;
- backward:  the SDS surrogate and regularisers, then `backward()` through the renderer and field;
- optimiser: the learning-rate schedule, `zero_grad` and `Adam.step`;
- grid:      the occupancy-grid refresh, which runs every `sampling.occupancy_update_every` steps; shown
             amortised per step.

`total` is the median over steps of render + normals + guidance + backward + optimiser, plus the amortised
grid. `train_step` times the real `Trainer.train_step` end to end on the same trainer, as a cross-check of
the replay. Peak RSS is the process high-water mark, so every case runs in a fresh subprocess (model loading
included).

The priors have random weights (dreamfusion.testing.tiny_models): their gradients are meaningless, their
cost is not. Settings are the paper defaults of `Config()` (64x64 renders, 64 samples per ray, occupancy
grid, fp32 on the CPU); the trainer starts at step 2000, past the albedo-only warm-up, so shading uses
normals.

    .venv/bin/python benchmarks/bench_step.py                       # all cases, ~5-10 minutes on 2 cores
    .venv/bin/python benchmarks/bench_step.py --cases pixel-tiny,sd-tiny --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from dreamfusion.config import apply_overrides, from_dict, merge_dicts, to_dict
from dreamfusion.device import machine_facts
from dreamfusion.guidance import build_guidance
from dreamfusion.guidance.base import ViewBatch
from dreamfusion.guidance.embeddings import default_cache_dir
from dreamfusion.render.cameras import sample_cameras
from dreamfusion.render.lights import sample_point_lights
from dreamfusion.render.renderer import RenderSettings, render
from dreamfusion.render.shading import ShadingMode, choose_shading
from dreamfusion.run.config import Config, preset_overrides
from dreamfusion.testing.tiny_models import (
    save_tiny_pixel_diffusion,
    save_tiny_stable_diffusion,
    stable_diffusion_15_unet_config,
)
from dreamfusion.training.losses import opacity_loss, orientation_loss
from dreamfusion.training.trainer import Trainer

CPU = torch.device("cpu")
PROMPT = "a photo of a cute dog"
WORLD_PROMPT = "a red cube"  # the built-in prior knows only its world's words
# Past the albedo-only warm-up (1,000 of 15,000 steps) so shading uses normals; inside the lr warm-up; and a
# multiple of the occupancy refresh interval, so the grid is refreshed during the untimed warm-up steps.
START_STEP = 2000
PHASES = ("render", "normals", "guidance", "unet", "backward", "optimiser")
DEFAULT_OUT = Path(__file__).parent / "results" / "bench_step.json"


# ---------------------------------------------------------------------------------------------------------
# Cases: a prior written to a folder in its diffusers layout, and the config overrides that use it.


def build_pixel_tiny(folder: Path) -> None:
    save_tiny_pixel_diffusion(folder, seed=0, image_size=64, text_encoder="t5")


def build_sd_tiny(folder: Path) -> None:
    # The test default: a 64x64 image through a four-level VAE to 8x8 latents.
    save_tiny_stable_diffusion(folder, seed=0, sample_size=8, vae_levels=4)


def build_sd_tiny_latent64(folder: Path) -> None:
    # One VAE level: a 64x64 render encodes straight to 64x64 latents, the latent size real SD denoises.
    save_tiny_stable_diffusion(folder, seed=0, sample_size=64, vae_levels=1)


def build_sd15_unet(folder: Path) -> None:
    """The tiny SD folder with 64x64 latents, its U-Net replaced by a random SD-1.5-sized one (859.5M
    parameters) and its text encoder widened to the 768 features that U-Net cross-attends to. The VAE stays
    tiny: the U-Net is what is measured (real SD would also upsample to 512 px and run its 34M-parameter
    encoder there, with gradient)."""
    save_tiny_stable_diffusion(folder, seed=0, sample_size=64, vae_levels=1)
    torch.manual_seed(0)
    text_config = CLIPTextConfig.from_pretrained(folder / "text_encoder")
    text_config.update({"hidden_size": 768, "num_attention_heads": 12, "projection_dim": 768})
    CLIPTextModel(text_config).eval().save_pretrained(folder / "text_encoder")
    UNet2DConditionModel(**stable_diffusion_15_unet_config()).save_pretrained(folder / "unet")


def build_nothing(folder: Path) -> None:
    """The built-in prior ships inside the package: there is no folder to write."""
    folder.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    guidance_kind: str
    build: Callable[[Path], None]
    heavy: bool = False  # seconds per step: runs --heavy-steps / --heavy-warmup instead
    # None: the paper's Config() at a 64x64 render; a preset name: that preset as `generate` applies it,
    # the render at the prior's own resolution, the prompt a world caption.
    preset: str | None = None

    def config(self, model_folder: Path) -> Config:
        if self.preset is not None:
            data = merge_dicts(to_dict(Config()), preset_overrides(self.preset))
            return apply_overrides(from_dict(Config, data), [f"prompt.text={WORLD_PROMPT}"])
        # The paper's 64x64 render for every other case; left unset, the render would follow each pixel
        # prior's own resolution.
        return apply_overrides(Config(), ["train.resolution=64", *self.overrides(model_folder)])

    def overrides(self, model_folder: Path) -> list[str]:
        if self.preset is not None:
            return [f"preset={self.preset}", f"prompt.text={WORLD_PROMPT}"]
        return [
            f"prompt.text={PROMPT}",
            f"guidance.kind={self.guidance_kind}",
            f"guidance.model={model_folder}",
            "guidance.precision=fp32",
        ]


CASES = {
    case.name: case
    for case in (
        Case(
            "builtin",
            "the default preset: the shipped built-in prior at its own 32x32 (what `generate` runs)",
            "builtin",
            build_nothing,
            preset="builtin",
        ),
        Case("pixel-tiny", "tiny IF-layout pixel prior, 64x64 pixels, T5 text", "pixel", build_pixel_tiny),
        Case(
            "sd-tiny", "tiny SD-layout prior, 64x64 render -> 8x8 latents", "stable-diffusion", build_sd_tiny
        ),
        Case(
            "sd-tiny-latent64",
            "tiny SD-layout prior, 64x64 render -> 64x64 latents (the stable-dreamfusion comparison)",
            "stable-diffusion",
            build_sd_tiny_latent64,
        ),
        Case(
            "sd15-unet",
            "SD-1.5-sized U-Net (859.5M params, random), 64x64 render -> 64x64 latents, tiny VAE",
            "stable-diffusion",
            build_sd15_unet,
            heavy=True,
        ),
    )
}


# ---------------------------------------------------------------------------------------------------------
# Timing one case (runs in its own process).


class UNetClock:
    """Accumulates the wall time spent in a module's forward, through forward hooks."""

    def __init__(self, module: torch.nn.Module):
        self.seconds = 0.0
        self._started = 0.0
        module.register_forward_pre_hook(self._start)
        module.register_forward_hook(self._stop)

    def _start(self, *_: object) -> None:
        self._started = time.perf_counter()

    def _stop(self, *_: object) -> None:
        self.seconds += time.perf_counter() - self._started


class PointCounter:
    """How many points the field evaluated in its last forward: what the occupancy grid let through."""

    def __init__(self, module: torch.nn.Module):
        self.points = 0
        module.register_forward_pre_hook(self._count)

    def _count(self, _module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self.points = int(args[0].shape[0])


def phased_step(trainer: Trainer, unet: UNetClock) -> dict[str, float]:
    """`Trainer.train_step`, statement for statement, with a timer per phase. Returns seconds per phase."""
    cfg, step, rng = trainer.config, trainer.step, trainer.scene_rng
    if trainer.occupancy is not None and step % cfg.sampling.occupancy_update_every == 0:
        trainer.update_occupancy()  # timed separately and amortised (`time_grid_update`)

    cameras = sample_cameras(cfg.camera, cfg.train.batch_size, cfg.train.resolution, rng)
    lights = sample_point_lights(cameras.position, cfg.light, rng)
    modes = choose_shading(cfg.shading, step, cfg.train.steps, cfg.train.batch_size, rng)
    cameras = cameras.to(trainer.device)
    orientation_weight = trainer.orientation_weight(step)
    with_normals = bool((modes != ShadingMode.ALBEDO).any()) or orientation_weight > 0

    # The same render without normals, from a copy of the generator: identical samples and background, and
    # the trainer's random stream is left exactly as train_step would leave it. Built with grad like the real
    # one, then dropped.
    probe_rng = torch.Generator().set_state(rng.get_state())
    t0 = time.perf_counter()
    render(
        trainer.field,
        cameras,
        RenderSettings.of(cfg.sampling, cfg.light),
        background=lambda d: trainer.background(d, probe_rng),
        lights=lights,
        modes=torch.full_like(modes, int(ShadingMode.ALBEDO)),
        occupancy=trainer.occupancy,
        generator=probe_rng,
    )
    t1 = time.perf_counter()
    out = render(
        trainer.field,
        cameras,
        RenderSettings.of(cfg.sampling, cfg.light, with_normals),
        background=lambda d: trainer.background(d, rng),
        lights=lights,
        modes=modes,
        occupancy=trainer.occupancy,
        generator=rng,
    )
    images = out.image.permute(0, 3, 1, 2)
    t2 = time.perf_counter()

    unet_before = unet.seconds
    text = trainer.prompts.for_cameras(cameras, trainer.device, torch.float32)
    views = ViewBatch(cameras, lights, modes, out.background.detach())
    guided = trainer.guidance(images, text, step, views)
    grad = guided.image_grad.to(images.dtype)
    t3 = time.perf_counter()

    sds_surrogate = (grad * images).sum()
    orient = (
        orientation_loss(out.weights, out.sample_normals, out.directions)
        if out.sample_normals is not None
        else images.new_zeros(())
    )
    opacity = opacity_loss(out.opacity)
    total = sds_surrogate + orientation_weight * orient + cfg.loss.opacity_weight * opacity
    t4 = time.perf_counter()

    lr_scale = trainer.lr_schedule(step)
    for group, base in zip(trainer.optimizer.param_groups, trainer.base_lrs, strict=True):
        group["lr"] = base * lr_scale
    trainer.optimizer.zero_grad(set_to_none=True)
    t5 = time.perf_counter()
    total.backward()
    t6 = time.perf_counter()
    trainer.optimizer.step()
    trainer.step += 1
    t7 = time.perf_counter()
    return {
        "render": t1 - t0,
        "normals": (t2 - t1) - (t1 - t0),
        "guidance": t3 - t2,
        "unet": unet.seconds - unet_before,
        "backward": (t4 - t3) + (t6 - t5),
        "optimiser": (t5 - t4) + (t7 - t6),
    }


def time_grid_update(trainer: Trainer, repeats: int = 3) -> float:
    """Median seconds of one occupancy-grid refresh."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        trainer.update_occupancy()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run_case(case: Case, model_folder: Path, steps: int, warmup: int) -> dict[str, object]:
    """Build the trainer as the CLI does, warm up with real steps, then time the replay and train_step."""
    started = time.perf_counter()
    overrides = case.overrides(model_folder)
    config = case.config(model_folder)
    guidance = build_guidance(config.guidance, CPU, 0, config.sampling, config.light, config.train.resolution)
    # train_step writes nothing to the run folder; the checkpoint and validation code that do are not run.
    run_dir = model_folder.with_name(f"{model_folder.name}-run")
    trainer = Trainer(config, run_dir, guidance, CPU, default_cache_dir())
    config = trainer.config  # with the render resolution the prior decided
    setup_s = time.perf_counter() - started
    unet = UNetClock(guidance.unet)
    points = PointCounter(trainer.field)
    trainer.step = START_STEP

    for _ in range(warmup):
        trainer.train_step()
    phases: dict[str, list[float]] = {name: [] for name in PHASES}
    field_points: list[int] = []
    train_step_ms = []
    # Replay and real step alternate, so that a change in the machine's load hits both alike.
    for _ in range(steps):
        for name, seconds in phased_step(trainer, unet).items():
            phases[name].append(seconds * 1e3)
        field_points.append(points.points)
        t = time.perf_counter()
        trainer.train_step()
        train_step_ms.append((time.perf_counter() - t) * 1e3)
    grid_ms = time_grid_update(trainer) * 1e3 / config.sampling.occupancy_update_every

    summed = ("render", "normals", "guidance", "backward", "optimiser")
    step_totals = [sum(phases[name][i] for name in summed) for i in range(steps)]
    medians = {name: statistics.median(values) for name, values in phases.items()}
    medians |= {
        "grid": grid_ms,
        "total": statistics.median(step_totals) + grid_ms,
        "train_step": statistics.median(train_step_ms),
    }
    return {
        "case": case.name,
        "description": case.description,
        "overrides": [o for o in overrides if not o.startswith("guidance.model=")],
        "config": {
            "resolution": config.train.resolution,
            "batch_size": config.train.batch_size,
            "samples_per_ray": config.sampling.samples_per_ray,
            "occupancy_resolution": config.sampling.occupancy_resolution,
            "field": config.field.kind,
            "prior_image_size": guidance.image_size,
            "unet_parameters": sum(p.numel() for p in guidance.unet.parameters()),
            "dtype": str(guidance.dtype),
            "start_step": START_STEP,
            "warmup_steps": warmup,
            "timed_steps": steps,
        },
        "setup_s": setup_s,
        "field_points_median": statistics.median(field_points),
        "occupied_fraction": trainer.occupancy.occupied_fraction if trainer.occupancy is not None else 1.0,
        "median_ms": medians,
        "per_step_ms": phases | {"train_step": train_step_ms},
        # ru_maxrss is in KiB on Linux (bytes on macOS).
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        / (1024 * 1024 if sys.platform == "darwin" else 1024),
    }


# ---------------------------------------------------------------------------------------------------------
# The driver: one subprocess to write each model folder, one to measure it.


def run_self(args: list[str], env: dict[str, str] | None = None) -> None:
    subprocess.run([sys.executable, __file__, *args], check=True, env=env)


def markdown_table(results: list[dict[str, object]]) -> str:
    columns = (
        "render",
        "normals",
        "guidance",
        "unet",
        "backward",
        "optimiser",
        "grid",
        "total",
        "train_step",
    )
    header = (
        "| case | steps | render | normals | guidance | (U-Net) | backward | optimiser | grid | total "
        "| train_step | field pts | peak RSS MB |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        medians = r["median_ms"]
        cells = [str(r["case"]), str(r["config"]["timed_steps"])]
        cells += [f"{medians[c]:.1f}" for c in columns]
        cells += [f"{r['field_points_median']:.0f}", f"{r['peak_rss_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    parser.add_argument("--heavy-steps", type=int, default=3, help="timed steps for the SD-1.5-sized U-Net")
    parser.add_argument(
        "--heavy-warmup", type=int, default=1, help="warm-up steps for the SD-1.5-sized U-Net"
    )
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list of: {', '.join(CASES)}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads; 0 keeps torch's default (one per core). On a machine shared with other "
        "jobs, 1 gives far steadier numbers: a descheduled OpenMP thread stalls every parallel op",
    )
    # Internal: the driver re-invokes this script for each case, so each gets its own peak RSS.
    parser.add_argument("--build", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.build:
        CASES[args.build].build(args.model_dir)
        return
    if args.case:
        case = CASES[args.case]
        steps, warmup = (args.heavy_steps, args.heavy_warmup) if case.heavy else (args.steps, args.warmup)
        result = run_case(case, args.model_dir, steps, warmup)
        args.json_out.write_text(json.dumps(result))
        return

    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    # Before the cases, so that its load average is the machine's, not ours. torch_threads is as set by
    # --threads, in every case's process too.
    machine = {**machine_facts(), "torch_interop_threads": torch.get_num_interop_threads()}
    began = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_step_") as tmp:
        # Never the network, and a text-embedding cache of our own; the subprocesses inherit both. The
        # built-in prior's case keeps the user's cache, where its tokenizer was assembled once from a wheel.
        user_cache = {**os.environ, "HF_HUB_OFFLINE": "1"}
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["DREAMFUSION_CACHE"] = str(Path(tmp) / "cache")
        for name in names:
            model_dir, json_out = Path(tmp) / name, Path(tmp) / f"{name}.json"
            print(f"[{name}] writing the model folder ...", file=sys.stderr, flush=True)
            # A process of its own, so that this driver never holds an 860M-parameter U-Net in memory.
            run_self(["--build", name, "--model-dir", str(model_dir)])
            print(f"[{name}] timing ...", file=sys.stderr, flush=True)
            passed = [
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--threads",
                str(args.threads),
            ]
            passed += ["--heavy-steps", str(args.heavy_steps), "--heavy-warmup", str(args.heavy_warmup)]
            env = user_cache if CASES[name].preset is not None else None
            timing = ["--case", name, "--model-dir", str(model_dir), "--json-out", str(json_out), *passed]
            run_self(timing, env)
            results.append(json.loads(json_out.read_text()))

    table = markdown_table(results)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "bench_step",
        "units": "milliseconds per optimisation step (median), peak RSS in MiB",
        "machine": machine,
        "wall_seconds": time.perf_counter() - began,
        "cases": results,
        "table": table,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out} ({report['wall_seconds']:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
