"""Writing the built-in prior as a diffusers folder in DeepFloyd IF stage I's layout, and loading it back.

The pixel-space guidance backend (guidance/pixel_diffusion.py) reads exactly this layout, so the prior needs
no guidance class of its own: model_index.json, text_encoder/ (CLIPTextModel), tokenizer/ (CLIPTokenizer),
unet/ (UNet2DConditionModel, 3 output channels) and scheduler/ (DDPMScheduler, cosine betas).
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, PreTrainedTokenizerBase

from dreamfusion.prior.model import load_tokenizer

WEIGHT_FILES = ("text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors")

# The pipeline class names only the layout; the guidance backend reads the components, never this class.
MODEL_INDEX = {
    "_class_name": "IFPipeline",
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "scheduler": ["diffusers", "DDPMScheduler"],
    "safety_checker": [None, None],
    "feature_extractor": [None, None],
    "watermarker": [None, None],
    "requires_safety_checker": False,
}


@dataclass(frozen=True)
class LoadedPrior:
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    tokenizer: PreTrainedTokenizerBase
    scheduler_folder: Path  # a sampler class of the caller's choice is built from its config
    vae: AutoencoderKL | None = None  # a latent prior's (Stable Diffusion layout); None for a pixel prior


def export_prior(
    folder: Path,
    text_encoder: CLIPTextModel,
    unet: UNet2DConditionModel,
    scheduler: DDPMScheduler,
    tokenizer_folder: Path,
    max_tokens: int,
    dtype: torch.dtype,
) -> dict[str, str]:
    """Write the folder (replacing one that exists) and return the sha256 of each weight file.

    The tokenizer files are copied, with model_max_length set to the text encoder's context, which is how
    the guidance backend knows how long to pad prompts."""
    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # save_pretrained writes safetensors in the module's dtype: cast copies, never the training modules.
    _cast_copy(text_encoder, dtype).save_pretrained(staging / "text_encoder")
    _cast_copy(unet, dtype).save_pretrained(staging / "unet")
    scheduler.save_pretrained(staging / "scheduler")
    shutil.copytree(tokenizer_folder, staging / "tokenizer")
    config_path = staging / "tokenizer" / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text(encoding="utf-8"))
    tokenizer_config["model_max_length"] = max_tokens
    config_path.write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n", "utf-8")
    index = {"_class_name": MODEL_INDEX["_class_name"], "_diffusers_version": diffusers.__version__}
    index.update({k: v for k, v in MODEL_INDEX.items() if k != "_class_name"})
    (staging / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    # Replaced only once complete, so an interrupted export never leaves a half-written prior behind.
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return weight_digests(folder)


def weight_digests(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in WEIGHT_FILES}


def load_prior(folder: Path, dtype: torch.dtype = torch.float32) -> LoadedPrior:
    """The exported networks in eval mode (weights stored in fp16 are cast to `dtype`); the autoencoder too
    when the folder has one (a latent prior in Stable Diffusion's layout)."""
    folder = Path(folder)
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=dtype).eval()
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype).eval()
    vae = None
    if (folder / "vae").is_dir():
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype).eval()
    return LoadedPrior(text_encoder, unet, load_tokenizer(folder / "tokenizer"), folder / "scheduler", vae)


def _cast_copy(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    # Cast tensor by tensor: diffusers' `.to(dtype)` would do the same but
    # warns that some modules should stay in float32, which holds for none of this prior's.
    copied = copy.deepcopy(module)
    for tensor in [*copied.parameters(), *copied.buffers()]:
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(dtype)
    return copied
