"""Score Distillation Sampling (paper sec. 3, eq. 3) and the interface every guidance backend implements.

A guidance takes a batch of rendered images and returns d(loss)/d(image): a detached tensor of the images'
shape. The trainer multiplies it into the images (`(grad * images).sum()`) and backpropagates into the 3D
parameters; it never sees latents, timesteps or noise. Latent-space priors map their latent gradient back to
pixels inside themselves, through the VAE encoder.

Classifier-free guidance follows the paper: eps_hat = (1 + omega) eps_cond - omega eps_uncond, which is
eps_cond + omega (eps_cond - eps_uncond), with omega = 100. stable-dreamfusion writes
eps_uncond + s (eps_cond - eps_uncond), i.e. its s = 100 is our omega = 99: one lower than the paper.
threestudio uses the paper's form.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol

import torch
from torch import Tensor

from dreamfusion.render.cameras import Cameras

if TYPE_CHECKING:
    from dreamfusion.distributed import Shard


class NoisePrediction(NamedTuple):
    """The two halves of one classifier-free-guidance batch, by name rather than by chunk order."""

    cond: Tensor  # (B, C, h, w) noise predicted with the prompt
    uncond: Tensor  # (B, C, h, w) noise predicted with the negative / empty prompt


@dataclass(frozen=True)
class TextEmbeddings:
    """Per-image text conditioning for one guidance call, already on the prior's device and dtype."""

    cond: Tensor  # (B, L, D)
    uncond: Tensor  # (B, L, D)


@dataclass(frozen=True)
class ViewBatch:
    """How the images were made. Text-to-image priors ignore it; the `target` guidance re-renders a known
    object from exactly these views, and camera-aware priors (Zero-1-to-3, MVDream) would need the cameras."""

    cameras: Cameras
    lights: Tensor  # (B, 3) point-light positions
    modes: Tensor  # (B,) ShadingMode of each image
    background: Tensor  # (B, H, W, 3) the background composited behind each image (detached)


@dataclass(frozen=True)
class GuidanceOutput:
    image_grad: Tensor  # (B, 3, H, W), detached, same shape/device/dtype as the images passed in
    timesteps: Tensor  # (B,) integer timesteps used (zeros for guidances without noise)
    grad_norm: float  # L2 norm of image_grad over the batch, for logging


class Guidance(Protocol):
    """What the trainer needs from a prior. Implementations: stable_diffusion, pixel_diffusion, target."""

    image_size: int  # the square resolution the model denoises at (renders are resized to it)
    render_size: int  # the square size it wants renders drawn at, unless train.resolution says otherwise
    warnings: tuple[str, ...]  # what a user should know about this run's guidance, logged when it starts

    def cache_key(self) -> str:
        """Identifies the text encoder's weights, for the on-disk text-embedding cache."""
        ...

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """(N, L, D) embeddings. Over-long texts are truncated with a logged warning."""
        ...

    def __call__(self, images: Tensor, text: TextEmbeddings, step: int, views: ViewBatch) -> GuidanceOutput:
        """images: (B, 3, H, W) in [0, 1] with grad history. Returns the gradient of the SDS loss."""
        ...

    def rng_state(self) -> Tensor:
        """The state of the guidance's own generator (checkpointed so a resumed run matches)."""
        ...

    def set_rng_state(self, state: Tensor) -> None: ...

    def use_shard(self, shard: Shard) -> None:
        """From now on each call sees one process's share of a larger batch: its random draws are that
        share's rows of the whole batch's (dreamfusion.distributed)."""
        ...


Weighting = Literal["sigma2", "uniform"]


@dataclass(frozen=True)
class DiffusersConfig:
    """`guidance.diffusers`: memory options of the two diffusers backends (pixel, stable-diffusion)."""

    attention_slicing: bool = False  # lower peak memory on small GPUs, slower
    cpu_offload: bool = False  # keep the prior's modules on the CPU between uses (CUDA only)


@dataclass(frozen=True)
class SDSConfig:
    """Defaults from App. A.2 of the paper."""

    guidance_scale: float = 100.0  # omega in eps_hat = (1 + omega) eps_c - omega eps_u
    weighting: Weighting = "sigma2"  # w(t) = sigma_t^2 = 1 - alphabar_t; the paper found uniform similar
    t_min: float = 0.02  # t ~ U(0.02, 0.98), as a fraction of the training timesteps
    t_max: float = 0.98
    t_max_end: float | None = None  # optional linear annealing of t_max to this value ...
    t_anneal_steps: int = 0  # ... over this many steps (DreamTime-style; off in the paper)
    grad_clip: float | None = None  # optional elementwise clip of the model-space gradient (off in the paper)

    def __post_init__(self) -> None:
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got {self.t_min}, {self.t_max}")
        if self.t_max_end is not None and not self.t_min < self.t_max_end <= 1.0:
            raise ValueError(f"t_max_end must be in (t_min, 1], got {self.t_max_end}")
        if self.t_anneal_steps < 0:
            raise ValueError("t_anneal_steps must be >= 0")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError("grad_clip must be > 0, or null for no clipping")
        if self.weighting not in ("sigma2", "uniform"):
            raise ValueError(f"weighting must be 'sigma2' or 'uniform', got {self.weighting!r}")


def classifier_free_guidance(pred: NoisePrediction, guidance_scale: float) -> Tensor:
    """eps_hat = (1 + omega) eps_cond - omega eps_uncond (paper, sec. 2)."""
    return pred.cond + guidance_scale * (pred.cond - pred.uncond)


