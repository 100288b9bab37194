"""The guidance table (issue #16): a backend is one module with `build(config, context)` plus one line in
`BACKENDS`. This file is such a module: the test registers it, in the test alone, and generates with it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from torch import Tensor

from dreamfusion.commands import main
from dreamfusion.config import from_dict, load_yaml_overrides
from dreamfusion.guidance import BACKENDS, Backend, GuidanceConfig, GuidanceContext
from dreamfusion.guidance.base import GuidanceOutput, TextEmbeddings, ViewBatch
from dreamfusion.run.config import Config

RENDER_SIZE = 24  # not the size of any real backend, so the run's resolution can only have come from here
calls: list[int] = []


class GreyGuidance:
    """Pulls every render toward mid-grey: the simplest guidance whose gradient is not zero."""

    image_size = render_size = RENDER_SIZE
    warnings = ("the grey guidance ignores the prompt",)

    def cache_key(self) -> str:
        return "grey"

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        return torch.zeros(len(texts), 1, 1)

    def __call__(self, images: Tensor, text: TextEmbeddings, step: int, views: ViewBatch) -> GuidanceOutput:
        calls.append(step)
        grad = (images.detach() - 0.5).contiguous()
        zeros = torch.zeros(images.shape[0], dtype=torch.long)
        return GuidanceOutput(image_grad=grad, timesteps=zeros, grad_norm=float(grad.norm()))

    def rng_state(self) -> Tensor:
        return torch.zeros(1, dtype=torch.uint8)

    def set_rng_state(self, state: Tensor) -> None:
        pass


def build(config: GuidanceConfig, context: GuidanceContext) -> GreyGuidance:
    return GreyGuidance()


@pytest.fixture
def grey_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKENDS, "grey", Backend(__name__, about="the test's grey guidance"))
    calls.clear()


def test_a_backend_registered_in_the_table_alone_runs_through_generate(grey_backend, tmp_path: Path, capsys):
    out = tmp_path / "run"
    argv = ["generate", "a red cube", "--guidance", "grey", "--steps", "3", "--out", str(out)]
    small = ["sampling.samples_per_ray=16", "sampling.occupancy_resolution=16", "train.validation_views=2"]
    code = main([*argv, "--no-progress", *(item for setting in small for item in ("--set", setting))])
    err = capsys.readouterr().err
    assert code == 0, err
    assert calls == [0, 1, 2]
    assert "the grey guidance ignores the prompt" in err  # the backend's own warning, logged by generate
    config = from_dict(Config, load_yaml_overrides(out / "config.yaml"))
    assert config.guidance.kind == "grey"
    assert config.train.resolution == RENDER_SIZE  # the render size the backend asked for
    assert (out / "checkpoints" / "step_0000003.safetensors").is_file()


def test_a_kind_not_in_the_table_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="builtin, pixel, stable-diffusion, target"):
        GuidanceConfig(kind="grey")
