"""A text encoder that knows the world's words before the U-Net trains (issue #15).

Stable Diffusion conditions on a frozen CLIP text tower and Imagen on a frozen T5: the U-Net then does not
have to learn what the words mean from the denoising loss alone. Here a small `CLIPTextModel` is trained
contrastively (CLIP's loss, Radford et al. 2021) against an image tower of its own on the fixed set of world
renders, then frozen while the U-Net trains. Only the text tower is shipped.

- The set holds no held-out composition (`world.sample_training_batch` never draws one).
- It has its own seed, and it is not the world judge (evaluation/judge/): the paper warns against
  scoring with the model that guided.
- A batch of world renders holds many images of the same scene, so CLIP's one-positive softmax would push
  apart captions that describe their images equally well. Every pair that shows the same scene from the same
  view word counts as positive, with the target probability spread over them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import CLIPTextModel, PreTrainedTokenizerBase

from dreamfusion.checkpoint import Checkpoint
from dreamfusion.config import dump_yaml
from dreamfusion.prior.dataset import Dataset
from dreamfusion.prior.model import small_clip_text_config
from dreamfusion.prior.stage import LoopConfig
from dreamfusion.training.schedules import WarmupCosine


@dataclass(frozen=True)
class TextEncoderConfig:
    width: int = 128  # the CLIP embedding table is 49,408 x this: the largest single tensor
    layers: int = 3  # world captions are short and regular
    heads: int = 4
    max_tokens: int = 32  # the longest world caption is under 20 CLIP tokens


@dataclass(frozen=True)
class TextPretrainConfig:
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=3000))
    batch_size: int = 256
    learning_rate: float = 1e-3
    warmup_fraction: float = 0.05
    weight_decay: float = 0.1
    image_channels: tuple[int, ...] = (32, 64, 128, 256)
    seed: int = 23  # its own: not the judge's, the U-Net's or the autoencoder's


def build_text_encoder(
    config: TextEncoderConfig, tokenizer: PreTrainedTokenizerBase, seed: int
) -> CLIPTextModel:
    text = small_clip_text_config(
        len(tokenizer),
        config.width,
        config.layers,
        config.heads,
        config.max_tokens,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModel(text)


class ImageTower(nn.Module):
    """A small CNN to an embedding: strided 3x3 convolutions, GroupNorm, SiLU, then the mean over space."""

    def __init__(self, channels: tuple[int, ...], out: int):
        super().__init__()
        layers: list[nn.Module] = []
        previous = 3
        for i, c in enumerate(channels):
            layers += [
                nn.Conv2d(previous, c, 3, stride=1 if i == 0 else 2, padding=1),
                nn.GroupNorm(8, c),
                nn.SiLU(),
            ]
            previous = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(previous, out)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images).mean((2, 3)))


def pair_keys(captions: np.ndarray, scene_ids: np.ndarray) -> np.ndarray:
    """One integer per (scene, view word) pair: images with equal keys fit each other's captions."""
    views = np.array([c.rsplit(",", 1)[1].strip() if "," in c else "" for c in captions])
    _, view_ids = np.unique(views, return_inverse=True)
    return scene_ids.astype(np.int64) * 16 + view_ids


def contrastive_loss(image: Tensor, text: Tensor, keys: Tensor, log_scale: Tensor) -> Tensor:
    """CLIP's symmetric cross-entropy with every same-key pair a positive (targets spread evenly)."""
    logits = log_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    positive = (keys[:, None] == keys[None, :]).float()
    target = positive / positive.sum(1, keepdim=True)
    return 0.5 * (
        -(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.log_softmax(0).T).sum(1).mean()
    )


