"""The pixel-space (DeepFloyd IF stage I layout) backend, on tiny random models built offline."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from dreamfusion.errors import UserError
from dreamfusion.guidance.base import SDSConfig, TextEmbeddings
from dreamfusion.guidance.pixel_diffusion import PixelDiffusionGuidance
from dreamfusion.testing import save_tiny_pixel_diffusion

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_if(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pixel_diffusion(tmp_path_factory.mktemp("tiny-if"))


def _guidance(folder: Path, seed: int = 0, **options: bool) -> PixelDiffusionGuidance:
    return PixelDiffusionGuidance(
        str(folder), SDSConfig(guidance_scale=20.0), CPU, torch.float32, seed, **options
    )


@pytest.fixture(scope="module")
def guidance(tiny_if: Path) -> PixelDiffusionGuidance:
    return _guidance(tiny_if)


@pytest.fixture(scope="module")
def text(guidance: PixelDiffusionGuidance) -> TextEmbeddings:
    cond, uncond = guidance.encode_text(["a photo of a hamburger", ""]).split(1)
    return TextEmbeddings(cond=cond.expand(2, -1, -1), uncond=uncond.expand(2, -1, -1))


def _renders(seed: int = 1, size: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, size, size, generator=generator).requires_grad_(True)


def test_image_size_is_the_unet_sample_size(guidance: PixelDiffusionGuidance):
    assert guidance.image_size == 64


def test_gradient_is_a_detached_finite_image_gradient(guidance: PixelDiffusionGuidance, text: TextEmbeddings):
    images = _renders()
    out = guidance(images, text, step=0)
    grad = out.image_grad
    assert grad.shape == images.shape and grad.dtype == images.dtype and grad.device == images.device
    assert not grad.requires_grad and grad.grad_fn is None
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert out.timesteps.shape == (2,)
    assert out.grad_norm == pytest.approx(float(grad.norm()))


def test_renders_at_the_model_size_get_twice_the_pixel_gradient(
    guidance: PixelDiffusionGuidance, text: TextEmbeddings
):
    """At 64 px the resize is the identity and x = 2 image - 1, so d/d(image) = 2 d/dx exactly."""
    state = guidance.rng_state()
    out = guidance(_renders(), text, step=0)
    guidance.set_rng_state(state)
    x = (_renders().detach() * 2 - 1).float()
    pixel_grad, t = guidance.sds.gradient(x, guidance._predict_noise, text, step=0)
    assert torch.equal(t, out.timesteps)
    torch.testing.assert_close(out.image_grad, 2.0 * pixel_grad)


@pytest.mark.parametrize("size", [32, 128])
def test_renders_of_other_sizes_are_resized(
    guidance: PixelDiffusionGuidance, text: TextEmbeddings, size: int
):
    out = guidance(_renders(size=size), text, step=0)
    assert out.image_grad.shape == (2, 3, size, size) and torch.isfinite(out.image_grad).all()


def test_same_seed_same_gradient(tiny_if: Path, text: TextEmbeddings):
    first = _guidance(tiny_if, seed=5)(_renders(), text, step=0)
    second = _guidance(tiny_if, seed=5)(_renders(), text, step=0)
    assert torch.equal(first.image_grad, second.image_grad)
    other = _guidance(tiny_if, seed=6)(_renders(), text, step=0)
    assert not torch.equal(first.image_grad, other.image_grad)


def test_rng_state_round_trip_reproduces_the_gradient(guidance: PixelDiffusionGuidance, text: TextEmbeddings):
    state = guidance.rng_state()
    first = guidance(_renders(), text, step=7)
    guidance.set_rng_state(state)
    second = guidance(_renders(), text, step=7)
    assert torch.equal(first.image_grad, second.image_grad)


def test_memory_options_run(tiny_if: Path, text: TextEmbeddings):
    sliced = _guidance(tiny_if, attention_slicing=True, cpu_offload=True)
    out = sliced(_renders(), text, step=0)
    assert torch.isfinite(out.image_grad).all()


def test_t5_prompts_use_the_attention_mask_and_77_tokens(guidance: PixelDiffusionGuidance):
    assert guidance.text.attention_mask
    assert guidance.text.max_length == 77  # the tokenizer says 512; IF pads and truncates to 77
    assert guidance.encode_text(["a dog", ""]).shape == (2, 77, 32)


def test_long_prompts_are_truncated_with_one_warning(
    guidance: PixelDiffusionGuidance, caplog: pytest.LogCaptureFixture
):
    with caplog.at_level(logging.WARNING, logger="dreamfusion"):
        guidance.encode_text(["a cute dog " * 40 + "FINALE", "a cat"])
    warnings = [r for r in caplog.records if r.name == "dreamfusion" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "77" in warnings[0].getMessage() and "FINALE" in warnings[0].getMessage()


def test_a_clip_text_encoder_works_too(tmp_path: Path):
    folder = save_tiny_pixel_diffusion(tmp_path / "clip", text_encoder="clip")
    guidance = _guidance(folder)
    assert not guidance.text.attention_mask  # CLIP was trained without the padding mask
    cond, uncond = guidance.encode_text(["a red car", ""]).split(1)
    out = guidance(_renders(), TextEmbeddings(cond=cond, uncond=uncond), step=0)
    assert torch.isfinite(out.image_grad).all() and out.image_grad.abs().sum() > 0


def test_a_unet_that_needs_class_labels_is_refused(tiny_if: Path, tmp_path: Path):
    stage_two = tmp_path / "stage-two"
    shutil.copytree(tiny_if, stage_two)
    config_path = stage_two / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config["class_embed_type"] = "timestep"  # IF stage II conditions on the noise level of its input
    config_path.write_text(json.dumps(config))
    with pytest.raises(UserError, match="class_embed_type"):
        _guidance(stage_two)


def test_weights_are_frozen(guidance: PixelDiffusionGuidance):
    for module in (guidance.unet, guidance.text.model):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
