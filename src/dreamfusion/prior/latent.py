"""The latent prior's run folder and its stages, in order (issue #15):

    ROOT/dataset/     the fixed set of world renders (dataset.py), rendered once on every core
    ROOT/tokenizer/   CLIP's BPE vocabulary, read from the pinned open-clip wheel (tokenizer.py)
    ROOT/vae/         the autoencoder's run: config.yaml, checkpoints/, metrics.jsonl, model/
    ROOT/text/        the text encoder's contrastive run, the same files
    ROOT/latents.npz  the set's latents, encoded once by the finished autoencoder
    ROOT/unet/        the latent U-Net's run, the same files; model/ holds unet/ and scheduler/
    ROOT/model/       the prior in Stable Diffusion's diffusers layout, loaded by guidance/stable_diffusion.py

Each stage is resumable (stage.py): run its command again and it continues from its last checkpoint. A
stage's settings are fixed when it starts; `--set` overrides apply to a new stage only.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from dreamfusion.config import apply_overrides, dump_yaml, from_dict, load_yaml_overrides
from dreamfusion.errors import UserError
from dreamfusion.files import atomic_path, write_text_atomic
from dreamfusion.prior.autoencoder import AutoencoderStage, AutoencoderTrainConfig, encode_means
from dreamfusion.prior.dataset import load_dataset
from dreamfusion.prior.latent_unet import LatentUNetStage, LatentUNetTrainConfig
from dreamfusion.prior.model import load_tokenizer
from dreamfusion.prior.stage import resume_stage, run_stage
from dreamfusion.prior.text_pretrain import TextPretrainConfig, TextPretrainStage

CONFIG = "config.yaml"
MODEL = "model"
T = TypeVar("T")


@dataclass(frozen=True)
class LatentRun:
    root: Path

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def vae(self) -> Path:
        return self.root / "vae"

    @property
    def text(self) -> Path:
        return self.root / "text"

    @property
    def latents(self) -> Path:
        return self.root / "latents.npz"

    @property
    def unet(self) -> Path:
        return self.root / "unet"

    @property
    def model(self) -> Path:
        return self.root / MODEL


def stage_config(folder: Path, default: T, overrides: Sequence[str]) -> T:
    """The stage's settings: those it started with, or the defaults with `overrides` for a new stage."""
    path = folder / CONFIG
    if path.is_file():
        if overrides:
            raise UserError(f"{folder} has started with the settings in {path}; --set cannot change them")
        return from_dict(type(default), load_yaml_overrides(path))
    config = apply_overrides(default, overrides)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, dump_yaml(config))
    return config


STAGE_CONFIGS: dict[str, type] = {
    "vae": AutoencoderTrainConfig,
    "text": TextPretrainConfig,
    "unet": LatentUNetTrainConfig,
}


def extend_stage(run: LatentRun, stage: str, steps: int) -> None:
    """Train a started stage further, to `steps` in all: its schedule starts over at its current end (a warm
    restart), and a finished stage's exported model is kept as model-stepN beside the new one."""
    folder = run.root / stage
    path = folder / CONFIG
    if not path.is_file():
        raise UserError(f"{folder} has not started: --extend-to trains a started stage further")
    config = from_dict(STAGE_CONFIGS[stage], load_yaml_overrides(path))
    loop = config.loop
    if steps <= loop.steps:
        raise UserError(f"--extend-to {steps} must be more than the {loop.steps} steps {folder} already has")
    if stage == "vae" and run.latents.is_file():
        raise UserError(f"{run.latents} was encoded by this autoencoder; move it away to extend {folder}")
    if (folder / MODEL).is_dir():
        kept = folder / f"{MODEL}-step{loop.steps}"
        if kept.exists():
            raise UserError(f"{kept} already exists; move it away to extend {folder} again")
        (folder / MODEL).rename(kept)
    longer = replace(loop, steps=steps, restarts=(*loop.restarts, loop.steps))
    write_text_atomic(path, dump_yaml(replace(config, loop=longer)))


def require(path: Path, what: str, command: str) -> Path:
    if not path.exists():
        raise UserError(f"{what} is missing ({path}): run `dreamfusion prior latent {command}` first")
    return path


