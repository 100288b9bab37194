import logging

import pytest
import torch

from dreamfusion.errors import UserError
from dreamfusion.guidance.embeddings import PromptEmbeddings, cached_text_embeddings
from dreamfusion.prompts import PromptConfig, view_word
from dreamfusion.render.cameras import orbit_cameras


@pytest.mark.parametrize(
    "elevation, azimuth, word",
    [
        (0, 0, "front"),
        (0, 44.9, "front"),
        (0, 45, "side"),
        (0, 315, "side"),
        (0, 315.1, "front"),
        (0, 90, "side"),
        (0, 134.9, "side"),
        (0, 135, "side"),
        (0, 135.1, "back"),
        (0, 180, "back"),
        (0, 224.9, "back"),
        (0, 225, "side"),
        (0, 270, "side"),
        (60, 0, "front"),
        (60.01, 180, "overhead"),
        (90, 90, "overhead"),
        (-10, 180, "back"),
        (0, 360, "front"),
        (0, -30, "front"),
    ],
)
def test_view_words_at_boundaries(elevation, azimuth, word):
    assert view_word(elevation, azimuth, PromptConfig()) == word


class CountingGuidance:
    """Stands in for a prior's text encoder: embeds a text as its length, counts calls."""

    def __init__(self):
        self.calls = 0
        self.encoded: list[str] = []

    def cache_key(self) -> str:
        return "counting-v1"

    def encode_text(self, texts):
        self.calls += 1
        self.encoded += list(texts)
        return torch.stack([torch.full((2, 3), float(len(t))) for t in texts])


def test_embeddings_are_cached_on_disk(tmp_path):
    g = CountingGuidance()
    first = cached_text_embeddings(g, ["a", "bb"], tmp_path)
    second = cached_text_embeddings(g, ["bb", "a", "ccc"], tmp_path)
    assert g.encoded == ["a", "bb", "ccc"]  # each text encoded once
    assert torch.equal(first[1], second[0]) and float(second[2, 0, 0]) == 3.0


def test_unwritable_cache_is_not_an_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = cached_text_embeddings(CountingGuidance(), ["x"], blocker / "cache")
    assert out.shape == (1, 2, 3)


def test_view_dependent_and_interpolated_embeddings(tmp_path):
    g = CountingGuidance()
    prompts = PromptEmbeddings(PromptConfig(text="  a   mug ", negative="blurry"), g, tmp_path)
    assert prompts.prompt == "a mug"
    assert g.encoded[:4] == [
        "a mug, front view",
        "a mug, side view",
        "a mug, back view",
        "a mug, overhead view",
    ]
    cams = orbit_cameras(4, 16, elevation_deg=0.0)
    assert prompts.words(cams) == ["front", "side", "back", "side"]
    text = prompts.for_cameras(cams, torch.device("cpu"), torch.float32)
    assert text.cond.shape == (4, 2, 3) and float(text.uncond[0, 0, 0]) == len("blurry")
    assert float(text.cond[2, 0, 0]) == len("a mug, back view")
    blended = PromptEmbeddings(PromptConfig(text="a mug", interpolate=True), g, tmp_path)
    half = orbit_cameras(8, 16, elevation_deg=0.0)  # azimuth 45 is halfway between front and side
    value = float(blended.for_cameras(half, torch.device("cpu"), torch.float32).cond[1, 0, 0])
    assert value == pytest.approx((len("a mug, front view") + len("a mug, side view")) / 2)


def test_empty_prompt_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="empty"):
        PromptEmbeddings(PromptConfig(text=" \t\n"), CountingGuidance(), tmp_path)


class TruncatingGuidance(CountingGuidance):
    def encode_text(self, texts):
        for t in texts:
            if len(t) > 20:
                logging.getLogger("dreamfusion").warning("prompt truncated: %s", t[:20])
        return super().encode_text(texts)


def test_truncation_warning_repeats_on_cache_hits(tmp_path, caplog):
    g = TruncatingGuidance()
    long_text = "a very long prompt that goes on and on"
    with caplog.at_level(logging.WARNING, logger="dreamfusion"):
        cached_text_embeddings(g, [long_text, "short"], tmp_path)
        cached_text_embeddings(g, [long_text, "short"], tmp_path)
    assert g.encoded == [long_text, "short"]  # encoded once ...
    assert [r.getMessage() for r in caplog.records] == [
        "prompt truncated: a very long prompt t"
    ] * 2  # warned twice
