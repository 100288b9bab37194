"""Where a diffusion prior's files come from, and the parts both diffusers backends load the same way.

`resolve_model` turns what the user typed (a Hugging Face hub id or a local folder) into a local folder in
the diffusers layout (model_index.json plus one sub-folder per component). It looks in the Hugging Face cache
first and goes online only when allowed (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE unset) and with a short
timeout, so a machine without a network gets a one-line `UserError` instead of a hang or a traceback.

The rest of the module is shared by `stable_diffusion.py` and `pixel_diffusion.py`: the text encoder and its
tokenizer (`PromptEncoder`), the scheduler's alphabar_t, the conversion of a U-Net output to a noise
prediction, and moving a module to the accelerator only while it runs (`on_device`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HFValidationError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id
from torch import Tensor, nn
from transformers import (
    AutoTokenizer,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    T5EncoderModel,
    UMT5EncoderModel,
)
from transformers.utils import is_protobuf_available, is_sentencepiece_available

from dreamfusion.errors import UserError

logger = logging.getLogger("dreamfusion")

# For the hub's metadata requests: a machine without a network fails in seconds, not minutes.
HUB_TIMEOUT_S = 10.0
_TRUE = {"1", "ON", "YES", "TRUE"}

# Non-variant weight files (diffusers and transformers names, single or sharded). Variants such as
# ".fp16." or ".non_ema." are skipped: from_pretrained without `variant` does not read them.
_WEIGHTS = re.compile(r"^(diffusion_pytorch_model|model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)$")
_WEIGHTS_INDEX = re.compile(
    r"^(diffusion_pytorch_model|model|pytorch_model)\.(safetensors|bin)\.index\.json$"
)
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model")


# ---------------------------------------------------------------------------------------------------------
# Resolving a model name to a local folder.


@dataclass(frozen=True)
class ModelFolder:
    """A prior on local disk in the diffusers layout."""

    name: str  # what the user asked for: a hub id or a path
    path: Path  # absolute local folder holding model_index.json and the component sub-folders
    hub_id: str | None  # set when it came from the hub cache
    commit: str | None  # the cached snapshot's commit hash, when it came from the hub

    def component_class(self, component: str) -> str:
        """The class name model_index.json gives for `component`, e.g. "T5EncoderModel"."""
        index = json.loads((self.path / "model_index.json").read_text(encoding="utf-8"))
        entry = index.get(component)
        if not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[1], str):
            raise UserError(f"model {self.name!r}: model_index.json names no class for {component!r}")
        return entry[1]

    def fingerprint(self, component: str) -> str:
        """Identifies a component's files: the hub commit if known, else path, size and mtime of each file."""
        if self.hub_id is not None and self.commit is not None:
            return f"{self.hub_id}@{self.commit}/{component}"
        parts = [
            f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
            for f in sorted((self.path / component).iterdir())
            if f.is_file()
        ]
        return f"{self.path / component}[{','.join(parts)}]"


def resolve_model(model: str, components: Sequence[str]) -> ModelFolder:
    """A local folder with `components` (e.g. "unet", "text_encoder"), from a path or a hub id.

    An existing directory wins over a hub id of the same spelling, as in diffusers. A hub id is looked up in
    the Hugging Face cache first; only if that fails and the hub is not switched off is it downloaded (only
    the files the backend needs: configs, tokenizer files and the non-variant weights of `components`).
    """
    local = Path(model).expanduser()
    if local.is_dir():
        folder = ModelFolder(name=model, path=local.resolve(), hub_id=None, commit=None)
        _check_components(folder, components, hint="pass a complete diffusers folder")
        return folder
    if _looks_like_path(model):
        raise UserError(
            f"model folder {model!r} does not exist: pass an existing folder or a Hugging Face hub id"
        )
    try:
        validate_repo_id(model)
    except HFValidationError as exc:
        raise UserError(
            f"model {model!r} is neither an existing folder nor a valid Hugging Face hub id"
        ) from exc

    cache_dir = hub_cache_dir()
    cached = _from_cache(model, cache_dir, components)
    if cached is not None:
        return cached
    if hub_offline():
        raise UserError(
            f"model {model!r} is not (completely) in the Hugging Face cache {cache_dir} and the hub is "
            f"switched off (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE): {_how_to_supply(model)}"
        )
    folder = _download(model, cache_dir, components)
    _check_components(folder, components, hint="the hub repository does not look like a diffusers pipeline")
    return folder


