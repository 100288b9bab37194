"""The target guidance with the world's exact scene of the prompt (guidance.target_shape=prompt): the "fit to
true renders" row of benchmarks/table1.py, the ceiling of everything but the prior."""

import pytest
import torch

from dreamfusion.config import apply_overrides
from dreamfusion.evaluation.geometry import compare_occupancy
from dreamfusion.fields.analytic import SceneField
from dreamfusion.guidance import GuidanceConfig, build_guidance
from dreamfusion.guidance.target import TargetConfig
from dreamfusion.render.lights import LightConfig
from dreamfusion.render.sampling import SamplingConfig
from dreamfusion.run.config import Config
from dreamfusion.world import CaptionError, scene_from_caption

CPU = torch.device("cpu")


def test_scene_field_occupies_the_scene():
    scene = scene_from_caption("a yellow mug on top of a purple chair")
    comparison = compare_occupancy(SceneField(scene), scene, resolution=48)
    # Only cells cut by the surface can differ: the density ramp sits 0.02 inside it.
    assert comparison.iou > 0.85


def test_scene_field_colours_each_object():
    scene = scene_from_caption("a red cube next to a blue sphere")
    field = SceneField(scene)
    centres = torch.tensor([p.offset for p in scene.placements], dtype=torch.float32)
    out = field(centres)
    assert (out.density > 100).all()
    assert out.albedo[0].argmax() == 0 and out.albedo[1].argmax() == 2  # red, then blue


def test_prompt_target_reconstructs_the_prompts_scene():
    config = GuidanceConfig(kind="target", target=TargetConfig(shape="prompt"))
    args = (CPU, 0, SamplingConfig(), LightConfig(), 16)
    guidance = build_guidance(config, *args, prompt="a photo of a green torus, side view")
    assert guidance.cache_key() == "target:a green torus"
    assert isinstance(guidance.target, SceneField)
    with pytest.raises(CaptionError):
        build_guidance(config, *args, prompt="a dragon")


def test_a_named_shape_is_still_the_default_target():
    config = apply_overrides(Config(), ["guidance.kind=target"]).guidance
    guidance = build_guidance(config, CPU, 0, SamplingConfig(), LightConfig(), 16, prompt="a red cube")
    assert guidance.cache_key() == "target:sphere"


def test_unknown_target_is_a_config_error():
    with pytest.raises(ValueError, match="shape"):
        TargetConfig(shape="dragon")
