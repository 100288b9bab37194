"""The judge's config and its two towers (the package's docstring describes them)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import CLIPTextModel, PreTrainedTokenizerBase

from dreamfusion.evaluation.classifier import conv_stages
from dreamfusion.prior.model import small_clip_text_config
from dreamfusion.world import PRIOR_BACKGROUND_COLOURFULNESS, WorldBatchConfig, vocabulary


@dataclass(frozen=True)
class JudgeConfig:
    resolution: int = 64  # the NeRF's render size on a CPU; other sizes are resized to this
    # Image tower, after the 2x2 space-to-depth: 32 -> 16 -> 8 -> 4 -> 2 px.
    channels: tuple[int, ...] = (32, 64, 128, 128)
    convs_per_stage: int = 2
    embed_dim: int = 128
    # Text tower: world captions are short and regular (under 20 CLIP tokens), as for the prior's encoder.
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    max_tokens: int = 32
    initial_temperature: float = 0.07  # CLIP's
    # Training: renders are made once (about 9 ms each at 64 px on one CPU thread), then each is seen
    # steps * batch_size / train_images times (about 13 with the defaults).
    train_images: int = 20000
    batch_size: int = 128
    learning_rate: float = 2e-3  # AdamW; warm-up over the first 10 % of steps, then cosine to 0
    weight_decay: float = 0.05  # on weight matrices and conv kernels only
    shift_px: int = 4  # random shifts and mirroring (classifier.augment): neither changes a caption
    canonical_fraction: float = 0.75  # captions without template or synonym, as the evaluation asks
    # Relative weights of white, muted solid (the NeRF's "solid" backgrounds, as the builtin preset colours
    # them) and the world's backgrounds (solid or gradient, any colour).
    background_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    muted_colourfulness: float = PRIOR_BACKGROUND_COLOURFULNESS
    # Cameras, lights, tracer and shading mix (albedo, lambertian, textureless: the paper's after warm-up).
    world: WorldBatchConfig = field(default_factory=WorldBatchConfig)

    def __post_init__(self) -> None:
        for name in ("resolution", "convs_per_stage", "embed_dim", "train_images", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.resolution % 2 ** (len(self.channels) + 1):
            raise ValueError(f"resolution {self.resolution} does not halve {len(self.channels) + 1} times")
        if not self.channels or min(self.channels) < 1:
            raise ValueError("channels must list at least one positive width")
        if self.text_width % self.text_heads:
            raise ValueError("text_width must be a multiple of text_heads")
        if not 0.0 < self.initial_temperature <= 1.0:
            raise ValueError("initial_temperature must be in (0, 1]")
        if not 0.0 <= self.canonical_fraction <= 1.0:
            raise ValueError("canonical_fraction must be in [0, 1]")
        if len(self.background_weights) != 3 or min(self.background_weights) < 0:
            raise ValueError("background_weights are three non-negative weights: white, muted, world")
        if sum(self.background_weights) <= 0:
            raise ValueError("background_weights must not all be zero")


@dataclass(frozen=True)
class JudgeTraining:
    """How a judge was trained: what its model card reports."""

    steps: int
    seed: int
    render_s: float  # wall-clock time of rendering the training images
    train_s: float  # wall-clock time of the optimisation steps
    final_loss: float  # mean loss of the last 10 % of steps


# ---- the model ----


def world_token_ids(tokenizer: PreTrainedTokenizerBase) -> Tensor:
    """The tokenizer ids of every word world captions use (colours, nouns, relations, templates, views,
    punctuation) and the special tokens, sorted, with the end token last: the rows of the text tower."""
    vocab = vocabulary()
    words = {"a", "an", ",", ".", "view", *vocab.colours, *vocab.views}
    words |= {w for nouns in vocab.kinds.values() for noun in nouns for w in noun.split()}
    words |= {w for phrases in vocab.relations.values() for phrase in phrases for w in phrase.split()}
    words |= {w for template in vocab.templates for w in template.replace("{}", " ").split()}
    ids = {i for row in tokenizer(sorted(words))["input_ids"] for i in row}
    ids |= {tokenizer.bos_token_id, tokenizer.pad_token_id}
    # Last, so that its row is the largest: CLIPTextModel pools at the end token either by its id or, for
    # configs whose eos_token_id is 2, at the largest id of each sequence.
    end = tokenizer.eos_token_id
    return torch.tensor([*sorted(ids - {end}), end], dtype=torch.long)


class WorldJudge(nn.Module):
    """Both towers; embeddings are unit vectors of config.embed_dim. Follows evaluation.image_text's
    `ImageTextModel` protocol (name, embed_images, embed_texts)."""

    def __init__(
        self,
        config: JudgeConfig,
        tokenizer: PreTrainedTokenizerBase,
        token_ids: Tensor,
        name: str = "world judge",
    ):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.name = name
        self.training_record: JudgeTraining | None = None
        self.image_features = nn.Sequential(
            nn.PixelUnshuffle(2), *conv_stages(12, config.channels, config.convs_per_stage)
        )
        self.image_projection = nn.Linear(config.channels[-1], config.embed_dim)
        # Tokenizer id -> row of the text tower's token table; row 0 is every token no world caption has.
        self.register_buffer("token_ids", token_ids.clone())
        rows = torch.zeros(len(tokenizer), dtype=torch.long)
        rows[token_ids] = torch.arange(1, len(token_ids) + 1)
        self.register_buffer("token_rows", rows, persistent=False)

        def row(token_id: int) -> int:
            return int(rows[token_id])

        text_config = small_clip_text_config(
            len(token_ids) + 1,
            config.text_width,
            config.text_layers,
            config.text_heads,
            config.max_tokens,
            row(tokenizer.bos_token_id),
            row(tokenizer.eos_token_id),
            row(tokenizer.pad_token_id),
        )
        self.text_encoder = CLIPTextModel(text_config)
        self.text_projection = nn.Linear(config.text_width, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.initial_temperature)))

    def image_embeddings(self, images: Tensor) -> Tensor:
        """(B, H, W, 3) in [0, 1] at config.resolution -> (B, D) unit vectors."""
        x = self.image_features(images.permute(0, 3, 1, 2) * 2.0 - 1.0).mean(dim=(2, 3))
        return F.normalize(self.image_projection(x), dim=-1)

    def text_embeddings(self, texts: Sequence[str]) -> Tensor:
        """B texts -> (B, D) unit vectors."""
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.config.max_tokens, return_tensors="pt"
        )
        rows = self.token_rows[tokens["input_ids"]]
        pooled = self.text_encoder(input_ids=rows, attention_mask=tokens["attention_mask"]).pooler_output
        return F.normalize(self.text_projection(pooled), dim=-1)

    def logits(self, image_embeddings: Tensor, text_embeddings: Tensor) -> Tensor:
        """(B, B) similarities scaled by the learned inverse temperature, capped at 100 as CLIP caps it."""
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        return scale * image_embeddings @ text_embeddings.T

    @torch.no_grad()
    def embed_images(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """(N, H, W, 3) RGB in [0, 1] -> (N, D) unit vectors; other sizes are resized to config.resolution."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"need (N, H, W, 3) images, got {tuple(images.shape)}")
        self.eval()
        size = self.config.resolution
        out = []
        for batch in images.float().cpu().split(batch_size):
            if batch.shape[1:3] != (size, size):
                x = F.interpolate(batch.permute(0, 3, 1, 2), (size, size), mode="bilinear", antialias=True)
                batch = x.clamp(0, 1).permute(0, 2, 3, 1)
            out.append(self.image_embeddings(batch))
        return torch.cat(out) if out else torch.zeros(0, self.config.embed_dim)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        """N texts -> (N, D) unit vectors."""
        self.eval()
        texts = list(texts)
        out = [self.text_embeddings(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.config.embed_dim)


def build_judge(config: JudgeConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> WorldJudge:
    """Freshly initialised; the same seed gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WorldJudge(config, tokenizer, world_token_ids(tokenizer))
