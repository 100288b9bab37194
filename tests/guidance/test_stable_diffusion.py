"""The latent (Stable Diffusion layout) backend, on a tiny random model built offline in the real layout."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from dreamfusion.guidance.base import SDSConfig, TextEmbeddings
from dreamfusion.guidance.stable_diffusion import StableDiffusionGuidance
from dreamfusion.testing import save_tiny_stable_diffusion

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd"))


def _guidance(folder: Path, seed: int = 0, **options: bool) -> StableDiffusionGuidance:
    return StableDiffusionGuidance(str(folder), SDSConfig(), CPU, torch.float32, seed, **options)


@pytest.fixture(scope="module")
def guidance(tiny_sd: Path) -> StableDiffusionGuidance:
    return _guidance(tiny_sd)


@pytest.fixture(scope="module")
def text(guidance: StableDiffusionGuidance) -> TextEmbeddings:
    cond, uncond = guidance.encode_text(["a photo of a hamburger", ""]).split(1)
    return TextEmbeddings(cond=cond.expand(2, -1, -1), uncond=uncond.expand(2, -1, -1))


def _renders(seed: int = 1, size: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, size, size, generator=generator).requires_grad_(True)


def test_image_size_is_latent_size_times_vae_scale(guidance: StableDiffusionGuidance):
    assert guidance.image_size == 8 * 8


def test_gradient_is_a_detached_finite_image_gradient(
    guidance: StableDiffusionGuidance, text: TextEmbeddings
):
    images = _renders()
    out = guidance(images, text, step=0)
    grad = out.image_grad
    assert grad.shape == images.shape and grad.dtype == images.dtype and grad.device == images.device
    assert not grad.requires_grad and grad.grad_fn is None
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert out.timesteps.shape == (2,) and out.timesteps.dtype == torch.int64
    assert 0.02 * 999 - 1 <= int(out.timesteps.min()) and int(out.timesteps.max()) <= 0.98 * 999 + 1
    assert out.grad_norm == pytest.approx(float(grad.norm()))
    assert images.grad is None  # the guidance does not write into the caller's graph


def test_smaller_renders_are_upsampled_and_the_gradient_comes_back_at_their_size(
    guidance: StableDiffusionGuidance, text: TextEmbeddings
):
    out = guidance(_renders(size=32), text, step=0)
    assert out.image_grad.shape == (2, 3, 32, 32) and torch.isfinite(out.image_grad).all()


def test_same_seed_same_gradient(tiny_sd: Path, guidance: StableDiffusionGuidance, text: TextEmbeddings):
    again = _guidance(tiny_sd, seed=0)
    fresh = _guidance(tiny_sd, seed=0)
    first = fresh(_renders(), text, step=0)
    second = again(_renders(), text, step=0)
    assert torch.equal(first.image_grad, second.image_grad)
    assert torch.equal(first.timesteps, second.timesteps)


def test_rng_state_round_trip_reproduces_the_gradient(
    guidance: StableDiffusionGuidance, text: TextEmbeddings
):
    state = guidance.rng_state()
    first = guidance(_renders(), text, step=3)
    guidance.set_rng_state(state)
    second = guidance(_renders(), text, step=3)
    assert torch.equal(first.image_grad, second.image_grad)
    third = guidance(_renders(), text, step=3)
    assert not torch.equal(first.image_grad, third.image_grad)  # the generator moved on


def test_memory_options_do_not_change_the_result_on_cpu(tiny_sd: Path, text: TextEmbeddings):
    plain = _guidance(tiny_sd)(_renders(), text, step=0)
    # cpu_offload is a no-op without CUDA; attention slicing changes only the order of the sums.
    sliced = _guidance(tiny_sd, attention_slicing=True, cpu_offload=True)(_renders(), text, step=0)
    torch.testing.assert_close(sliced.image_grad, plain.image_grad, rtol=1e-3, atol=1e-5)


def test_one_shared_prompt_broadcasts_over_the_batch(guidance: StableDiffusionGuidance, text: TextEmbeddings):
    shared = TextEmbeddings(cond=text.cond[:1], uncond=text.uncond[:1])
    out = guidance(_renders(), shared, step=0)
    assert out.image_grad.shape == (2, 3, 64, 64)


def test_encode_text_shape_and_dtype(guidance: StableDiffusionGuidance):
    embeddings = guidance.encode_text(["a dog", "a cat", ""])
    assert embeddings.shape == (3, 77, 32) and embeddings.dtype == torch.float32
    assert not embeddings.requires_grad


def test_long_prompts_are_truncated_with_one_warning(
    guidance: StableDiffusionGuidance, caplog: pytest.LogCaptureFixture
):
    long_prompts = ["a small wooden chair " * 40 + "THE END", "a red car " * 50]
    with caplog.at_level(logging.WARNING, logger="dreamfusion"):
        embeddings = guidance.encode_text([*long_prompts, "a dog"])
    assert embeddings.shape == (3, 77, 32)
    warnings = [r for r in caplog.records if r.name == "dreamfusion" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "77" in message and "2 prompt" in message and "the end" in message  # CLIP lower-cases


def test_short_prompts_do_not_warn(guidance: StableDiffusionGuidance, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="dreamfusion"):
        guidance.encode_text(["a photo of a dog"])
    assert not [r for r in caplog.records if r.name == "dreamfusion"]


def test_cache_key_names_the_text_encoder(tiny_sd: Path, guidance: StableDiffusionGuidance):
    key = guidance.cache_key()
    assert str(tiny_sd.resolve() / "text_encoder") in key
    assert key == _guidance(tiny_sd).cache_key()


def test_weights_are_frozen(guidance: StableDiffusionGuidance):
    for module in (guidance.unet, guidance.vae, guidance.text.model):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())


def test_a_half_precision_prior_returns_the_renders_dtype(tiny_sd: Path):
    guidance = StableDiffusionGuidance(str(tiny_sd), SDSConfig(), CPU, torch.bfloat16, 0)
    embeddings = guidance.encode_text(["a dog", ""])
    assert embeddings.dtype == torch.bfloat16
    text = TextEmbeddings(cond=embeddings[:1], uncond=embeddings[1:])
    out = guidance(_renders(), text, step=0)
    assert out.image_grad.dtype == torch.float32 and torch.isfinite(out.image_grad).all()


def test_v_prediction_model(tmp_path: Path, text: TextEmbeddings):
    folder = save_tiny_stable_diffusion(tmp_path / "v", prediction_type="v_prediction")
    guidance = _guidance(folder)
    assert guidance.prediction_type == "v_prediction"
    out = guidance(_renders(), text, step=0)
    assert torch.isfinite(out.image_grad).all() and out.image_grad.abs().sum() > 0


def test_tiny_model_builder_is_deterministic(tmp_path: Path):
    a = save_tiny_stable_diffusion(tmp_path / "a", seed=3)
    b = save_tiny_stable_diffusion(tmp_path / "b", seed=3)
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert (a / part).read_bytes() == (b / part).read_bytes()
