"""A guidance with a known answer: pull each render toward the true render of a known object.

It is not a text-to-image prior. It exists to prove that cameras, renderer, gradients and optimiser work
together before any learned prior is involved (the issue's acceptance test, and `--guidance target` for a
quick look). The gradient is that of 0.5 * ||render - target||^2. The text is ignored, except that the
"prompt" target (`guidance.target.shape=prompt`) is the procedural world's exact scene for the prompt: a run
then shows what the optimiser, the field and the export make of a perfect 2D teacher, which bounds what any
prior can get from them (benchmarks/table1.py's "fit to true renders" row).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from dreamfusion.fields.analytic import SHAPES, AnalyticField, SceneField, SDFField
from dreamfusion.guidance.base import GuidanceOutput, TextEmbeddings, ViewBatch
from dreamfusion.render.renderer import RenderSettings, render
from dreamfusion.render.shading import ShadingMode

if TYPE_CHECKING:
    from dreamfusion.distributed import Shard
    from dreamfusion.guidance import GuidanceConfig, GuidanceContext

# guidance.target.shape: a named test object, or "prompt": the procedural world's scene of the run's prompt.
TARGET_PROMPT = "prompt"
TARGETS = (*SHAPES, TARGET_PROMPT)
RENDER_SIZE = 64  # without train.resolution


@dataclass(frozen=True)
class TargetConfig:
    """`guidance.target`: the known object to reconstruct, a name of fields.analytic.SHAPES or "prompt" (the
    world's exact scene for the prompt, so a run shows what the optimiser makes of a perfect teacher)."""

    shape: str = "sphere"

    def __post_init__(self) -> None:
        if self.shape not in TARGETS:
            raise ValueError(f"shape must be one of {', '.join(TARGETS)}, got {self.shape!r}")


def build(config: GuidanceConfig, context: GuidanceContext) -> TargetGuidance:
    """The known object at the run's resolution, rendered with the run's sampling and light. The "prompt"
    target is the world scene of the run's prompt (a CaptionError, one line, if it is not a world caption)."""
    from dreamfusion.world import scene_from_caption

    shape = config.target.shape
    if shape == TARGET_PROMPT:
        scene = scene_from_caption(context.prompt or "")
        target, name = SceneField(scene), scene.caption()
        warnings = ["the target guidance reconstructs the world's exact scene of the prompt: no prior"]
    else:
        target, name = AnalyticField(shape), shape
        warnings = [f"the target guidance ignores the prompt: it reconstructs a known {shape!r}"]
    if config.model is not None:
        warnings.append("the target guidance uses no model; guidance.model is ignored")
    settings = RenderSettings.of(context.sampling, context.light)
    guidance = TargetGuidance(target, name, settings, context.resolution or RENDER_SIZE)
    guidance.warnings = tuple(warnings)
    return guidance


class TargetGuidance:
    warnings: tuple[str, ...] = ()

    def __init__(
        self,
        target: SDFField,
        name: str,
        settings: RenderSettings,
        image_size: int,
    ):
        self.target = target
        self.name = name  # what the target is, e.g. "sphere" or a world caption
        self.settings = settings  # the run's sampling and light; normals are chosen per batch
        self.image_size = image_size
        self.render_size = image_size

    def cache_key(self) -> str:
        return f"target:{self.name}"

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        return torch.zeros(len(texts), 1, 1)  # the text plays no part

    def target_images(self, views: ViewBatch) -> Tensor:
        """(B, 3, H, W) renders of the known object from the given views."""
        with torch.no_grad():
            with_normals = bool((views.modes != ShadingMode.ALBEDO).any())
            out = render(
                self.target,
                views.cameras,
                dataclasses.replace(self.settings, with_normals=with_normals),
                background=lambda _: views.background,
                lights=views.lights,
                modes=views.modes,
            )
        return out.image.permute(0, 3, 1, 2)

    def __call__(self, images: Tensor, text: TextEmbeddings, step: int, views: ViewBatch) -> GuidanceOutput:
        grad = (images.detach() - self.target_images(views)).contiguous()
        return GuidanceOutput(
            image_grad=grad,
            timesteps=torch.zeros(images.shape[0], dtype=torch.long),
            grad_norm=float(grad.norm()),
        )

    def rng_state(self) -> Tensor:
        return torch.zeros(0, dtype=torch.uint8)

    def set_rng_state(self, state: Tensor) -> None:
        pass

    def use_shard(self, shard: Shard) -> None:
        pass  # no randomness of its own: the target renders the views it is given