def _how_to_supply(model: str) -> str:
    # `hf` is huggingface_hub's command line tool (it replaced `huggingface-cli`).
    return (
        f"download it on a connected machine (hf download {model}, then copy the cache or the folder) "
        "or pass --model /path/to/a/local/folder"
    )


def hub_cache_dir() -> Path:
    """The hub cache, read from the environment now (not at import), so that HF_HUB_CACHE / HF_HOME set by the
    caller, a test or a job script take effect."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """True when the user switched the hub off, through either library's variable."""
    variables = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE")
    return constants.HF_HUB_OFFLINE or any(os.environ.get(v, "").upper() in _TRUE for v in variables)


def _looks_like_path(model: str) -> bool:
    """A hub id is "owner/name"; anything absolute, relative-looking or with more parts is meant as a path."""
    return (
        os.path.isabs(model)
        or model.startswith(("./", "../", "~", ".\\"))
        or model.count("/") > 1
        or "\\" in model
    )


def _from_cache(model: str, cache_dir: Path, components: Sequence[str]) -> ModelFolder | None:
    """The cached snapshot of `model`'s default revision, if it holds every needed component."""
    try:
        # Only model_index.json is named: the cache may rightly lack files we never download (fp16 variants).
        path = snapshot_download(
            model, cache_dir=cache_dir, local_files_only=True, allow_patterns=["model_index.json"]
        )
    except OSError:  # LocalEntryNotFoundError and its incomplete-snapshot kin: "not cached"
        return None
    folder = ModelFolder(name=model, path=Path(path), hub_id=model, commit=Path(path).name)
    if _missing_components(folder, components):
        return None
    return folder


def _download(model: str, cache_dir: Path, components: Sequence[str]) -> ModelFolder:
    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        info = HfApi(endpoint=endpoint).model_info(model, timeout=HUB_TIMEOUT_S)
        files = _files_to_fetch([s.rfilename for s in info.siblings or []], components)
        path = snapshot_download(
            model,
            revision=info.sha,
            cache_dir=cache_dir,
            allow_patterns=files,
            etag_timeout=HUB_TIMEOUT_S,
            endpoint=endpoint,
        )
    except GatedRepoError as exc:
        raise UserError(
            f"model {model!r} is gated: accept its licence on https://huggingface.co/{model} and log in "
            "(hf auth login, or set HF_TOKEN)"
        ) from exc
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise UserError(
            f"model {model!r} was not found on the Hugging Face hub (a typo, or private?)"
        ) from exc
    except Exception as exc:  # the HTTP stack's error classes differ across hub versions; all mean "no hub"
        raise UserError(
            f"model {model!r} is not in the Hugging Face cache {cache_dir} and the hub cannot be reached "
            f"({type(exc).__name__}): {_how_to_supply(model)}"
        ) from exc
    return ModelFolder(name=model, path=Path(path), hub_id=model, commit=info.sha)


def _files_to_fetch(repo_files: Sequence[str], components: Sequence[str]) -> list[str]:
    """model_index.json, each component's configs and tokenizer files, and its weights in one format:
    safetensors when the repo has them, else .bin (a repo often has both, plus fp16 and EMA variants)."""
    chosen = ["model_index.json"]
    for component in components:
        names = [
            f.split("/", 1)[1] for f in repo_files if f.startswith(component + "/") and f.count("/") == 1
        ]
        chosen += [f"{component}/{n}" for n in names if n.endswith((".json", ".txt", ".model"))]
        weights = [n for n in names if _WEIGHTS.match(n)]
        safetensors = [n for n in weights if n.endswith(".safetensors")]
        chosen += [f"{component}/{n}" for n in (safetensors or weights)]
    return chosen


def _missing_components(folder: ModelFolder, components: Sequence[str]) -> list[str]:
    """Human-readable descriptions of what is missing; empty when the folder is usable."""
    if not (folder.path / "model_index.json").is_file():
        return ["model_index.json"]
    missing = []
    for component in components:
        sub = folder.path / component
        match component:
            case "scheduler":
                ok = (sub / "scheduler_config.json").is_file()
            case "tokenizer":
                ok = any((sub / f).is_file() for f in _TOKENIZER_FILES)
            case _:
                ok = (
                    (sub / "config.json").is_file()
                    and sub.is_dir()
                    and any(_WEIGHTS.match(f.name) or _WEIGHTS_INDEX.match(f.name) for f in sub.iterdir())
                )
        if not ok:
            missing.append(f"{component}/")
    return missing