class TextPretrainStage:
    def __init__(self, config: TextPretrainConfig, data: Dataset, tokenizer: PreTrainedTokenizerBase):
        self.config = config
        self.data = data
        self.tokenizer = tokenizer
        self.keys = torch.from_numpy(pair_keys(data.captions, data.scene_ids))
        self.text_encoder = build_text_encoder(config.text, tokenizer, config.seed).train()
        width = config.text.width
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + 1)
            self.image_tower = ImageTower(config.image_channels, width)
            self.text_head = nn.Linear(width, width, bias=False)
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))  # CLIP's initial temperature
        parameters = [
            *self.text_encoder.parameters(),
            *self.image_tower.parameters(),
            *self.text_head.parameters(),
            self.log_scale,
        ]
        self.optimizer = torch.optim.AdamW(
            parameters, lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.schedule = WarmupCosine(
            config.loop.steps, config.warmup_fraction, start=0.0, end=0.05, restarts=config.loop.restarts
        )
        self.data_generator = torch.Generator().manual_seed(config.seed + 2)
        self.step = 0
        self.elapsed_s = 0.0

    def tokenize(self, captions: list[str]) -> Tensor:
        return tokenize(self.tokenizer, captions, self.config.text.max_tokens)

    def update(self) -> dict[str, float]:
        index = torch.randint(0, len(self.data), (self.config.batch_size,), generator=self.data_generator)
        images = self.data.batch(index)
        captions = [str(c) for c in self.data.captions[index.numpy()]]
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.learning_rate * self.schedule(self.step)
        text = self.text_head(self.text_encoder(self.tokenize(captions)).pooler_output)
        loss = contrastive_loss(self.image_tower(images), text, self.keys[index], self.log_scale)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.log_scale.clamp_(max=float(np.log(100.0)))  # CLIP's cap on the logit scale
        self.step += 1
        return {"loss": float(loss.detach()), "scale": float(self.log_scale.detach().exp())}

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(
            step=self.step,
            modules={
                "text_encoder": self.text_encoder.state_dict(),
                "image_tower": self.image_tower.state_dict(),
                "text_head": self.text_head.state_dict(),
                "log_scale": {"value": self.log_scale.detach()},
            },
            optimizer=self.optimizer.state_dict(),
            rng={"data": self.data_generator.get_state()},
            meta={"config": dump_yaml(self.config), "elapsed_s": repr(self.elapsed_s)},
        )

    def restore(self, ckpt: Checkpoint) -> None:
        self.text_encoder.load_state_dict(ckpt.modules["text_encoder"])
        self.image_tower.load_state_dict(ckpt.modules["image_tower"])
        self.text_head.load_state_dict(ckpt.modules["text_head"])
        with torch.no_grad():
            self.log_scale.copy_(ckpt.modules["log_scale"]["value"])
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.data_generator.set_state(ckpt.rng["data"])
        self.step = ckpt.step
        self.elapsed_s = float(ckpt.meta.get("elapsed_s", "0"))

    def export(self, folder: Path) -> None:
        """The text tower alone, in transformers' folder format; the image tower was only its teacher."""
        self.text_encoder.eval().save_pretrained(folder, safe_serialization=True)

    @torch.no_grad()
    def retrieval_accuracy(self, images: Tensor, captions: list[str], keys: Tensor) -> float:
        """Share of images whose best-matching caption in the batch has their key: the stage's health."""
        self.text_encoder.eval(), self.image_tower.eval()
        text = F.normalize(self.text_head(self.text_encoder(self.tokenize(captions)).pooler_output), dim=-1)
        image = F.normalize(self.image_tower(images), dim=-1)
        best = (image @ text.T).argmax(1)
        self.text_encoder.train(), self.image_tower.train()
        return float((keys[best] == keys).float().mean())


def tokenize(tokenizer: PreTrainedTokenizerBase, captions: list[str], max_tokens: int) -> Tensor:
    """Padded to the context exactly as the guidance backends pad prompts."""
    return tokenizer(
        captions, padding="max_length", max_length=max_tokens, truncation=True, return_tensors="pt"
    )["input_ids"]