def sds_weight(alphas_cumprod_t: Tensor, weighting: Weighting) -> Tensor:
    """w(t) per sample, shaped (B,). sigma_t^2 = 1 - alphabar_t for a variance-preserving model."""
    if weighting == "sigma2":
        return 1.0 - alphas_cumprod_t
    if weighting == "uniform":
        return torch.ones_like(alphas_cumprod_t)
    raise ValueError(f"unknown SDS weighting {weighting!r}")


def add_noise(x0: Tensor, noise: Tensor, alphas_cumprod_t: Tensor) -> Tensor:
    """z_t = alpha_t x + sigma_t eps with alpha_t^2 = alphabar_t, sigma_t^2 = 1 - alphabar_t."""
    a = alphas_cumprod_t.view(-1, *([1] * (x0.dim() - 1)))
    return a.sqrt() * x0 + (1.0 - a).sqrt() * noise


def sds_gradient(eps_hat: Tensor, noise: Tensor, alphas_cumprod_t: Tensor, weighting: Weighting) -> Tensor:
    """Paper eq. 3 without the U-Net Jacobian: w(t) (eps_hat - eps), per sample."""
    w = sds_weight(alphas_cumprod_t, weighting).view(-1, *([1] * (noise.dim() - 1)))
    return w * (eps_hat - noise)


def denoised_estimate(z_t: Tensor, eps_hat: Tensor, alphas_cumprod_t: Tensor) -> Tensor:
    """x0_hat = (z_t - sigma_t eps_hat) / alpha_t: where the denoiser thinks the clean image is."""
    a = alphas_cumprod_t.view(-1, *([1] * (z_t.dim() - 1)))
    return (z_t - (1.0 - a).sqrt() * eps_hat) / a.sqrt()


class ScoreDistillation:
    """The SDS step shared by all diffusion backends: pick t, add noise, run the model twice, combine.

    `predict_noise(z_t, t, text)` is the backend's U-Net call; it returns both CFG halves by name.
    Randomness (t and eps) comes only from `generator`, so a seed reproduces a run.
    """

    def __init__(self, config: SDSConfig, alphas_cumprod: Tensor, generator: torch.Generator):
        self.config = config  # SDSConfig validated its ranges
        self.alphas_cumprod = alphas_cumprod.float()  # (T,)
        self.generator = generator
        self.shard: Shard | None = None  # one process's share of the batch (dreamfusion.distributed)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def t_range(self, step: int) -> tuple[float, float]:
        """The (t_min, t_max) fractions in force at `step`, with optional linear annealing of t_max."""
        c = self.config
        if c.t_max_end is None or c.t_anneal_steps <= 0:
            return c.t_min, c.t_max
        frac = min(max(step / c.t_anneal_steps, 0.0), 1.0)
        return c.t_min, max(c.t_min + 1e-6, c.t_max + frac * (c.t_max_end - c.t_max))

    def sample_timesteps(self, batch: int, step: int) -> Tensor:
        """One integer timestep per image, uniform in the current range (threestudio's choice; the paper's
        four TPU chips each rendered one view with its own t)."""
        lo, hi = self.t_range(step)
        t_lo = int(round(lo * (self.num_train_timesteps - 1)))
        t_hi = int(round(hi * (self.num_train_timesteps - 1)))
        if self.shard is not None:
            return self.shard.randint(t_lo, t_hi + 1, batch, self.generator)
        device = self.generator.device
        return torch.randint(t_lo, t_hi + 1, (batch,), generator=self.generator, device=device)

    def gradient(
        self,
        x0: Tensor,
        predict_noise: Callable[[Tensor, Tensor, TextEmbeddings], NoisePrediction],
        text: TextEmbeddings,
        step: int,
    ) -> tuple[Tensor, Tensor]:
        """Returns (gradient w.r.t. x0 in model space, timesteps). x0 is detached here."""
        x0 = x0.detach()
        batch = x0.shape[0]
        t = self.sample_timesteps(batch, step)
        if self.shard is not None:
            noise = self.shard.randn(x0.shape, self.generator, x0.dtype)
        else:
            noise = torch.randn(
                x0.shape, generator=self.generator, device=self.generator.device, dtype=x0.dtype
            )
        noise = noise.to(x0.device)
        abar = self.alphas_cumprod.to(x0.device)[t.to(x0.device)].to(x0.dtype)
        z_t = add_noise(x0, noise, abar)
        with torch.no_grad():
            pred = predict_noise(z_t, t.to(x0.device), text)
        eps_hat = classifier_free_guidance(pred, self.config.guidance_scale)
        grad = sds_gradient(eps_hat.to(x0.dtype), noise, abar, self.config.weighting)
        if self.config.grad_clip is not None:
            grad = grad.clamp(-self.config.grad_clip, self.config.grad_clip)
        return torch.nan_to_num(grad), t


def pull_back(model_input: Tensor, images: Tensor, model_grad: Tensor) -> Tensor:
    """Map a gradient w.r.t. the model's input (pixels in [-1, 1] or VAE latents) back to the rendered images
    by backpropagating through the resize/encode that produced `model_input` from `images`."""
    (image_grad,) = torch.autograd.grad(model_input, images, grad_outputs=model_grad.to(model_input.dtype))
    return image_grad.detach()
