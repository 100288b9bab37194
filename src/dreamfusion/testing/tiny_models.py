"""Tiny randomly initialised diffusion priors, saved in the exact diffusers folder layouts.

The real priors (Stable Diffusion, DeepFloyd IF) are gigabytes and need a download; these are a few megabytes,
build offline in well under a second, and go through the very same loading and SDS code. This is the
habit diffusers uses to test its pipelines on a CPU (see CONVENTIONS.md). The weights are random, so the
gradients they give are meaningless as images; they exist to test plumbing, shapes, dtypes and determinism,
and to benchmark speed and memory at real sizes (`stable_diffusion_15_unet_config`).

Everything, tokenizers included, is written here from scratch: nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import diffusers
import torch
from diffusers import AutoencoderKL, DDPMScheduler, PNDMScheduler, UNet2DConditionModel
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

TextEncoderKind = Literal["t5", "clip"]

# Words that get whole-word tokens, so that prompts tokenise into a realistic mix of words and pieces.
_WORDS = (
    "a", "an", "the", "of", "on", "in", "with", "and", "photo", "dslr", "view", "front", "side", "back",
    "overhead", "dog", "cat", "hamburger", "chair", "car", "red", "blue", "wooden", "small", "cute",
)  # fmt: skip

_TEXT_HIDDEN = 32  # width of the tiny text encoders
_TEXT_MAX_LENGTH = 77  # both CLIP and IF's T5 prompts are 77 tokens


# ---------------------------------------------------------------------------------------------------------
# Real configs, for benchmarks that want a full-size U-Net with random weights.


def stable_diffusion_15_unet_config() -> dict[str, Any]:
    """Constructor arguments of Stable Diffusion 1.5's UNet2DConditionModel (~860M parameters)."""
    return {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "center_input_sample": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
    }


def stable_diffusion_21_base_unet_config() -> dict[str, Any]:
    """Constructor arguments of Stable Diffusion 2.1-base's U-Net (~865M parameters, 1024-d OpenCLIP text)."""
    config = stable_diffusion_15_unet_config()
    config.update(cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)
    return config


# ---------------------------------------------------------------------------------------------------------
# Tokenizers, written offline.


def _byte_level_alphabet() -> list[str]:
    """The 256 printable characters that byte-level BPE (GPT-2, CLIP) uses to stand for the 256 byte values:
    printable Latin-1 bytes stand for themselves, the others are shifted to code points from 256 upwards."""
    printable = {
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    }
    alphabet: list[str] = []
    shifted = 0
    for byte in range(256):
        if byte in printable:
            alphabet.append(chr(byte))
        else:
            alphabet.append(chr(256 + shifted))
            shifted += 1
    return alphabet


