"""Resolving a prior to a local folder: hub cache first, offline and broken folders as one-line UserErrors."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from transformers.utils import is_protobuf_available, is_sentencepiece_available

from dreamfusion.errors import UserError
from dreamfusion.guidance.base import SDSConfig
from dreamfusion.guidance.components import epsilon_from_output, per_image
from dreamfusion.guidance.hub import _files_to_fetch, resolve_model
from dreamfusion.guidance.pixel_diffusion import COMPONENTS as PIXEL
from dreamfusion.guidance.pixel_diffusion import PixelDiffusionGuidance
from dreamfusion.testing import save_tiny_pixel_diffusion

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny_if(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pixel_diffusion(tmp_path_factory.mktemp("tiny-if"))


@pytest.fixture
def offline_empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-home" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _one_line(exc: pytest.ExceptionInfo[UserError]) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


def _fake_cache_entry(cache: Path, repo_id: str, source: Path, drop: str | None = None) -> Path:
    """The hub cache's layout for one snapshot: refs/main holds the commit, snapshots/<commit>/ the files."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(source, snapshot)
    if drop is not None:
        shutil.rmtree(snapshot / drop)
    return snapshot


def test_missing_hub_model_offline_is_a_quick_one_line_error(offline_empty_cache: Path):
    start = time.monotonic()
    with pytest.raises(UserError) as exc:
        resolve_model("DeepFloyd/IF-I-XL-v1.0", PIXEL)
    assert time.monotonic() - start < 5.0
    message = _one_line(exc)
    assert "DeepFloyd/IF-I-XL-v1.0" in message
    assert "hf download" in message and "--model" in message


def test_the_backend_constructor_raises_the_same_error(offline_empty_cache: Path):
    with pytest.raises(UserError) as exc:
        PixelDiffusionGuidance("DeepFloyd/IF-I-XL-v1.0", SDSConfig(), torch.device("cpu"), torch.float32, 0)
    assert "DeepFloyd/IF-I-XL-v1.0" in _one_line(exc)


def test_transformers_offline_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    with pytest.raises(UserError) as exc:
        resolve_model("someone/some-model", PIXEL)
    assert "switched off" in _one_line(exc)


def test_unreachable_hub_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused at once
    start = time.monotonic()
    with pytest.raises(UserError) as exc:
        resolve_model("someone/some-model", PIXEL)
    assert time.monotonic() - start < 30.0
    message = _one_line(exc)
    assert "cannot be reached" in message and "someone/some-model" in message


def test_a_cached_snapshot_is_found_offline(offline_empty_cache: Path, tiny_if: Path):
    snapshot = _fake_cache_entry(offline_empty_cache, "someone/tiny-if", tiny_if)
    folder = resolve_model("someone/tiny-if", PIXEL)
    assert folder.path == snapshot
    assert folder.hub_id == "someone/tiny-if" and folder.commit == COMMIT
    assert folder.fingerprint("text_encoder") == f"someone/tiny-if@{COMMIT}/text_encoder"


def test_a_cached_guidance_keys_its_text_cache_by_commit(offline_empty_cache: Path, tiny_if: Path):
    _fake_cache_entry(offline_empty_cache, "someone/tiny-if", tiny_if)
    guidance = PixelDiffusionGuidance("someone/tiny-if", SDSConfig(), torch.device("cpu"), torch.float32, 0)
    assert COMMIT in guidance.cache_key() and "someone/tiny-if" in guidance.cache_key()


def test_an_incomplete_cached_snapshot_offline_is_an_error(offline_empty_cache: Path, tiny_if: Path):
    _fake_cache_entry(offline_empty_cache, "someone/tiny-if", tiny_if, drop="unet")
    with pytest.raises(UserError) as exc:
        resolve_model("someone/tiny-if", PIXEL)
    assert "someone/tiny-if" in _one_line(exc)