def _check_components(folder: ModelFolder, components: Sequence[str], hint: str) -> None:
    missing = _missing_components(folder, components)
    if missing:
        needed = ", ".join(["model_index.json", *(f"{c}/" for c in components)])
        raise UserError(
            f"model {folder.name!r} ({folder.path}) lacks {', '.join(missing)} (configs and weights): {hint} "
            f"with {needed}"
        )


# ---------------------------------------------------------------------------------------------------------
# Parts the diffusers backends share.


@dataclass(frozen=True)
class _TextEncoderKind:
    model_class: type[PreTrainedModel]
    attention_mask: bool  # T5 encoders attend both ways and were trained with the padding mask; CLIP was not


# An explicit allow-list: model_index.json is user data and must not choose arbitrary classes.
_TEXT_ENCODERS: dict[str, _TextEncoderKind] = {
    "CLIPTextModel": _TextEncoderKind(CLIPTextModel, attention_mask=False),
    "CLIPTextModelWithProjection": _TextEncoderKind(CLIPTextModelWithProjection, attention_mask=False),
    "T5EncoderModel": _TextEncoderKind(T5EncoderModel, attention_mask=True),
    "UMT5EncoderModel": _TextEncoderKind(UMT5EncoderModel, attention_mask=True),
}

MAX_PROMPT_TOKENS = 77  # CLIP's context, and the length DeepFloyd IF pads and truncates its T5 prompts to


class PromptEncoder:
    """The frozen text encoder and tokenizer of a prior. Prompts are padded to a fixed length, as the priors
    were trained; over-long prompts are truncated with one logged warning per call."""

    def __init__(self, folder: ModelFolder, device: torch.device, dtype: torch.dtype, offload: bool):
        class_name = folder.component_class("text_encoder")
        kind = _TEXT_ENCODERS.get(class_name)
        if kind is None:
            raise UserError(
                f"model {folder.name!r}: text encoder class {class_name!r} is not supported "
                f"(supported: {', '.join(sorted(_TEXT_ENCODERS))})"
            )
        _check_tokenizer_backends(folder)
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(folder.path / "tokenizer")
        model = kind.model_class.from_pretrained(folder.path / "text_encoder", torch_dtype=dtype)
        self.model = freeze(model).to("cpu" if offload else device)
        # diffusers' pipelines pass the mask to CLIP only when its config asks for it (`use_attention_mask`).
        self.attention_mask = kind.attention_mask or bool(getattr(model.config, "use_attention_mask", False))
        # Tokenizers without a real limit report a huge model_max_length; both families take 77 here.
        self.max_length = min(int(self.tokenizer.model_max_length), MAX_PROMPT_TOKENS)
        self.device = device
        self.dtype = dtype
        self.offload = offload
        self.key = (
            f"{folder.fingerprint('text_encoder')}|{folder.fingerprint('tokenizer')}|L{self.max_length}"
        )

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> Tensor:
        """(N, max_length, D) last hidden states on the prior's device and dtype."""
        texts = list(texts)
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        self._warn_if_truncated(texts)
        mask = tokens["attention_mask"].to(self.device) if self.attention_mask else None
        with on_device(self.model, self.device, self.offload):
            hidden = self.model(
                input_ids=tokens["input_ids"].to(self.device), attention_mask=mask
            ).last_hidden_state
        return hidden.to(self.device, self.dtype)

    def _warn_if_truncated(self, texts: list[str]) -> None:
        room = self.max_length - self.tokenizer.num_special_tokens_to_add(pair=False)
        # verbose=False: the tokenizer's own "longer than the maximum" warning would repeat ours.
        words = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        dropped = [self.tokenizer.decode(ids[room:]).strip() for ids in words if len(ids) > room]
        if dropped:
            logger.warning(
                "%d prompt(s) are longer than the %d tokens the text encoder takes (%d besides its special "
                "tokens) and were truncated; dropped: %s",
                len(dropped),
                self.max_length,
                room,
                "; ".join(repr(d) for d in dropped),
            )


def _check_tokenizer_backends(folder: ModelFolder) -> None:
    """A tokenizer shipped only as a SentencePiece model (DeepFloyd IF's T5: spiece.model, no tokenizer.json)
    is converted on loading, which needs the sentencepiece and protobuf packages. Without them transformers
    fails with a message about tiktoken; say what is really missing instead."""
    tokenizer = folder.path / "tokenizer"
    if not (tokenizer / "spiece.model").is_file() or (tokenizer / "tokenizer.json").is_file():
        return
    if not (is_sentencepiece_available() and is_protobuf_available()):
        raise UserError(
            f"model {folder.name!r}: its tokenizer is a SentencePiece model, which needs two more packages: "
            "pip install sentencepiece protobuf"
        )


