"""Score Distillation Sampling (guidance/base.py) checked against what the paper's equations say."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from dreamfusion.guidance.base import (
    NoisePrediction,
    ScoreDistillation,
    SDSConfig,
    TextEmbeddings,
    add_noise,
    classifier_free_guidance,
    denoised_estimate,
    pull_back,
    sds_weight,
)

T = 1000
TEXT = TextEmbeddings(cond=torch.zeros(1, 4, 8), uncond=torch.zeros(1, 4, 8))


def _alphas_cumprod() -> Tensor:
    """Stable Diffusion's "scaled_linear" training schedule, written out."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, T, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def _sds(config: SDSConfig, seed: int = 0) -> ScoreDistillation:
    return ScoreDistillation(config, _alphas_cumprod(), torch.Generator().manual_seed(seed))


def _denoiser_of(target: Tensor, alphas_cumprod: Tensor):
    """A perfect denoiser for a data set holding one image: whatever z_t is, it predicts the noise that would
    turn `target` into z_t, eps = (z_t - alpha_t target) / sigma_t, for both CFG halves."""

    def predict_noise(z_t: Tensor, t: Tensor, text: TextEmbeddings) -> NoisePrediction:
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        eps = (z_t - a.sqrt() * target) / (1.0 - a).sqrt()
        return NoisePrediction(cond=eps, uncond=eps)

    return predict_noise


def test_cfg_is_the_papers_formula():
    cond, uncond = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    for omega in (0.0, 7.5, 100.0):
        got = classifier_free_guidance(NoisePrediction(cond=cond, uncond=uncond), omega)
        torch.testing.assert_close(got, (1.0 + omega) * cond - omega * uncond, rtol=1e-5, atol=1e-4)


def test_cfg_halves_are_not_interchangeable():
    cond, uncond = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    got = classifier_free_guidance(NoisePrediction(cond=cond, uncond=uncond), 100.0)
    assert torch.all(got == 101.0)


def test_gradient_is_zero_when_the_prediction_is_the_true_noise():
    x0 = torch.rand(3, 3, 8, 8) * 2 - 1
    sds = _sds(SDSConfig(guidance_scale=100.0))
    # The denoiser's image is x0 itself, so the noise it infers from z_t is exactly the noise that was added.
    grad, t = sds.gradient(x0, _denoiser_of(x0, sds.alphas_cumprod), TEXT, step=0)
    assert grad.shape == x0.shape and t.shape == (3,)
    assert grad.abs().max() < 1e-3


