"""A prior's frozen text encoder and tokenizer, loaded from its diffusers folder (`PromptEncoder`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
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

from dreamfusion.errors import ModelError
from dreamfusion.guidance.components import freeze, on_device
from dreamfusion.guidance.hub import ModelFolder

logger = logging.getLogger("dreamfusion")


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
            raise ModelError(
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
        raise ModelError(
            f"model {folder.name!r}: its tokenizer is a SentencePiece model, which needs two more packages: "
            "pip install sentencepiece protobuf"
        )