def freeze(module: nn.Module) -> nn.Module:
    """The prior is never trained (paper sec. 3: "frozen"): eval mode and no parameter gradients."""
    module.eval()
    module.requires_grad_(False)
    return module


@contextmanager
def on_device(module: nn.Module, device: torch.device, offload: bool) -> Iterator[None]:
    """With `offload`, keep `module` on the CPU and move it to `device` only while it runs, so that on a small
    GPU the text encoder, VAE and U-Net need not fit at once. Not around a forward pass whose backward is yet
    to come: `.to()` replaces the parameters' data in place, under the graph's saved references to them."""
    if not offload:
        yield
        return
    module.to(device)
    try:
        yield
    finally:
        module.to("cpu")


def unet_config(folder: ModelFolder, text_only: tuple[str | None, ...]) -> dict[str, Any]:
    """The U-Net's config, checked before any weights load: a UNet2DConditionModel that needs nothing but
    the text states (`text_only` lists the addition_embed_type values that are computed from them)."""
    found = folder.component_class("unet")
    if found != "UNet2DConditionModel":
        raise UserError(
            f"model {folder.name!r}: unet is a {found}, this backend needs a UNet2DConditionModel"
        )
    config = dict(UNet2DConditionModel.load_config(folder.path, subfolder="unet"))
    addition, labels = config.get("addition_embed_type"), config.get("class_embed_type")
    if addition not in text_only or labels is not None:
        raise UserError(
            f"model {folder.name!r}: its U-Net needs conditioning besides text (addition_embed_type "
            f"{addition!r}, class_embed_type {labels!r}), e.g. SDXL or an upscaling stage; use a base model"
        )
    return config


def scheduler_alphas(folder: ModelFolder) -> tuple[Tensor, str]:
    """(alphabar_t for t = 0..T-1, prediction type) from the folder's scheduler config.

    alphabar depends only on the training betas (num_train_timesteps, beta_start/end, beta_schedule,
    trained_betas, rescale_betas_zero_snr), which every diffusers scheduler config records and DDPMScheduler
    understands, whatever sampler class the folder names (SD ships PNDM, IF DDPM)."""
    scheduler = DDPMScheduler.from_pretrained(folder.path, subfolder="scheduler")
    prediction_type = str(scheduler.config.prediction_type)
    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise UserError(f"model {folder.name!r}: unsupported prediction_type {prediction_type!r}")
    return scheduler.alphas_cumprod.float().clone(), prediction_type


def epsilon_from_output(
    output: Tensor, z_t: Tensor, alphas_cumprod_t: Tensor, prediction_type: str
) -> Tensor:
    """The U-Net's noise prediction whatever it was trained to predict. With z_t = a x0 + s eps
    (a^2 = alphabar, a^2 + s^2 = 1): v = a eps - s x0 gives eps = a v + s z_t, and a predicted x0 gives
    eps = (z_t - a x0) / s."""
    a = alphas_cumprod_t.view(-1, *([1] * (z_t.dim() - 1))).sqrt()
    s = (1.0 - a * a).sqrt()
    match prediction_type:
        case "epsilon":
            return output
        case "v_prediction":
            return a * output + s * z_t
        case "sample":
            return (z_t - a * output) / s
        case _:
            raise ValueError(f"unknown prediction_type {prediction_type!r}")


def per_image(embeddings: Tensor, batch: int) -> Tensor:
    """(B, L, D) text embeddings for a batch of B images; one shared prompt (1, L, D) is broadcast."""
    if embeddings.shape[0] == batch:
        return embeddings
    if embeddings.shape[0] == 1:
        return embeddings.expand(batch, *embeddings.shape[1:])
    raise ValueError(f"text embeddings for {embeddings.shape[0]} images, but the batch has {batch}")


def square_size(sample_size: int | Sequence[int], name: str) -> int:
    """A U-Net's sample_size as one side length; non-square priors are not supported."""
    if isinstance(sample_size, int):
        return sample_size
    sides = list(sample_size)
    if len(sides) != 2 or sides[0] != sides[1]:
        raise UserError(f"model {name!r}: only square U-Nets are supported, sample_size is {sample_size}")
    return int(sides[0])
