"""CLIP's vocabulary rebuilt from its merges file: checked against an independent construction (the byte
alphabet of dreamfusion.testing), on a small synthetic merges file, and once on the real file when the
open-clip-torch wheel is at hand (never downloaded by the tests)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from dreamfusion.prior.tokenizer import (
    END_OF_WORD,
    NUM_MERGES,
    OPEN_CLIP_WHEEL,
    VOCAB_SIZE,
    bytes_to_unicode,
    clip_vocabulary,
    merges_from_wheel,
    save_clip_tokenizer,
)
from dreamfusion.testing.tiny_models import _byte_level_alphabet


def _real_wheel() -> Path | None:
    """The wheel from $DREAMFUSION_OPEN_CLIP_WHEEL or the user's own cache (conftest hides
    DREAMFUSION_CACHE, so the home folder's cache is looked at directly)."""
    candidates = [
        os.environ.get("DREAMFUSION_OPEN_CLIP_WHEEL", ""),
        str(Path.home() / ".cache" / "dreamfusion" / "wheels" / OPEN_CLIP_WHEEL),
    ]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def test_byte_table_matches_an_independent_construction():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(table[b] == _byte_level_alphabet()[b] for b in range(256))
    # CLIP orders the vocabulary printable bytes first: "!" is token 0, the shifted byte 0 comes after "ÿ".
    assert list(table.values())[0] == "!" and list(table.values())[188] == chr(256)


def test_vocabulary_layout_is_clips(clip_merges: str):
    vocab, merges = clip_vocabulary(clip_merges)
    alphabet = list(bytes_to_unicode().values())
    assert len(vocab) == VOCAB_SIZE == 49408 and len(merges) == NUM_MERGES
    assert [vocab[c] for c in alphabet] == list(range(256))
    assert [vocab[c + END_OF_WORD] for c in alphabet] == list(range(256, 512))
    assert vocab[merges[0].replace(" ", "")] == 512
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407


def test_not_a_merges_file_is_refused():
    with pytest.raises(ValueError, match="not CLIP's merges file"):
        clip_vocabulary("#version: 0.2\na b\n")


def test_real_vocabulary_tokenises_known_strings(tmp_path: Path):
    wheel = _real_wheel()
    if wheel is None:
        pytest.skip(
            f"{OPEN_CLIP_WHEEL} not found: set DREAMFUSION_OPEN_CLIP_WHEEL or put it in "
            "~/.cache/dreamfusion/wheels (pip download --no-deps open-clip-torch==3.3.0)"
        )
    folder = save_clip_tokenizer(tmp_path / "tokenizer", merges_from_wheel(wheel), max_length=32)
    assert len(json.loads((folder / "vocab.json").read_text(encoding="utf-8"))) == VOCAB_SIZE
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.model_max_length == 32
    # The ids OpenAI's CLIP gives (the example in transformers' CLIP documentation).
    assert tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer("a red mug")["input_ids"] == [49406, 320, 736, 9722, 49407]
    # Lower-cased as CLIP does; any unicode falls back to bytes and decodes back.
    assert tokenizer("A RED Mug")["input_ids"] == tokenizer("a red mug")["input_ids"]
    for text in ("a red mug, front view", "日本語 ü 🙂 ∑"):
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ,", ",") == text
    padded = tokenizer("a red mug", padding="max_length", max_length=8)["input_ids"]
    assert padded == [49406, 320, 736, 9722, 49407, 49407, 49407, 49407]