def test_a_local_folder_without_unet_is_an_error(tiny_if: Path, tmp_path: Path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_if, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(UserError) as exc:
        resolve_model(str(broken), PIXEL)
    assert "unet/" in _one_line(exc)


def test_a_local_folder_without_weights_is_an_error(tiny_if: Path, tmp_path: Path):
    broken = tmp_path / "no-weights"
    shutil.copytree(tiny_if, broken)
    (broken / "text_encoder" / "model.safetensors").unlink()
    with pytest.raises(UserError) as exc:
        resolve_model(str(broken), PIXEL)
    assert "text_encoder/" in _one_line(exc)


def test_a_local_folder_without_model_index_is_an_error(tiny_if: Path, tmp_path: Path):
    broken = tmp_path / "no-index"
    shutil.copytree(tiny_if, broken)
    (broken / "model_index.json").unlink()
    with pytest.raises(UserError) as exc:
        resolve_model(str(broken), PIXEL)
    assert "model_index.json" in _one_line(exc)


def test_a_local_folder_resolves_to_itself(tiny_if: Path):
    folder = resolve_model(str(tiny_if), PIXEL)
    assert folder.path == tiny_if.resolve() and folder.hub_id is None
    assert str(tiny_if.resolve() / "text_encoder") in folder.fingerprint("text_encoder")


def test_a_missing_path_is_an_error(tmp_path: Path):
    with pytest.raises(UserError) as exc:
        resolve_model(str(tmp_path / "nowhere" / "model"), PIXEL)
    assert "does not exist" in _one_line(exc)


def test_an_invalid_name_is_an_error():
    with pytest.raises(UserError) as exc:
        resolve_model("not a model name!", PIXEL)
    _one_line(exc)


def test_a_text_encoder_class_outside_the_allow_list_is_refused(tiny_if: Path, tmp_path: Path):
    odd = tmp_path / "odd"
    shutil.copytree(tiny_if, odd)
    index = json.loads((odd / "model_index.json").read_text())
    index["text_encoder"] = ["transformers", "BertModel"]
    (odd / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UserError) as exc:
        PixelDiffusionGuidance(str(odd), SDSConfig(), torch.device("cpu"), torch.float32, 0)
    assert "BertModel" in _one_line(exc)


def test_download_list_takes_one_weight_format_and_no_variants():
    repo = [
        "model_index.json",
        "README.md",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.bin",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.non_ema.safetensors",
        "text_encoder/config.json",
        "text_encoder/pytorch_model.bin",
        "text_encoder/model.fp16-00001-of-00002.safetensors",
        "tokenizer/spiece.model",
        "tokenizer/tokenizer_config.json",
        "scheduler/scheduler_config.json",
        "safety_checker/model.safetensors",
    ]
    files = _files_to_fetch(repo, ("unet", "text_encoder", "tokenizer", "scheduler"))
    assert sorted(files) == sorted(
        [
            "model_index.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
            "text_encoder/config.json",
            "text_encoder/pytorch_model.bin",
            "tokenizer/spiece.model",
            "tokenizer/tokenizer_config.json",
            "scheduler/scheduler_config.json",
        ]
    )


def test_v_and_x0_predictions_convert_to_the_noise():
    x0, eps = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    abar = torch.tensor([0.9, 0.5, 0.05])
    a = abar.sqrt().view(-1, 1, 1, 1)
    s = (1 - abar).sqrt().view(-1, 1, 1, 1)
    z = a * x0 + s * eps
    torch.testing.assert_close(epsilon_from_output(eps, z, abar, "epsilon"), eps)
    torch.testing.assert_close(epsilon_from_output(a * eps - s * x0, z, abar, "v_prediction"), eps)
    torch.testing.assert_close(epsilon_from_output(x0, z, abar, "sample"), eps, rtol=1e-4, atol=1e-4)


def test_one_prompt_is_shared_by_the_batch():
    one = torch.randn(1, 5, 8)
    assert per_image(one, 3).shape == (3, 5, 8)
    with pytest.raises(ValueError):
        per_image(torch.randn(2, 5, 8), 3)


@pytest.mark.skipif(
    is_sentencepiece_available() and is_protobuf_available(), reason="sentencepiece, protobuf installed"
)
def test_a_sentencepiece_only_tokenizer_without_its_packages_is_a_clear_error(tiny_if: Path, tmp_path: Path):
    spm_only = tmp_path / "spm-only"
    shutil.copytree(tiny_if, spm_only)
    # DeepFloyd IF's tokenizer/ holds spiece.model and no tokenizer.json.
    (spm_only / "tokenizer" / "tokenizer.json").unlink()
    (spm_only / "tokenizer" / "spiece.model").write_bytes(b"not read: the check comes first")
    with pytest.raises(UserError) as exc:
        PixelDiffusionGuidance(str(spm_only), SDSConfig(), torch.device("cpu"), torch.float32, 0)
    assert "pip install sentencepiece protobuf" in _one_line(exc)
