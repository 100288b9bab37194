"""Text embeddings of view-dependent prompts, computed once per (model, text) and kept on disk.

Optionally the embeddings of neighbouring views are interpolated by azimuth instead of switching at the
boundaries (prompts.py has the words).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from dreamfusion.errors import SettingsError
from dreamfusion.files import atomic_path, dreamfusion_cache
from dreamfusion.guidance.base import Guidance, TextEmbeddings
from dreamfusion.prompts import VIEW_WORDS, PromptConfig, debias_prompt, validate_prompt, view_word, with_view
from dreamfusion.render.cameras import Cameras

log = logging.getLogger("dreamfusion")


def default_cache_dir() -> Path:
    """Where text embeddings are cached."""
    return dreamfusion_cache() / "text_embeddings"


class _WarningCapture(logging.Handler):
    """Collects the warnings a prior logs while encoding one text (e.g. "truncated to 77 tokens")."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _encode_one(guidance: Guidance, text: str) -> tuple[Tensor, list[str]]:
    capture = _WarningCapture()
    log.addHandler(capture)
    try:
        row = guidance.encode_text([text])[0].detach().to("cpu")
    finally:
        log.removeHandler(capture)
    return row, capture.messages


def _read_cached(path: Path) -> tuple[Tensor, list[str]] | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            warnings = json.loads((f.metadata() or {}).get("warnings", "[]"))
            return f.get_tensor("embedding"), [str(w) for w in warnings]
    except Exception:  # absent, corrupt or unreadable: recompute
        return None


def _write_cached(path: Path, row: Tensor, warnings: list[str]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temp:
            save_file({"embedding": row.contiguous()}, str(temp), metadata={"warnings": json.dumps(warnings)})
    except OSError as exc:
        log.debug("text-embedding cache not written: %s", exc)


def cached_text_embeddings(guidance: Guidance, texts: Sequence[str], cache_dir: Path | None) -> Tensor:
    """(N, L, D) embeddings, computed once per (model, text) and kept on disk as safetensors.

    The warnings a text caused when it was encoded (a prompt truncated to the tokenizer's length) are kept
    with it and repeated on every cache hit, so the user hears about them on every run. A cache that cannot
    be written (read-only home, say) only costs recomputation: it is never an error.
    """
    if cache_dir is None:
        return guidance.encode_text(list(texts))
    key_prefix = guidance.cache_key()
    rows = []
    for text in texts:
        path = cache_dir / (hashlib.sha256(f"{key_prefix}\0{text}".encode()).hexdigest() + ".safetensors")
        cached = _read_cached(path)
        if cached is None:
            row, warnings = _encode_one(guidance, text)
            _write_cached(path, row, warnings)
        else:
            row, warnings = cached
            for message in warnings:
                log.warning(message)
        rows.append(row)
    return torch.stack(rows)


class PromptEmbeddings:
    """Embeddings of the prompt with each view word, and of the negative prompt, computed once.

    `perp_neg` > 0 (guidance.sds.perp_neg) also gives each camera Perp-Neg's negative prompts: the front and
    the back view prompts, weighted perp_neg * d / 180 and perp_neg * (1 - d / 180) for a camera d degrees
    of azimuth from the front. A back view pushes away from "front view" at full weight, a side view from
    both at half, and a front view from "back view"; guidance/base.py keeps only their perpendicular parts.
    """

    def __init__(
        self, config: PromptConfig, guidance: Guidance, cache_dir: Path | None, perp_neg: float = 0.0
    ):
        self.prompt = validate_prompt(config.text)
        self.config = config
        self.perp_neg = perp_neg
        if perp_neg > 0 and not config.view_dependent:
            raise SettingsError(
                "guidance.sds.perp_neg needs view prompts: set prompt.view_dependent=true or perp_neg=0"
            )
        if config.view_dependent:
            texts = [
                with_view(debias_prompt(self.prompt, v) if config.debias else self.prompt, v)
                for v in VIEW_WORDS
            ]
        else:
            texts = [self.prompt]
        embeddings = cached_text_embeddings(guidance, texts + [config.negative], cache_dir)
        self.views = embeddings[:-1]  # (4 or 1, L, D)
        self.negative = embeddings[-1]  # (L, D)

    def for_cameras(self, cameras: Cameras, device: torch.device, dtype: torch.dtype) -> TextEmbeddings:
        rows = [
            self._embedding(float(e), float(a))
            for e, a in zip(cameras.elevation_deg, cameras.azimuth_deg, strict=True)
        ]
        cond = torch.stack(rows).to(device=device, dtype=dtype)
        uncond = self.negative.expand_as(cond).to(device=device, dtype=dtype)
        if self.perp_neg <= 0:
            return TextEmbeddings(cond=cond, uncond=uncond)
        from_front = torch.minimum(cameras.azimuth_deg % 360.0, 360.0 - cameras.azimuth_deg % 360.0).float()
        weights = self.perp_neg * torch.stack([from_front / 180.0, 1.0 - from_front / 180.0], -1)
        front_back = self.views[[0, 2]]  # (2, L, D)
        negatives = front_back.expand(cond.shape[0], *front_back.shape).to(device=device, dtype=dtype)
        return TextEmbeddings(cond, uncond, negatives, weights.to(device=device, dtype=dtype))

    def words(self, cameras: Cameras) -> list[str]:
        return [
            view_word(float(e), float(a), self.config)
            for e, a in zip(cameras.elevation_deg, cameras.azimuth_deg, strict=True)
        ]

    def _embedding(self, elevation_deg: float, azimuth_deg: float) -> Tensor:
        if not self.config.view_dependent:
            return self.views[0]
        word = view_word(elevation_deg, azimuth_deg, self.config)
        if word == "overhead" or not self.config.interpolate:
            return self.views[VIEW_WORDS.index(word)]
        # Blend by azimuth: front at 0 deg, side at 90 deg, back at 180 deg (both sides share "side").
        from_front = min(azimuth_deg % 360.0, 360.0 - azimuth_deg % 360.0)
        front, side, back = self.views[0], self.views[1], self.views[2]
        if from_front <= 90.0:
            return torch.lerp(front, side, from_front / 90.0)
        return torch.lerp(side, back, (from_front - 90.0) / 90.0)