def save_clip_tokenizer(folder: Path, words: Sequence[str] = _WORDS) -> int:
    """Write a CLIP byte-level BPE tokenizer (vocab.json, merges.txt, as in Stable Diffusion's tokenizer/).
    Every byte has a token, with and without the end-of-word mark, so any text tokenises; `words` get merges
    so that they become single tokens. Returns the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_level_alphabet()
    vocab: dict[str, int] = {}
    for symbol in [*alphabet, *(c + "</w>" for c in alphabet)]:
        vocab[symbol] = len(vocab)
    merges: list[str] = []
    for word in words:
        # Merge the word left to right: (w, o) -> wo, (wo, r) -> wor, (wor, d</w>) -> word</w>.
        symbols = [*word[:-1], word[-1] + "</w>"]
        while len(symbols) > 1:
            merge = f"{symbols[0]} {symbols[1]}"
            merged = symbols[0] + symbols[1]
            if merge not in merges:
                merges.append(merge)
            vocab.setdefault(merged, len(vocab))
            symbols = [merged, *symbols[2:]]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": _TEXT_MAX_LENGTH, "do_lower_case": True}
    _write_json(folder / "tokenizer_config.json", {**config, **special})
    _write_json(folder / "special_tokens_map.json", special)
    return len(vocab)


def save_t5_tokenizer(folder: Path, words: Sequence[str] = _WORDS) -> int:
    """Write a T5-style SentencePiece-Unigram tokenizer (tokenizer.json) that transformers loads as T5's.
    Ids follow T5: <pad>=0, </s>=1, <unk>=2; "</s>" ends every sequence. Printable ASCII always tokenises;
    other characters become <unk>, as they can with the real T5 vocabulary. Returns the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    pieces: dict[str, float] = {"<pad>": 0.0, "</s>": 0.0, "<unk>": 0.0, "▁": -2.0}
    for word in words:
        pieces.setdefault("▁" + word, -3.0)
    for code in range(ord("!"), ord("~") + 1):
        pieces.setdefault(chr(code), -5.0)
        pieces.setdefault("▁" + chr(code), -6.0)
    tokenizer = Tokenizer(Unigram(list(pieces.items()), unk_id=2, byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)]
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    special = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    # 512 as in T5's own tokenizer config; the backend caps prompts at the 77 tokens IF uses.
    config = {"tokenizer_class": "T5Tokenizer", "model_max_length": 512, "extra_ids": 0}
    _write_json(folder / "tokenizer_config.json", {**config, **special, "additional_special_tokens": []})
    _write_json(folder / "special_tokens_map.json", special)
    return len(pieces)


# ---------------------------------------------------------------------------------------------------------
# Text encoders.


def _save_clip_text_encoder(folder: Path, vocab_size: int) -> None:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=_TEXT_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_TEXT_MAX_LENGTH,
        hidden_act="quick_gelu",
        projection_dim=_TEXT_HIDDEN,
        bos_token_id=vocab_size - 2,  # <|startoftext|> and <|endoftext|> are the last two ids
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    CLIPTextModel(config).eval().save_pretrained(folder)


def _save_t5_text_encoder(folder: Path, vocab_size: int) -> None:
    # T5 v1.1 shapes (gated GELU, no tied embeddings), as IF's t5-v1_1-xxl, scaled down.
    config = T5Config(
        vocab_size=vocab_size,
        d_model=_TEXT_HIDDEN,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
    )
    T5EncoderModel(config).eval().save_pretrained(folder)


# ---------------------------------------------------------------------------------------------------------
# Whole model folders.


def save_tiny_stable_diffusion(
    folder: Path,
    seed: int = 0,
    sample_size: int = 8,
    vae_levels: int = 4,
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
) -> Path:
    """A Stable-Diffusion-layout latent prior: UNet2DConditionModel + AutoencoderKL + CLIP text encoder and
    tokenizer + SD's PNDM scheduler config, under model_index.json.

    The VAE downsamples by 2 ** (vae_levels - 1) (8 for SD's four levels), so image_size = sample_size * that.
    The defaults give image_size 64 with 8x8 latents (fast tests). For "64x64 latents", use sample_size=64:
    with vae_levels=4 renders are upsampled to 512 as with real SD; with vae_levels=1 a 64x64 render encodes
    straight to 64x64 latents.
    """
    if vae_levels < 1:
        raise ValueError(f"vae_levels must be >= 1, got {vae_levels}")
    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vocab_size = save_clip_tokenizer(folder / "tokenizer")
        _save_clip_text_encoder(folder / "text_encoder", vocab_size)
        unet = UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            norm_num_groups=32,
            cross_attention_dim=_TEXT_HIDDEN,
            attention_head_dim=8,
        )
        unet.save_pretrained(folder / "unet")
        vae_channels = (8, 16, 16, 16, 16, 16)[:vae_levels]
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * vae_levels,
            up_block_types=("UpDecoderBlock2D",) * vae_levels,
            block_out_channels=vae_channels,
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=sample_size * 2 ** (vae_levels - 1),
            scaling_factor=0.18215,
        )
        vae.save_pretrained(folder / "vae")
    # Stable Diffusion 1.x/2.x ship a PNDM scheduler with the "scaled_linear" betas it was trained with.
    PNDMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    ).save_pretrained(folder / "scheduler")
    _write_model_index(
        folder,
        "StableDiffusionPipeline",
        {
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "scheduler": ["diffusers", "PNDMScheduler"],
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "image_encoder": [None, None],
            "requires_safety_checker": False,
        },
    )
    return folder


