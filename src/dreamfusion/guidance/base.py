"""Score Distillation Sampling (paper sec. 3, eq. 3) and the interface every guidance backend implements.

A guidance takes a batch of rendered images and returns d(loss)/d(image): a detached tensor of the images'
shape. The trainer multiplies it into the images (`(grad * images).sum()`) and backpropagates into the 3D
parameters; it never sees latents, timesteps or noise. Latent-space priors map their latent gradient back to
pixels inside themselves, through the VAE encoder.

Classifier-free guidance follows the paper: eps_hat = (1 + omega) eps_cond - omega eps_uncond, which is
eps_cond + omega (eps_cond - eps_uncond), with omega = 100. stable-dreamfusion writes
eps_uncond + s (eps_cond - eps_uncond), i.e. its s = 100 is our omega = 99: one lower than the paper.
threestudio uses the paper's form.

Options beyond the paper (issue #20), each off by default and in the `paper` preset, each a `guidance.sds`
setting shared by every diffusion backend (builtin, Stable Diffusion, IF):

- `score: csd`: Classifier Score Distillation (Yu et al. 2023) keeps only the guidance term,
  w(t) omega (eps_cond - eps_uncond), and drops eps_cond - eps; omega = 0 gives no gradient at all.
- `perp_neg`: Perp-Neg (Armandpour et al. 2023) for view prompts: the embeddings of the other views act as
  negative prompts (guidance/embeddings.py picks them and their weights by azimuth), and only the part of
  each negative direction that is perpendicular to the positive one is subtracted (`perp_neg_guidance`).
  A negative parallel to the positive therefore removes nothing.
- `grad_clip` with `grad_clip_end`: D-SDS's score debiasing (Hong et al. 2023), an elementwise clip of
  the model-space gradient whose threshold rises linearly over `grad_clip_steps` (its prompt debiasing is
  `prompt.debias`, prompts.py).
- `t_schedule`: `random` (the paper: t ~ U(t_min, t_max), optionally with t_max annealed linearly to
  `t_max_end` over `t_anneal_steps`) or `dreamtime` (Huang et al. 2023): one t per step, decreasing
  monotonically from t_max to t_min over `t_anneal_steps` so that equal numbers of steps cover equal mass
  of a prior over t centred on the middle timesteps (`dreamtime_timestep`).
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
    """The halves of one classifier-free-guidance batch, by name rather than by chunk order."""

    cond: Tensor  # (B, C, h, w) noise predicted with the prompt
    uncond: Tensor  # (B, C, h, w) noise predicted with the negative / empty prompt
    negatives: Tensor | None = None  # (B, K, C, h, w) with Perp-Neg's negative prompts, else None
    negative_weights: Tensor | None = None  # (B, K)


@dataclass(frozen=True)
class TextEmbeddings:
    """Per-image text conditioning for one guidance call, already on the prior's device and dtype."""

    cond: Tensor  # (B, L, D)
    uncond: Tensor  # (B, L, D)
    negatives: Tensor | None = None  # (B, K, L, D) Perp-Neg's negative prompts per image, else None
    negative_weights: Tensor | None = None  # (B, K) the weight of each


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
Score = Literal["sds", "csd"]
TimestepSchedule = Literal["random", "dreamtime"]


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
    t_anneal_steps: int = 0  # ... over this many steps (also the length of the dreamtime schedule)
    t_schedule: TimestepSchedule = "random"  # or "dreamtime": one decreasing t per step (module docstring)
    dreamtime_mean: float = 0.5  # the prior over t/T: a Gaussian at this mean ...
    dreamtime_std_above: float = 0.125  # ... with this spread above it (t/T > mean) ...
    dreamtime_std_below: float = 0.1  # ... and this one below (DreamTime's m = 500, s1 = 125, s2 = 100)
    grad_clip: float | None = None  # optional elementwise clip of the model-space gradient (off in the paper)
    grad_clip_end: float | None = None  # D-SDS: the clip threshold rises linearly to this ...
    grad_clip_steps: int = 0  # ... over this many steps
    score: Score = "sds"  # or "csd": the guidance term alone (Classifier Score Distillation)
    perp_neg: float = 0.0  # > 0: Perp-Neg with the other views' prompts as negatives, at this weight

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
        if self.score not in ("sds", "csd"):
            raise ValueError(f"score must be 'sds' or 'csd', got {self.score!r}")
        if self.t_schedule not in ("random", "dreamtime"):
            raise ValueError(f"t_schedule must be 'random' or 'dreamtime', got {self.t_schedule!r}")
        if self.t_schedule == "dreamtime" and self.t_anneal_steps <= 0:
            raise ValueError(
                "t_schedule=dreamtime needs guidance.sds.t_anneal_steps > 0 (the schedule's length, "
                "e.g. the run's train.steps)"
            )
        if min(self.dreamtime_std_above, self.dreamtime_std_below) <= 0:
            raise ValueError("dreamtime_std_above and dreamtime_std_below must be > 0")
        if self.grad_clip_end is not None and (self.grad_clip is None or self.grad_clip_end <= 0):
            raise ValueError("grad_clip_end needs grad_clip (the starting threshold) and must be > 0")
        if self.grad_clip_steps < 0:
            raise ValueError("grad_clip_steps must be >= 0")
        if self.perp_neg < 0:
            raise ValueError("perp_neg must be >= 0 (0 turns Perp-Neg off)")