def test_a_descent_step_moves_the_image_toward_the_denoised_estimate():
    target = torch.rand(2, 3, 8, 8) * 2 - 1
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    alphas = _alphas_cumprod()
    predict_noise = _denoiser_of(target, alphas)
    sds = _sds(SDSConfig(guidance_scale=0.0, weighting="uniform"))
    grad, t = sds.gradient(x, predict_noise, TEXT, step=0)

    # Regenerate the same t and noise to check x0_hat: the denoiser's estimate is the target image.
    replay = _sds(SDSConfig(guidance_scale=0.0, weighting="uniform"))
    t_again = replay.sample_timesteps(2, step=0)
    noise = torch.randn(x.shape, generator=replay.generator)
    assert torch.equal(t, t_again)
    z_t = add_noise(x, noise, alphas[t])
    x0_hat = denoised_estimate(z_t, predict_noise(z_t, t, TEXT).cond, alphas[t])
    torch.testing.assert_close(x0_hat, target, rtol=1e-4, atol=1e-4)

    # The SDS gradient is w alpha_t / sigma_t (x - x0_hat): a small step against it approaches x0_hat.
    a = alphas[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(grad, a.sqrt() / (1 - a).sqrt() * (x - target), rtol=1e-3, atol=1e-3)
    stepped = x - 1e-3 * grad
    before = (x - x0_hat).flatten(1).norm(dim=1)
    after = (stepped - x0_hat).flatten(1).norm(dim=1)
    assert torch.all(after < before)


def test_timesteps_stay_inside_the_range():
    sds = _sds(SDSConfig(t_min=0.2, t_max=0.5))
    t = sds.sample_timesteps(4000, step=0)
    lo, hi = round(0.2 * (T - 1)), round(0.5 * (T - 1))
    assert int(t.min()) >= lo and int(t.max()) <= hi
    assert int(t.min()) < lo + 10 and int(t.max()) > hi - 10  # and it fills the range
    assert t.dtype == torch.int64


def test_paper_default_range():
    sds = _sds(SDSConfig())
    t = sds.sample_timesteps(4000, step=0)
    assert int(t.min()) >= round(0.02 * (T - 1)) and int(t.max()) <= round(0.98 * (T - 1))


def test_t_max_anneals_linearly():
    config = SDSConfig(t_min=0.02, t_max=0.98, t_max_end=0.5, t_anneal_steps=100)
    sds = _sds(config)
    assert sds.t_range(0) == (0.02, 0.98)
    assert sds.t_range(50)[1] == pytest.approx(0.74)
    assert sds.t_range(100)[1] == pytest.approx(0.5)
    assert sds.t_range(10_000)[1] == pytest.approx(0.5)
    late = sds.sample_timesteps(2000, step=10_000)
    assert int(late.max()) <= round(0.5 * (T - 1))


def test_annealing_is_off_by_default():
    sds = _sds(SDSConfig())
    assert sds.t_range(0) == sds.t_range(1_000_000) == (0.02, 0.98)


def test_bad_range_is_rejected():
    with pytest.raises(ValueError):
        _sds(SDSConfig(t_min=0.6, t_max=0.5))


def test_weightings():
    abar = torch.tensor([0.99, 0.5, 0.01])
    torch.testing.assert_close(sds_weight(abar, "sigma2"), 1.0 - abar)
    torch.testing.assert_close(sds_weight(abar, "uniform"), torch.ones(3))
    with pytest.raises(ValueError):
        sds_weight(abar, "snr")  # type: ignore[arg-type]


def test_sigma2_weighting_scales_the_uniform_gradient_by_one_minus_alphabar():
    x = torch.rand(4, 3, 8, 8)
    predict_noise = _denoiser_of(torch.zeros_like(x), _alphas_cumprod())
    uniform, t = _sds(SDSConfig(weighting="uniform"), seed=3).gradient(x, predict_noise, TEXT, step=0)
    sigma2, t2 = _sds(SDSConfig(weighting="sigma2"), seed=3).gradient(x, predict_noise, TEXT, step=0)
    assert torch.equal(t, t2)
    w = (1.0 - _alphas_cumprod()[t]).view(-1, 1, 1, 1)
    torch.testing.assert_close(sigma2, w * uniform)


def test_grad_clip_bounds_every_element():
    x = torch.rand(2, 3, 8, 8) * 10
    predict_noise = _denoiser_of(torch.zeros_like(x), _alphas_cumprod())
    grad, _ = _sds(SDSConfig(grad_clip=0.5)).gradient(x, predict_noise, TEXT, step=0)
    assert grad.abs().max() <= 0.5


def test_same_generator_state_same_gradient():
    x = torch.rand(2, 3, 8, 8)
    predict_noise = _denoiser_of(torch.zeros_like(x), _alphas_cumprod())
    first, _ = _sds(SDSConfig(), seed=7).gradient(x, predict_noise, TEXT, step=0)
    second, _ = _sds(SDSConfig(), seed=7).gradient(x, predict_noise, TEXT, step=0)
    assert torch.equal(first, second)


def test_pull_back_through_a_known_map():
    images = torch.rand(2, 3, 4, 4, requires_grad=True)
    model_input = images * 2.0 - 1.0
    model_grad = torch.randn(2, 3, 4, 4)
    image_grad = pull_back(model_input, images, model_grad)
    torch.testing.assert_close(image_grad, 2.0 * model_grad)
    assert not image_grad.requires_grad
