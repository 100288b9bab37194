"""Tiny priors for the tests: a few thousand parameters, the tiny byte-level CLIP tokenizer of
dreamfusion.testing (no download), 16 px renders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dreamfusion.prior.model import PriorConfig
from dreamfusion.prior.tokenizer import END_OF_WORD, NUM_MERGES, bytes_to_unicode
from dreamfusion.prior.train import PriorTrainConfig
from dreamfusion.testing.tiny_models import save_clip_tokenizer

TINY_MODEL = PriorConfig(
    resolution=16,
    channels=(16, 32),
    attention=(False, True),
    attention_heads=2,
    norm_groups=8,
    text_width=32,
    text_layers=1,
    text_heads=2,
    max_tokens=24,
)


def tiny_train_config(**overrides: object) -> PriorTrainConfig:
    defaults: dict[str, object] = dict(
        model=TINY_MODEL, steps=6, batch_size=4, warmup_steps=2, checkpoint_every=3, log_every=1
    )
    return PriorTrainConfig(**{**defaults, **overrides})


def synthetic_clip_merges() -> str:
    """A file in the format of CLIP's merges file with exactly NUM_MERGES distinct, valid merges (a byte and
    a final byte: "x y</w>"), for tests that need the full 49,408-token layout without the real file."""
    alphabet = list(bytes_to_unicode().values())
    merges = [f"{alphabet[i % 256]} {alphabet[i // 256]}{END_OF_WORD}" for i in range(NUM_MERGES)]
    return "\n".join(["#version: 0.2", *merges, "extra line beyond the merges CLIP keeps"])


def write_tiny_tokenizer(folder: Path, max_tokens: int) -> Path:
    save_clip_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def clip_merges() -> str:
    return synthetic_clip_merges()


@pytest.fixture(scope="session")
def make_config() -> Callable[..., PriorTrainConfig]:
    return tiny_train_config


@pytest.fixture(scope="session")
def make_tokenizer() -> Callable[[Path, int], Path]:
    return write_tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"), TINY_MODEL.max_tokens)
