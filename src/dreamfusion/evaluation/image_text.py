"""Image-text models that score renders against captions: the judge of CLIP R-Precision (`rprecision.py`).

`ImageTextModel` is all the evaluation needs; `ClipImageText` implements it with a Hugging Face transformers
CLIP loaded from a hub id or a local `save_pretrained` folder (config.json, weights, tokenizer files,
preprocessor_config.json). The paper's Table 1 uses OpenAI's three CLIPs, named below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
import transformers
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from safetensors import SafetensorError
from torch import Tensor
from transformers import AutoTokenizer, CLIPModel

from dreamfusion.errors import UserError
from dreamfusion.guidance.components import freeze
from dreamfusion.guidance.hub import hub_offline

# OpenAI's CLIP B/32 on the Hugging Face hub, the first of the paper's Table 1 columns (all at 224 px); the
# others are openai/clip-vit-base-patch16 and openai/clip-vit-large-patch14, passed by id.
CLIP_B32 = "openai/clip-vit-base-patch32"

# PIL's resampling filter codes, as stored in preprocessor_config.json, and torch's nearest equivalents.
_RESAMPLE_MODES = {0: "nearest", 2: "bilinear", 3: "bicubic"}
_WEIGHT_PATTERNS = (
    "model*.safetensors",
    "pytorch_model*.bin",
    "*.safetensors.index.json",
    "*.bin.index.json",
)


class ImageTextModel(Protocol):
    """Embeds images and texts into one space in which cosine similarity says how well they match."""

    name: str  # what identifies the model in a report: a hub id or a folder

    def embed_images(self, images: Tensor) -> Tensor:
        """(N, H, W, 3) RGB in [0, 1] -> (N, D)."""
        ...

    def embed_texts(self, texts: Sequence[str]) -> Tensor:
        """N texts -> (N, D)."""
        ...


@dataclass(frozen=True)
class ClipPreprocess:
    """What a CLIPImageProcessor does to a picture, done on tensors: resize, centre crop, normalise.

    The processor itself takes PIL images or uint8 arrays one by one; renders are float tensors already, so
    its config is applied in torch, batched and on the model's device. Unlike the processor, values are not
    quantised to 8 bits before resizing.
    """

    shortest_edge: int | None  # resize so that the shorter side is this long (CLIP's processors)
    resize_hw: tuple[int, int] | None  # or resize to exactly (height, width); both None: no resize
    crop_hw: tuple[int, int] | None  # centre crop to (height, width); None: no crop
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    mode: str  # torch interpolation mode

    @classmethod
    def from_processor(cls, processor: Any) -> ClipPreprocess:
        size = processor.size if processor.do_resize else {}
        crop = processor.crop_size if processor.do_center_crop else {}
        shortest = size.get("shortest_edge")
        exact = (size["height"], size["width"]) if size.get("height") else None
        normalise = processor.do_normalize
        return cls(
            shortest_edge=shortest,
            resize_hw=None if shortest else exact,
            crop_hw=(crop["height"], crop["width"]) if crop.get("height") else None,
            mean=tuple(processor.image_mean) if normalise else (0.0, 0.0, 0.0),
            std=tuple(processor.image_std) if normalise else (1.0, 1.0, 1.0),
            mode=_RESAMPLE_MODES.get(int(processor.resample), "bicubic"),
        )

    def __call__(self, images: Tensor) -> Tensor:
        """(N, H, W, 3) in [0, 1] -> (N, 3, h, w) pixel values for the vision tower."""
        x = images.permute(0, 3, 1, 2)
        height, width = x.shape[-2:]
        target = self.resize_hw
        if self.shortest_edge is not None:
            # The long side is truncated, as transformers' get_resize_output_image_size does.
            short, long = sorted((height, width))
            long = int(self.shortest_edge * long / short)
            target = (self.shortest_edge, long) if height <= width else (long, self.shortest_edge)
        if target is not None and target != (height, width):
            # antialias as PIL does when shrinking; bicubic overshoots, and PIL clips to the 8-bit range.
            antialias = self.mode != "nearest"
            x = F.interpolate(x, size=target, mode=self.mode, antialias=antialias).clamp(0, 1)
        if self.crop_hw is not None:
            x = _centre_crop(x, self.crop_hw)
        mean, std = x.new_tensor(self.mean)[:, None, None], x.new_tensor(self.std)[:, None, None]
        return (x - mean) / std


def _centre_crop(x: Tensor, crop_hw: tuple[int, int]) -> Tensor:
    """Centre crop (N, C, H, W) to crop_hw, zero-padding an image smaller than it (as transformers does)."""
    height, width = x.shape[-2:]
    pad_h, pad_w = max(crop_hw[0] - height, 0), max(crop_hw[1] - width, 0)
    if pad_h or pad_w:
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        height, width = x.shape[-2:]
    top, left = (height - crop_hw[0]) // 2, (width - crop_hw[1]) // 2
    return x[..., top : top + crop_hw[0], left : left + crop_hw[1]]


class ClipImageText:
    """A frozen transformers CLIP. Embeddings come back unit-norm, float32, on the CPU."""

    def __init__(
        self,
        model: str | Path = CLIP_B32,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 32,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.name = str(model)
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = batch_size
        source = _clip_source(self.name)
        try:
            clip = CLIPModel.from_pretrained(source, local_files_only=hub_offline())
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=hub_offline())
            processor = clip_image_processor_class().from_pretrained(source, local_files_only=hub_offline())
        # transformers' "not found / not cached / no connection / unreadable", and a truncated weights file.
        except (OSError, SafetensorError) as exc:
            hint = (
                f"its files are unreadable: {(str(exc).strip().splitlines() or [''])[0]}"
                if Path(source).is_dir()
                else f"download it on a connected machine (hf download {self.name}) or pass a local folder"
            )
            raise UserError(
                f"CLIP model {self.name!r} cannot be loaded ({type(exc).__name__}): {hint}"
            ) from exc
        self.model = freeze(clip).to(self.device, dtype)
        self.preprocess = ClipPreprocess.from_processor(processor)
        # CLIP's context is 77 tokens; longer captions are cut, as CLIP was trained.
        positions = self.model.config.text_config.max_position_embeddings
        self.max_length = min(int(self.tokenizer.model_max_length), positions)

    @torch.no_grad()
    def embed_images(self, images: Tensor) -> Tensor:
        """(N, H, W, 3) RGB in [0, 1] -> (N, D) unit-norm image embeddings."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"need (N, H, W, 3) images, got {tuple(images.shape)}")
        out = []
        for batch in images.split(self.batch_size):
            pixels = self.preprocess(batch.to(self.device, torch.float32)).to(self.dtype)
            # The vision tower's pooled output through the projection: CLIPModel.get_image_features, spelt
            # out because its return type changed between transformers 4 and 5.
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output
            out.append(self.model.visual_projection(pooled))
        return _unit_cpu(out)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> Tensor:
        """N texts -> (N, D) unit-norm text embeddings."""
        texts = list(texts)
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            pooled = self.model.text_model(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            ).pooler_output
            out.append(self.model.text_projection(pooled))
        return _unit_cpu(out)