def save_tiny_pixel_diffusion(
    folder: Path,
    seed: int = 0,
    image_size: int = 64,
    text_encoder: TextEncoderKind = "t5",
) -> Path:
    """A DeepFloyd-IF-stage-I-layout pixel prior: a U-Net with IF's block types and config keys (a projection
    of the text states inside the U-Net via encoder_hid_dim, a pooled text embedding added to the time
    embedding, 6 output channels = eps and the learned variance range), IF's DDPM scheduler (cosine betas),
    and a T5 (IF) or CLIP text encoder with its tokenizer."""
    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        match text_encoder:
            case "t5":
                vocab_size = save_t5_tokenizer(folder / "tokenizer")
                _save_t5_text_encoder(folder / "text_encoder", vocab_size)
                classes = (["transformers", "T5Tokenizer"], ["transformers", "T5EncoderModel"])
            case "clip":
                vocab_size = save_clip_tokenizer(folder / "tokenizer")
                _save_clip_text_encoder(folder / "text_encoder", vocab_size)
                classes = (["transformers", "CLIPTokenizer"], ["transformers", "CLIPTextModel"])
            case _:
                raise ValueError(f"text_encoder must be 't5' or 'clip', got {text_encoder!r}")
        unet = UNet2DConditionModel(
            sample_size=image_size,
            in_channels=3,
            out_channels=6,
            # IF's block types; attention only at the coarsest level (16x16 for 64 px), which keeps a CPU
            # call around a tenth of a second.
            down_block_types=(
                "ResnetDownsampleBlock2D",
                "ResnetDownsampleBlock2D",
                "SimpleCrossAttnDownBlock2D",
            ),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
            block_out_channels=(32, 32, 64),
            layers_per_block=1,
            norm_num_groups=32,
            act_fn="gelu",
            cross_attention_dim=64,
            encoder_hid_dim=_TEXT_HIDDEN,
            encoder_hid_dim_type="text_proj",
            attention_head_dim=8,
            addition_embed_type="text",
            addition_embed_type_num_heads=2,
            cross_attention_norm="group_norm",
            resnet_time_scale_shift="scale_shift",
            resnet_skip_time_act=True,
            resnet_out_scale_factor=1.414,
            mid_block_scale_factor=1,
        )
        unet.save_pretrained(folder / "unet")
    # IF stage I's scheduler: cosine ("squaredcos_cap_v2") betas, learned variance range, thresholding.
    DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        variance_type="learned_range",
        prediction_type="epsilon",
        clip_sample=True,
        thresholding=True,
        dynamic_thresholding_ratio=0.95,
        sample_max_value=1.5,
    ).save_pretrained(folder / "scheduler")
    tokenizer_class, text_encoder_class = classes
    _write_model_index(
        folder,
        "IFPipeline",
        {
            "text_encoder": text_encoder_class,
            "tokenizer": tokenizer_class,
            "unet": ["diffusers", "UNet2DConditionModel"],
            "scheduler": ["diffusers", "DDPMScheduler"],
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "watermarker": [None, None],
            "requires_safety_checker": False,
        },
    )
    return folder


def _write_model_index(folder: Path, pipeline_class: str, components: dict[str, Any]) -> None:
    index = {"_class_name": pipeline_class, "_diffusers_version": diffusers.__version__, **components}
    _write_json(folder / "model_index.json", index)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