def perpendicular(vectors: Tensor, onto: Tensor) -> Tensor:
    """The part of each vectors[b, k] perpendicular to onto[b] (both flattened per image)."""
    flat_v, flat_o = vectors.flatten(2), onto.flatten(1)[:, None]
    along = (flat_v * flat_o).sum(-1, keepdim=True) / flat_o.square().sum(-1, keepdim=True).clamp_min(1e-20)
    return (flat_v - along * flat_o).view_as(vectors)


def perp_neg_guidance(pred: NoisePrediction) -> Tensor:
    """Perp-Neg's guidance direction: (eps_cond - eps_uncond) minus, for each negative prompt k, its weight
    times the part of (eps_neg_k - eps_uncond) perpendicular to (eps_cond - eps_uncond)."""
    positive = pred.cond - pred.uncond
    if pred.negatives is None:
        return positive
    if pred.negative_weights is None:
        raise ValueError("negative prompts need their weights")
    negative = perpendicular(pred.negatives - pred.uncond[:, None], positive)
    weights = pred.negative_weights.view(*pred.negative_weights.shape, *([1] * (positive.dim() - 1)))
    return positive - (weights.to(positive.dtype) * negative).sum(1)


def guidance_term(pred: NoisePrediction, guidance_scale: float) -> Tensor:
    """omega (eps_cond - eps_uncond), with Perp-Neg's correction when the prediction has negatives."""
    return guidance_scale * perp_neg_guidance(pred)


def classifier_free_guidance(pred: NoisePrediction, guidance_scale: float) -> Tensor:
    """eps_hat = (1 + omega) eps_cond - omega eps_uncond (paper, sec. 2), with Perp-Neg given negatives."""
    return pred.cond + guidance_term(pred, guidance_scale)


def dreamtime_timestep(step: int, config: SDSConfig, num_train_timesteps: int) -> int:
    """DreamTime's t at `step`: the largest t in [t_min, t_max] (as training timesteps) such that the prior's
    mass at or above t is at least step / t_anneal_steps, so t falls from t_max to t_min and spends more steps
    where the prior is heavy. With a flat prior (huge spreads) it falls linearly."""
    last = num_train_timesteps - 1
    t_lo, t_hi = int(round(config.t_min * last)), int(round(config.t_max * last))
    t = torch.arange(t_lo, t_hi + 1, dtype=torch.float64)
    x = t / last - config.dreamtime_mean
    spread = torch.where(
        x > 0, torch.tensor(config.dreamtime_std_above), torch.tensor(config.dreamtime_std_below)
    )
    prior = torch.exp(-0.5 * (x / spread.double()).square())
    mass_above = prior.flip(0).cumsum(0).flip(0) / prior.sum()  # mass_above[i]: share at or above t[i]
    frac = min(max(step / config.t_anneal_steps, 0.0), 1.0)
    index = int((mass_above >= frac - 1e-12).nonzero().max())
    return int(t[index])


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

    def clip_threshold(self, step: int) -> float | None:
        """The elementwise gradient clip at `step`: grad_clip, rising linearly to grad_clip_end (D-SDS)."""
        c = self.config
        if c.grad_clip is None or c.grad_clip_end is None or c.grad_clip_steps <= 0:
            return c.grad_clip
        frac = min(max(step / c.grad_clip_steps, 0.0), 1.0)
        return c.grad_clip + frac * (c.grad_clip_end - c.grad_clip)

    def sample_timesteps(self, batch: int, step: int) -> Tensor:
        """One integer timestep per image, uniform in the current range (threestudio's choice; the paper's
        four TPU chips each rendered one view with its own t); with t_schedule=dreamtime, the step's own t
        for every image, drawing nothing."""
        if self.config.t_schedule == "dreamtime":
            t = dreamtime_timestep(step, self.config, self.num_train_timesteps)
            return torch.full((batch,), t, dtype=torch.long, device=self.generator.device)
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
        guided = guidance_term(pred, self.config.guidance_scale).to(x0.dtype)
        if self.config.score == "csd":  # the guidance term alone: w(t) omega (eps_cond - eps_uncond)
            grad = sds_weight(abar, self.config.weighting).view(-1, *([1] * (x0.dim() - 1))) * guided
        else:
            grad = sds_gradient(pred.cond.to(x0.dtype) + guided, noise, abar, self.config.weighting)
        clip = self.clip_threshold(step)
        if clip is not None:
            grad = grad.clamp(-clip, clip)
        return torch.nan_to_num(grad), t


def pull_back(model_input: Tensor, images: Tensor, model_grad: Tensor) -> Tensor:
    """Map a gradient w.r.t. the model's input (pixels in [-1, 1] or VAE latents) back to the rendered images
    by backpropagating through the resize/encode that produced `model_input` from `images`."""
    (image_grad,) = torch.autograd.grad(model_input, images, grad_outputs=model_grad.to(model_input.dtype))
    return image_grad.detach()
