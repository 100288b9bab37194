"""Small builders shared by the tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from dreamfusion.config import apply_overrides
from dreamfusion.evaluation.suite import evaluation_suite, shape_caption
from dreamfusion.guidance import build_guidance
from dreamfusion.render.cameras import orbit_cameras
from dreamfusion.render.renderer import RenderSettings, render
from dreamfusion.render.sampling import SamplingConfig
from dreamfusion.render.shading import ShadingMode
from dreamfusion.run.config import Config
from dreamfusion.training.trainer import Trainer

CPU = torch.device("cpu")


def target_config(shape: str = "sphere", steps: int = 40, resolution: int = 32, *extra: str) -> Config:
    """A small run with the target guidance: cheap enough for a unit test."""
    overrides = [
        "guidance.kind=target",
        f"guidance.target.shape={shape}",
        f"train.steps={steps}",
        f"train.resolution={resolution}",
        "train.checkpoint_every=10",
        "train.validation_every=1000",
        "sampling.samples_per_ray=32",
        "sampling.occupancy_resolution=24",
        "optim.warmup_fraction=0.05",
        "shading.albedo_warmup_fraction=0.1",
        "loss.orientation_ramp_fraction=0.1",
        "background.kind=solid",
        "prompt.text=a known object",
        *extra,
    ]
    return apply_overrides(Config(), overrides)


def make_trainer(config: Config, run_dir: Path) -> Trainer:
    run_dir.mkdir(parents=True, exist_ok=True)
    guidance = build_guidance(config.guidance, CPU, 0, config.sampling, config.light, config.train.resolution)
    return Trainer(config, run_dir, guidance, CPU, None)


def silhouettes(field, resolution: int = 48, views: int = 8) -> torch.Tensor:
    """(V, H, W) opacity from `views` azimuths at 30 deg elevation, white background, no shading."""
    cameras = orbit_cameras(views, resolution)
    with torch.no_grad():
        out = render(
            field,
            cameras,
            RenderSettings(SamplingConfig(samples_per_ray=96)),
            background=lambda d: torch.ones_like(d),
            lights=cameras.position,
            modes=torch.full((views,), int(ShadingMode.ALBEDO)),
        )
    return out.opacity


def silhouette_iou(a: torch.Tensor, b: torch.Tensor, threshold: float = 0.5) -> float:
    ma, mb = a > threshold, b > threshold
    return float((ma & mb).sum() / (ma | mb).sum().clamp_min(1))


def stop_at(trainer, step):
    """Wrap the guidance so that the trainer is asked to stop during step `step` (as Ctrl-C would)."""
    guidance = trainer.guidance

    def guided(images, text, current, views):
        if current == step:
            trainer.request_stop()
        return guidance(images, text, current, views)

    trainer.guidance = guided
    trainer.guidance.rng_state = guidance.rng_state  # type: ignore[attr-defined]
    trainer.guidance.set_rng_state = guidance.set_rng_state  # type: ignore[attr-defined]


class CaptionOracle:
    """Embeds texts one-hot by their position in `vocabulary`; every image as the caption it is told to
    show. A model that is always right (or, told the wrong caption, always wrong)."""

    name = "oracle"

    def __init__(self, vocabulary: Sequence[str], shows: str, shows_shape: str):
        self.vocabulary = list(dict.fromkeys(vocabulary))
        self.shows, self.shows_shape = shows, shows_shape
        self.calls = 0

    def embed_texts(self, texts: Sequence[str]) -> Tensor:
        return torch.stack([self._one_hot(t) for t in texts])

    def embed_images(self, images: Tensor) -> Tensor:
        # The first call embeds the lambertian renders, the second the textureless ones.
        self.calls += 1
        caption = self.shows if self.calls == 1 else self.shows_shape
        return self._one_hot(caption).expand(images.shape[0], -1)

    def _one_hot(self, text: str) -> Tensor:
        if text not in self.vocabulary:
            self.vocabulary.append(text)
        return torch.nn.functional.one_hot(torch.tensor(self.vocabulary.index(text)), 256).float()


def caption_oracle(shows: str, shows_shape: str) -> CaptionOracle:
    suite = evaluation_suite()
    return CaptionOracle(
        [p.caption for p in suite] + [shape_caption(p.scene) for p in suite], shows, shows_shape
    )
