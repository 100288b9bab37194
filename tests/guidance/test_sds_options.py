"""The options beyond vanilla SDS (issue #20), each against an answer known without running it: Perp-Neg,
CSD, D-SDS's rising clip and prompt debiasing, and DreamTime's schedule; then each through every backend."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from dreamfusion.errors import SettingsError
from dreamfusion.guidance import GuidanceConfig, build_guidance
from dreamfusion.guidance.base import (
    NoisePrediction,
    ScoreDistillation,
    SDSConfig,
    TextEmbeddings,
    classifier_free_guidance,
    dreamtime_timestep,
    perp_neg_guidance,
)
from dreamfusion.guidance.embeddings import PromptEmbeddings
from dreamfusion.guidance.pixel_diffusion import PixelDiffusionGuidance
from dreamfusion.guidance.stable_diffusion import StableDiffusionGuidance
from dreamfusion.prompts import PromptConfig, debias_prompt
from dreamfusion.render.cameras import orbit_cameras
from dreamfusion.render.lights import LightConfig
from dreamfusion.render.sampling import SamplingConfig
from dreamfusion.testing import save_tiny_pixel_diffusion, save_tiny_stable_diffusion

CPU = torch.device("cpu")
T = 1000


def _alphas_cumprod() -> Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, T, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def _random_predictor(seed: int = 3):
    """Noise predictions that depend on z_t but not on what the options do with them."""

    def predict(z_t: Tensor, t: Tensor, text: TextEmbeddings) -> NoisePrediction:
        g = torch.Generator().manual_seed(seed)
        cond = z_t * 0.5 + torch.randn(z_t.shape, generator=g)
        uncond = z_t * 0.5 + torch.randn(z_t.shape, generator=g)
        return NoisePrediction(cond=cond, uncond=uncond)

    return predict


TEXT = TextEmbeddings(cond=torch.zeros(2, 4, 8), uncond=torch.zeros(2, 4, 8))


# ---- Perp-Neg ----


def test_perp_neg_with_a_negative_parallel_to_the_positive_removes_nothing():
    cond, uncond = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    positive = cond - uncond
    parallel = uncond[:, None] + torch.stack([2.5 * positive, -0.7 * positive], 1)  # (B, K=2, ...)
    with_negatives = NoisePrediction(cond, uncond, parallel, torch.tensor([[1.0, 3.0], [2.0, 0.5]]))
    torch.testing.assert_close(
        classifier_free_guidance(with_negatives, 100.0),
        classifier_free_guidance(NoisePrediction(cond, uncond), 100.0),
        rtol=1e-5,
        atol=1e-4,
    )


def test_perp_neg_subtracts_a_perpendicular_negative_at_its_weight():
    positive = torch.zeros(1, 1, 2, 2)
    positive[0, 0, 0, 0] = 1.0
    across = torch.zeros(1, 1, 1, 2, 2)
    across[0, 0, 0, 1, 1] = 2.0  # perpendicular to the positive direction
    uncond = torch.zeros(1, 1, 2, 2)
    pred = NoisePrediction(positive, uncond, across, torch.tensor([[1.5]]))
    expected = positive.clone()
    expected[0, 0, 1, 1] = -3.0
    torch.testing.assert_close(perp_neg_guidance(pred), expected)


def test_perp_neg_weights_follow_the_azimuth_and_need_view_prompts():
    class Encoder:  # four view prompts and the negative: distinct rows
        def cache_key(self) -> str:
            return "toy"

        def encode_text(self, texts):
            return torch.arange(len(texts), dtype=torch.float32)[:, None, None].expand(-1, 2, 3) + 1

    config = PromptConfig(text="a red mug")
    embeddings = PromptEmbeddings(config, Encoder(), None, perp_neg=2.0)
    cameras = orbit_cameras(4, 8, elevation_deg=10.0)  # azimuth 0 (front), 90, 180 (back), 270
    text = embeddings.for_cameras(cameras, CPU, torch.float32)
    assert text.negatives.shape == (4, 2, 2, 3)
    torch.testing.assert_close(text.negatives[:, 0], embeddings.views[0].expand(4, 2, 3))  # "front view"
    torch.testing.assert_close(text.negatives[:, 1], embeddings.views[2].expand(4, 2, 3))  # "back view"
    torch.testing.assert_close(
        text.negative_weights, torch.tensor([[0.0, 2.0], [1.0, 1.0], [2.0, 0.0], [1.0, 1.0]])
    )
    assert embeddings.for_cameras(cameras, CPU, torch.float32).cond.shape == (4, 2, 3)
    assert (
        PromptEmbeddings(config, Encoder(), None).for_cameras(cameras, CPU, torch.float32).negatives is None
    )
    with pytest.raises(SettingsError, match="perp_neg needs view prompts"):
        PromptEmbeddings(PromptConfig(text="a mug", view_dependent=False), Encoder(), None, perp_neg=1.0)


# ---- CSD ----


def test_csd_with_omega_zero_gives_a_zero_gradient():
    sds = ScoreDistillation(SDSConfig(score="csd", guidance_scale=0.0), _alphas_cumprod(), torch.Generator())
    grad, _ = sds.gradient(torch.randn(2, 3, 4, 4), _random_predictor(), TEXT, step=0)
    assert torch.count_nonzero(grad) == 0
    vanilla = ScoreDistillation(SDSConfig(guidance_scale=0.0), _alphas_cumprod(), torch.Generator())
    assert vanilla.gradient(torch.randn(2, 3, 4, 4), _random_predictor(), TEXT, step=0)[0].abs().sum() > 0


def test_csd_is_the_weighted_guidance_term_and_ignores_the_noise():
    x0 = torch.randn(2, 3, 4, 4)
    predictor = _random_predictor()
    a = ScoreDistillation(SDSConfig(score="csd", weighting="uniform"), _alphas_cumprod(), torch.Generator())
    grad_a, t = a.gradient(x0, predictor, TEXT, step=0)
    # Here cond - uncond is the same for every z_t, so whatever noise was drawn the gradient must be
    # omega (cond - uncond), where SDS would add cond - eps.
    pred = predictor(torch.zeros_like(x0), t, TEXT)
    torch.testing.assert_close(grad_a, 100.0 * (pred.cond - pred.uncond), rtol=1e-5, atol=1e-4)


# ---- D-SDS ----


def test_dsds_clip_threshold_rises_linearly_and_bounds_the_gradient():
    config = SDSConfig(grad_clip=2.0, grad_clip_end=8.0, grad_clip_steps=100)
    sds = ScoreDistillation(config, _alphas_cumprod(), torch.Generator())
    assert [sds.clip_threshold(s) for s in (0, 50, 100, 400)] == [2.0, 5.0, 8.0, 8.0]
    for step in (0, 50, 100):
        grad, _ = sds.gradient(torch.randn(2, 3, 4, 4) * 50, _random_predictor(), TEXT, step=step)
        assert float(grad.abs().max()) == pytest.approx(sds.clip_threshold(step))  # omega = 100 saturates it
    with pytest.raises(ValueError, match="grad_clip_end needs grad_clip"):
        SDSConfig(grad_clip_end=8.0)


def test_prompt_debiasing_drops_the_words_that_name_another_view():
    prompt = "the front of a red car, rear lights on"
    assert debias_prompt(prompt, "front") == "the front of a red car, lights on"
    assert debias_prompt(prompt, "back") == "the of a red car, rear lights on"
    assert debias_prompt("a red mug", "side") == "a red mug"


def test_prompt_debiasing_changes_only_the_view_prompts_that_conflict():
    seen: list[str] = []

    class Encoder:
        def cache_key(self) -> str:
            return "toy"

        def encode_text(self, texts):
            seen.extend(texts)
            return torch.zeros(len(texts), 2, 3)

    PromptEmbeddings(PromptConfig(text="a car seen from behind", debias=True), Encoder(), None)
    assert seen[:4] == [
        "a car seen from, front view",
        "a car seen from, side view",
        "a car seen from behind, back view",
        "a car seen from, overhead view",
    ]


# ---- DreamTime ----


def test_dreamtime_falls_monotonically_from_t_max_to_t_min():
    config = SDSConfig(t_schedule="dreamtime", t_anneal_steps=200)
    ts = [dreamtime_timestep(s, config, T) for s in range(0, 201)]
    assert ts[0] == round(0.98 * 999) and ts[-1] == round(0.02 * 999)
    assert all(a >= b for a, b in zip(ts, ts[1:], strict=False))
    # More steps in the middle than a linear fall spends there: the prior is heavy at t/T = 0.5.
    middle = sum(0.4 * 999 <= t <= 0.6 * 999 for t in ts)
    assert middle > 0.2 * 201 * 1.5


def test_dreamtime_with_a_flat_prior_falls_linearly():
    config = SDSConfig(
        t_schedule="dreamtime", t_anneal_steps=100, dreamtime_std_above=1e6, dreamtime_std_below=1e6
    )
    lo, hi = round(0.02 * 999), round(0.98 * 999)
    for step in (0, 25, 50, 75, 100):
        expected = hi - step / 100 * (hi - lo)
        assert abs(dreamtime_timestep(step, config, T) - expected) <= 1.0


def test_dreamtime_uses_one_t_per_step_and_needs_a_length():
    sds = ScoreDistillation(
        SDSConfig(t_schedule="dreamtime", t_anneal_steps=10), _alphas_cumprod(), torch.Generator()
    )
    t = sds.sample_timesteps(4, step=5)
    assert t.unique().numel() == 1
    with pytest.raises(ValueError, match="t_anneal_steps > 0"):
        SDSConfig(t_schedule="dreamtime")


# ---- every backend ----

OPTIONS = {
    "perp_neg": dict(perp_neg=1.0),
    "csd": dict(score="csd"),
    "dsds": dict(grad_clip=0.05, grad_clip_end=0.2, grad_clip_steps=10),
    "dreamtime": dict(t_schedule="dreamtime", t_anneal_steps=10),
}


@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """How to build each backend with an SDSConfig: tiny SD and IF layouts, and the shipped built-in prior."""
    sd = save_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd"))
    pixel = save_tiny_pixel_diffusion(tmp_path_factory.mktemp("tiny-if"))
    cache: Path = tmp_path_factory.mktemp("cache")

    def builtin(sds: SDSConfig):
        config = GuidanceConfig(kind="builtin", sds=sds)
        return build_guidance(config, CPU, 0, SamplingConfig(), LightConfig(), None, cache, "a red mug")

    return {
        "stable-diffusion": lambda sds: StableDiffusionGuidance(str(sd), sds, CPU, torch.float32, 0),
        "pixel": lambda sds: PixelDiffusionGuidance(str(pixel), sds, CPU, torch.float32, 0),
        "builtin": builtin,
    }


@pytest.mark.parametrize("backend", ["stable-diffusion", "pixel", "builtin"])
def test_every_option_runs_on_every_backend(backends, backend):
    make = backends[backend]
    base = make(SDSConfig())
    cond, uncond = base.encode_text(["a red mug, side view", ""]).split(1)
    images = torch.rand(2, 3, base.image_size, base.image_size, generator=torch.Generator().manual_seed(1))
    plain = TextEmbeddings(cond.expand(2, -1, -1), uncond.expand(2, -1, -1))
    vanilla = base(images.clone().requires_grad_(True), plain, step=3).image_grad
    for name, options in OPTIONS.items():
        guidance = make(SDSConfig(**options))
        text = plain
        if name == "perp_neg":  # negatives equal to the positive prompt: parallel, so nothing changes
            text = TextEmbeddings(plain.cond, plain.uncond, plain.cond[:, None], torch.full((2, 1), 3.0))
        grad = guidance(images.clone().requires_grad_(True), text, step=3).image_grad
        assert grad.shape == images.shape and torch.isfinite(grad).all(), name
        if name == "perp_neg":
            # Equal up to float rounding (the U-Net runs on a batch of 3B instead of 2B), times omega.
            scale = float(vanilla.abs().max())
            torch.testing.assert_close(grad, vanilla, rtol=1e-3, atol=1e-4 * scale)
            other = base.encode_text(["a blue cube, back view"])
            pushed = TextEmbeddings(
                plain.cond, plain.uncond, other.expand(2, 1, -1, -1), torch.full((2, 1), 3.0)
            )
            moved = guidance(images.clone().requires_grad_(True), pushed, step=3).image_grad
            assert float((moved - vanilla).abs().max()) > 1e-2 * scale, "a real negative must change it"
        else:
            assert not torch.equal(grad, vanilla), name