def _unit_cpu(batches: list[Tensor]) -> Tensor:
    # Unit norm here, so that a dot product is the cosine similarity CLIP was trained with.
    if not batches:
        raise ValueError("nothing to embed")
    return F.normalize(torch.cat(batches).float().cpu(), dim=-1)


def _clip_source(model: str) -> str:
    """`model` as from_pretrained should read it: a complete local folder, or a hub id (looked up in the
    cache, and online unless the hub is switched off). Anything else is a one-line UserError."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        missing = [
            what
            for what, patterns in (
                ("config.json", ("config.json",)),
                ("weights", _WEIGHT_PATTERNS),
                ("tokenizer", ("tokenizer.json", "vocab.json")),
                ("preprocessor_config.json", ("preprocessor_config.json",)),
            )
            if not any(any(folder.glob(p)) for p in patterns)
        ]
        if missing:
            raise UserError(
                f"CLIP folder {model!r} lacks {', '.join(missing)}: pass a folder written by "
                "CLIPModel, its tokenizer and CLIPImageProcessor's save_pretrained, or a hub id"
            )
        return str(folder.resolve())
    try:
        validate_repo_id(model)  # paths ("/x", "./x", "a/b/c") fail here: they name a missing folder
    except HFValidationError:
        raise UserError(
            f"CLIP model {model!r} is neither an existing folder nor a Hugging Face hub id"
        ) from None
    return model


def clip_image_processor_class() -> Any:
    """transformers' CLIPImageProcessor. transformers 5 without torchvision resolves the name to its PIL twin
    and logs that it did; only the config values are used here, so either class will do, silently."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        from transformers import CLIPImageProcessor
    finally:
        transformers.logging.set_verbosity(verbosity)
    return CLIPImageProcessor
