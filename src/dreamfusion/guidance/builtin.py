"""The `builtin` kind: the prior that ships inside the package (prior/builtin/), no download. Its folder's
layout names the backend that loads it: Stable Diffusion's for a latent prior, IF stage I's for pixels.
Either way renders are drawn at the prior's own image size; words it has never seen are a warning."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dreamfusion.files import dreamfusion_cache

if TYPE_CHECKING:
    from dreamfusion.guidance import GuidanceConfig, GuidanceContext
    from dreamfusion.guidance.base import Guidance


def build(config: GuidanceConfig, context: GuidanceContext) -> Guidance:
    """The shipped weights, checked against their sha256, assembled once with a tokenizer under
    `context.cache` (default the dreamfusion cache)."""
    from dreamfusion.guidance.hub import quiet_diffusers_and_transformers
    from dreamfusion.guidance.pixel_diffusion import PixelDiffusionGuidance
    from dreamfusion.guidance.stable_diffusion import StableDiffusionGuidance
    from dreamfusion.prior.builtin import builtin_prior_folder, is_latent

    quiet_diffusers_and_transformers()
    folder = builtin_prior_folder(context.cache or dreamfusion_cache())
    backend = StableDiffusionGuidance if is_latent(folder) else PixelDiffusionGuidance
    guidance = backend(str(folder), config.sds, context.device, context.dtype, context.seed)
    guidance.render_size = guidance.image_size
    guidance.warnings = unknown_words_warning(context.prompt or "")
    return guidance


def unknown_words_warning(prompt: str) -> tuple[str, ...]:
    """The built-in prior knows only the procedural world's words; others still run, with a warning."""
    from dreamfusion.world import unknown_words

    unknown = unknown_words(prompt)
    if not unknown:
        return ()
    words = "the word" if len(unknown) == 1 else "the words"
    listed = ", ".join(repr(w) for w in unknown)
    return (
        f"the built-in prior has never seen {words} {listed}; it knows a small world of coloured shapes "
        "(see: dreamfusion prior vocab)",
    )