def train_autoencoder(
    run: LatentRun, overrides: Sequence[str], max_minutes: float | None, progress: bool
) -> bool:
    config = stage_config(run.vae, AutoencoderTrainConfig(), overrides)
    data = load_dataset(require(run.dataset, "the rendered set", "dataset"))
    stage = resume_stage(AutoencoderStage(config, data), run.vae)
    return run_stage(stage, run.vae, config.loop, max_minutes, progress, run.vae / MODEL, config.batch_size)


def train_text_encoder(
    run: LatentRun, overrides: Sequence[str], max_minutes: float | None, progress: bool
) -> bool:
    config = stage_config(run.text, TextPretrainConfig(), overrides)
    data = load_dataset(require(run.dataset, "the rendered set", "dataset"))
    tokenizer = load_tokenizer(require(run.tokenizer, "the tokenizer", "dataset"))
    stage = resume_stage(TextPretrainStage(config, data, tokenizer), run.text)
    return run_stage(stage, run.text, config.loop, max_minutes, progress, run.text / MODEL, config.batch_size)


def encode_latents(run: LatentRun) -> Path:
    """The set's posterior means times the scaling factor, once: (N, 4, 8, 8) float16 and the captions."""
    from diffusers import AutoencoderKL

    if run.latents.is_file():
        return run.latents
    vae = AutoencoderKL.from_pretrained(require(run.vae / MODEL, "the trained autoencoder", "vae")).eval()
    data = load_dataset(run.dataset)
    means = encode_means(vae, data, np.arange(len(data)))
    latents = (means * vae.config.scaling_factor).half().numpy()
    with atomic_path(run.latents) as temp:
        np.savez(temp, latents=latents, captions=data.captions)
    return run.latents


def train_unet(run: LatentRun, overrides: Sequence[str], max_minutes: float | None, progress: bool) -> bool:
    from transformers import CLIPTextModel

    config = stage_config(run.unet, LatentUNetTrainConfig(), overrides)
    with np.load(require(run.latents, "the encoded latents", "encode")) as stored:
        latents = torch.from_numpy(stored["latents"].astype(np.float32))
        captions = stored["captions"]
    text_encoder = CLIPTextModel.from_pretrained(require(run.text / MODEL, "the text encoder", "text"))
    tokenizer = load_tokenizer(run.tokenizer)
    max_tokens = int(text_encoder.config.max_position_embeddings)
    stage = LatentUNetStage(config, latents, captions, text_encoder, tokenizer, max_tokens)
    resume_stage(stage, run.unet)
    return run_stage(stage, run.unet, config.loop, max_minutes, progress, run.unet / MODEL, config.batch_size)


def set_tokenizer_context(folder: Path, max_tokens: int) -> None:
    """Record the text encoder's context as the tokenizer's model_max_length: how far the guidance backends
    and the sampler pad prompts."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["model_max_length"] = max_tokens
    write_text_atomic(path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def model_index() -> dict[str, Any]:
    """Stable Diffusion's model_index.json, naming the components this prior has."""
    return {
        "_class_name": "StableDiffusionPipeline",
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }


def export_latent_prior(run: LatentRun, fp16: bool = True) -> Path:
    """ROOT/model: every stage's weights in Stable Diffusion's layout, fp16 by default (loading casts)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    dtype = torch.float16 if fp16 else torch.float32
    unet_model = require(run.unet / MODEL, "the trained U-Net", "unet")
    staging = run.model.with_name(f".{MODEL}.partial{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    UNet2DConditionModel.from_pretrained(unet_model / "unet").to(dtype).save_pretrained(staging / "unet")
    shutil.copytree(unet_model / "scheduler", staging / "scheduler")
    AutoencoderKL.from_pretrained(run.vae / MODEL).to(dtype).save_pretrained(staging / "vae")
    CLIPTextModel.from_pretrained(run.text / MODEL).to(dtype).save_pretrained(staging / "text_encoder")
    shutil.copytree(run.tokenizer, staging / "tokenizer")
    context = json.loads((staging / "text_encoder" / "config.json").read_text())["max_position_embeddings"]
    set_tokenizer_context(staging / "tokenizer", int(context))
    write_text_atomic(staging / "model_index.json", json.dumps(model_index(), indent=2) + "\n")
    if run.model.exists():
        shutil.rmtree(run.model)
    staging.rename(run.model)
    return run.model
