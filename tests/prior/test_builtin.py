"""The built-in prior: checked weights, the assembled folder, the `generate` default, unknown words."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from dreamfusion.commands import EXIT_USER_ERROR, main
from dreamfusion.errors import UserError
from dreamfusion.prior.builtin import CHECKSUMS, builtin_prior_folder, package_folder, ship, verify
from dreamfusion.run.config import default_preset
from dreamfusion.world import unknown_words

MAX_SHIPPED_BYTES = 50 * 1024**2  # the limit for the shipped weights


@pytest.fixture(autouse=True)
def no_wheel_download(monkeypatch: pytest.MonkeyPatch, clip_merges: str) -> None:
    """CLIP's merges come from the open-clip-torch wheel; a synthetic file in the same layout stands in."""
    monkeypatch.setattr("dreamfusion.prior.tokenizer.open_clip_wheel", lambda cache: cache / "stand-in.whl")
    monkeypatch.setattr("dreamfusion.prior.tokenizer.merges_from_wheel", lambda wheel: clip_merges)


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory: pytest.TempPathFactory, make_config, tiny_tokenizer: Path) -> Path:
    """A tiny exported prior shipped into a package-like folder, as `ship` does for the real one."""
    from dreamfusion.prior.train import PriorTrainer

    trainer = PriorTrainer(make_config(), tiny_tokenizer)
    model = tmp_path_factory.mktemp("export") / "model"
    trainer.export(model)
    package = tmp_path_factory.mktemp("package") / "builtin"
    ship(model, package)
    return package


def copy_of(package: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(package, tmp_path / "package"))


def test_ship_lists_every_file_but_the_tokenizer(tiny_package: Path):
    names = {line.split()[1] for line in (tiny_package / CHECKSUMS).read_text().splitlines()}
    assert "unet/diffusion_pytorch_model.safetensors" in names and "model_index.json" in names
    assert not any(n.startswith("tokenizer/") for n in names) and not (tiny_package / "tokenizer").exists()
    verify(tiny_package)


def test_a_damaged_or_missing_file_is_a_one_line_error(tiny_package: Path, tmp_path: Path):
    package = copy_of(tiny_package, tmp_path)
    weights = package / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="damaged"):
        verify(package)
    weights.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:0\n")
    with pytest.raises(UserError, match="Git LFS"):
        verify(package)
    weights.unlink()
    with pytest.raises(UserError, match="missing"):
        verify(package)
    (package / CHECKSUMS).unlink()
    with pytest.raises(UserError, match="not installed"):
        verify(package)


def test_assembled_folder_has_a_tokenizer_sized_to_the_text_encoder(tiny_package: Path, tmp_path: Path):
    folder = builtin_prior_folder(tmp_path / "cache", tiny_package)
    context = json.loads((folder / "text_encoder" / "config.json").read_text())["max_position_embeddings"]
    tokenizer = json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text())
    assert tokenizer["model_max_length"] == context
    assert {p.name for p in folder.iterdir()} >= {"unet", "text_encoder", "tokenizer", "scheduler"}
    stamp = (folder / "tokenizer" / "vocab.json").stat().st_mtime_ns
    assert builtin_prior_folder(tmp_path / "cache", tiny_package) == folder  # assembled once
    assert (folder / "tokenizer" / "vocab.json").stat().st_mtime_ns == stamp


def test_the_shipped_weights_are_intact_and_small():
    package = package_folder()
    verify(package)
    weights = sum(p.stat().st_size for p in package.rglob("*.safetensors"))
    assert 0 < weights <= MAX_SHIPPED_BYTES
    assert (package / "MODEL_CARD.md").is_file()


def test_unknown_words_are_named_once_in_order():
    assert unknown_words("a red cube on top of a blue cylinder, front view") == []
    words = unknown_words("A photo of a shiny red corgi, with a shiny hat.")
    assert words == ["shiny", "corgi", "with", "hat"]


def test_preset_follows_the_prior():
    assert default_preset(None) == "builtin" and default_preset("builtin") == "builtin"
    assert default_preset("pixel") == "paper" and default_preset("target") == "paper"


def test_vocab_lists_the_world(capsys):
    assert main(["prior", "vocab"]) == 0
    out = capsys.readouterr().out
    for word in ("red", "gray", "mug", "coffee mug", "on top of", "beside", "held out", "blue mug"):
        assert word in out


@pytest.mark.slow
def test_generate_defaults_to_the_builtin_prior_at_its_resolution(capsys, tmp_path: Path):
    run = tmp_path / "run"
    argv = ["generate", "a red corgi", "--steps", "2", "--out", str(run), "--set", "train.validation_every=2"]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "'corgi'" in captured.err and "dreamfusion prior vocab" in captured.err
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["guidance"]["kind"] == "builtin" and config["guidance"]["model"] is None
    assert config["train"]["resolution"] == 32  # the built-in prior's own
    assert (run / "validation" / "step_0000002.png").is_file()
    # A finished run is exported, with its turntable: the density blob alone already has a surface.
    assert f"mesh:  {run / 'export' / 'model.glb'}" in captured.out
    assert f"video: {run / 'export' / 'turntable.mp4'}" in captured.out
    files = {p.name for p in (run / "export").iterdir()}
    assert {"model.glb", "model.obj", "model.ply", "turntable.mp4", "turntable.gif"} <= files


def test_builtin_with_a_model_is_refused(capsys):
    code = main(["generate", "a red cube", "--guidance", "builtin", "--model", "x"])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and len(err.strip().splitlines()) == 1 and "--guidance pixel" in err
