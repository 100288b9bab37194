"""Weights-only checkpoints: exact round trips, bit-identical resume, atomic saves, errors on bad files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from dreamfusion import checkpoint as checkpoint_module
from dreamfusion.checkpoint import (
    FORMAT_MARKER,
    Checkpoint,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from dreamfusion.errors import UserError


def tiny_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))


def train_steps(
    model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator, steps: int
) -> None:
    """Each step draws its batch from `generator`, so a resumed run needs the generator state as well."""
    for _ in range(steps):
        points = torch.randn(16, 3, generator=generator)
        target = points.sum(dim=1, keepdim=True).sin()
        loss = (model(points) - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def sample_checkpoint() -> Checkpoint:
    model = tiny_model(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    generator = torch.Generator().manual_seed(3)
    train_steps(model, optimizer, generator, 2)
    return Checkpoint(
        step=2,
        modules={
            "field": model.state_dict(),
            "extras": {
                "half": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3),
                "counts": torch.tensor([1, 2, 3], dtype=torch.int64),
                "scalar": torch.tensor(2.5),
                "mask": torch.tensor([True, False]),
                "empty": torch.zeros(0, 4),
            },
            "background": {},
        },
        optimizer=optimizer.state_dict(),
        rng={"camera": generator.get_state(), "noise": torch.Generator().manual_seed(9).get_state()},
        meta={"config": "train:\n  steps: 10\n", "prompt": "a corgi, ünïcode 🐕", "empty": ""},
    )


def assert_same_tree(a: object, b: object) -> None:
    """Equal structure, types (tuple stays tuple; a state_dict's OrderedDict may come back a dict), bits."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for key in a:
            assert_same_tree(a[key], b[key])
        return
    assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor)
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_tree(x, y)
    else:
        assert a == b


def files_in(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir())


def error_text(excinfo: pytest.ExceptionInfo[UserError]) -> str:
    text = str(excinfo.value)
    assert "\n" not in text, "errors are one line"
    return text


# ----------------------------------------------------------------------------------------------------------
# Round trips


def test_round_trip_is_exact(tmp_path: Path) -> None:
    original = sample_checkpoint()
    path = checkpoint_path(tmp_path, original.step)
    save_checkpoint(path, original)
    loaded = load_checkpoint(path)
    assert loaded.step == 2
    assert_same_tree(loaded.modules, original.modules)
    assert_same_tree(loaded.optimizer, original.optimizer)
    assert_same_tree(loaded.rng, original.rng)
    assert loaded.meta == original.meta
    assert loaded.optimizer["param_groups"][0]["betas"] == (0.8, 0.95)
    assert files_in(tmp_path) == ["step_0000002.safetensors"]


def test_file_is_plain_safetensors_with_readable_keys(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, sample_checkpoint())
    with safe_open(str(path), framework="pt") as file:
        keys = set(file.keys())
        header = file.metadata()
    assert {"module/field/0.weight", "module/extras/half", "optim/state/0/exp_avg", "rng/camera"} <= keys
    assert header["format"] == FORMAT_MARKER and header["version"] == "1" and header["step"] == "2"


def test_loaded_generator_state_continues_the_same_stream(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(5)
    torch.rand(7, generator=generator)
    save_checkpoint(tmp_path / "g.safetensors", Checkpoint(0, {}, {}, {"g": generator.get_state()}, {}))
    expected = torch.rand(4, generator=generator)
    restored = torch.Generator()
    restored.set_state(load_checkpoint(tmp_path / "g.safetensors").rng["g"])
    assert torch.equal(torch.rand(4, generator=restored), expected)


def test_shared_and_non_contiguous_tensors_are_saved(tmp_path: Path) -> None:
    # safetensors refuses tensors that share storage (tied weights) and views; save_checkpoint copies them.
    base = torch.arange(12.0).reshape(3, 4)
    state = {
        "weight": base,
        "tied": base,
        "transposed": base.t(),
        "row": base[1],
        "param": nn.Parameter(base),
    }
    save_checkpoint(tmp_path / "c.safetensors", Checkpoint(1, {"m": state}, {}, {}, {}))
    loaded = load_checkpoint(tmp_path / "c.safetensors", map_location=torch.device("cpu")).modules["m"]
    for key, tensor in state.items():
        assert torch.equal(loaded[key], tensor)
        assert not loaded[key].requires_grad
    assert loaded["transposed"].shape == (4, 3)


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path: Path) -> None:
    model = tiny_model(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    train_steps(model, optimizer, generator, 5)
    path = checkpoint_path(tmp_path, 5)
    save_checkpoint(
        path,
        Checkpoint(
            5, {"model": model.state_dict()}, optimizer.state_dict(), {"data": generator.get_state()}, {}
        ),
    )
    train_steps(model, optimizer, generator, 5)

    # A fresh process: different initial weights, default Adam settings, an unseeded generator.
    ckpt = load_checkpoint(latest_checkpoint(tmp_path) or path)
    resumed = tiny_model(123)
    resumed.load_state_dict(ckpt.modules["model"])
    resumed_optimizer = torch.optim.Adam(resumed.parameters())
    resumed_optimizer.load_state_dict(ckpt.optimizer)
    resumed_generator = torch.Generator()
    resumed_generator.set_state(ckpt.rng["data"])
    train_steps(resumed, resumed_optimizer, resumed_generator, 5)

    for uninterrupted, continued in zip(
        model.state_dict().values(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(uninterrupted, continued)
    assert_same_tree(resumed_optimizer.state_dict(), optimizer.state_dict())


# ----------------------------------------------------------------------------------------------------------
# Atomic saves


def test_failed_save_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module.os, "fsync", broken_fsync)
    path = checkpoint_path(tmp_path, 7)
    with pytest.raises(UserError) as excinfo:
        save_checkpoint(path, sample_checkpoint())
    assert error_text(excinfo) == f"cannot write checkpoint {path}: No space left on device"
    assert files_in(tmp_path) == []


def test_failed_overwrite_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "step_0000001.safetensors"
    save_checkpoint(path, Checkpoint(1, {}, {}, {}, {"which": "old"}))

    def interrupted_replace(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, Checkpoint(2, {}, {}, {}, {"which": "new"}))
    monkeypatch.undo()
    assert files_in(tmp_path) == ["step_0000001.safetensors"]
    assert load_checkpoint(path).meta == {"which": "old"}


def test_save_creates_the_folder(tmp_path: Path) -> None:
    path = tmp_path / "run" / "checkpoints" / "step_0000000.safetensors"
    save_checkpoint(path, Checkpoint(0, {}, {}, {}, {}))
    assert load_checkpoint(path).step == 0


def test_unwritable_folder_is_a_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(UserError, match="^cannot write checkpoint "):
        save_checkpoint(blocker / "step_0000001.safetensors", Checkpoint(1, {}, {}, {}, {}))


@pytest.mark.parametrize(
    ("ckpt", "error"),
    [
        (Checkpoint(-1, {}, {}, {}, {}), ValueError),
        (Checkpoint(True, {}, {}, {}, {}), ValueError),
        (Checkpoint(0, {"a/b": {}}, {}, {}, {}), ValueError),
        (Checkpoint(0, {"m": {"w": [1.0]}}, {}, {}, {}), TypeError),  # type: ignore[dict-item]
        (Checkpoint(0, {}, {"state": {0: {"x": object()}}}, {}, {}), TypeError),
        (Checkpoint(0, {}, {}, {}, {"n": 1}), TypeError),  # type: ignore[dict-item]
    ],
)
def test_invalid_checkpoints_are_bugs_not_user_errors(tmp_path: Path, ckpt: Checkpoint, error: type) -> None:
    with pytest.raises(error):
        save_checkpoint(tmp_path / "x.safetensors", ckpt)
    assert files_in(tmp_path) == []


# ----------------------------------------------------------------------------------------------------------
# Bad files


@pytest.mark.parametrize(
    "content",
    [b"", b"abc", b"hello, this is a text file and not a checkpoint\n", os.urandom(4096)],
    ids=["empty", "short", "text", "garbage"],
)
def test_non_safetensors_files_are_user_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(UserError) as excinfo:
        load_checkpoint(path)
    assert error_text(excinfo).startswith(f"checkpoint {path} is corrupt or not a safetensors file: ")


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_checkpoint_is_a_user_error(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "step_0000002.safetensors"
    save_checkpoint(path, sample_checkpoint())
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(UserError) as excinfo:
        load_checkpoint(path)
    assert error_text(excinfo).startswith(f"checkpoint {path} is corrupt or not a safetensors file: ")


def test_missing_file_and_folder_are_user_errors(tmp_path: Path) -> None:
    for path in (tmp_path / "nope.safetensors", tmp_path):
        with pytest.raises(UserError) as excinfo:
            load_checkpoint(path)
        assert error_text(excinfo) == f"checkpoint {path} does not exist or is not a file"


def test_foreign_safetensors_file_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"weight": torch.ones(2)}, str(path))
    with pytest.raises(UserError) as excinfo:
        load_checkpoint(path)
    assert error_text(excinfo) == (
        f"{path} is not a dreamfusion checkpoint (no 'dreamfusion-checkpoint' marker in its header)"
    )
    save_file({"weight": torch.ones(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(UserError, match="is not a dreamfusion checkpoint"):
        load_checkpoint(path)


def rewrite_header(path: Path, **changes: str | None) -> None:
    """Re-save a checkpoint's tensors with some header entries changed (None removes one)."""
    with safe_open(str(path), framework="pt") as file:
        tensors = {key: file.get_tensor(key) for key in file.keys()}
        header = dict(file.metadata())
    for key, value in changes.items():
        if value is None:
            header.pop(key)
        else:
            header[key] = value
    save_file(tensors, str(path), metadata=header)


def test_other_format_version_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, sample_checkpoint())
    rewrite_header(path, version="2")
    with pytest.raises(UserError) as excinfo:
        load_checkpoint(path)
    assert (
        error_text(excinfo) == f"checkpoint {path} has format version '2'; this dreamfusion reads version 1"
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"step": "not json"},
        {"step": '"7"'},
        {"meta": None},
        {"meta": '{"a": 1}'},
        {"modules": '{"field": ["no_such_key"]}'},
        {"rng": "[]"},  # leaves rng tensors that the header does not describe
        {"optimizer": '{"state": {"__tensor__": "optim/missing"}}'},
        {"optimizer": "[]"},
    ],
)
def test_corrupt_header_is_a_user_error(tmp_path: Path, changes: dict[str, str | None]) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, sample_checkpoint())
    rewrite_header(path, **changes)
    with pytest.raises(UserError) as excinfo:
        load_checkpoint(path)
    assert error_text(excinfo).startswith(f"checkpoint {path} has a corrupt header: ")


# ----------------------------------------------------------------------------------------------------------
# Finding the latest checkpoint


def test_checkpoint_path_is_zero_padded(tmp_path: Path) -> None:
    assert checkpoint_path(tmp_path, 42) == tmp_path / "step_0000042.safetensors"
    assert checkpoint_path(tmp_path, 12345678).name == "step_12345678.safetensors"


def test_latest_checkpoint(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    for step in (5, 100, 20):
        save_checkpoint(checkpoint_path(tmp_path, step), Checkpoint(step, {}, {}, {}, {}))
    assert latest_checkpoint(tmp_path) == tmp_path / "step_0000100.safetensors"
    # Ignored: temp files of an interrupted save, other names, short numbers, folders.
    (tmp_path / ".step_0000900.safetensors.1a2b3c4d.tmp").write_bytes(b"partial")
    (tmp_path / "step_0000800.safetensors.bak").write_bytes(b"x")
    (tmp_path / "step_700.safetensors").write_bytes(b"x")
    (tmp_path / "step_0000600.safetensors").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "step_0000100.safetensors"
    save_checkpoint(checkpoint_path(tmp_path, 10_000_000), Checkpoint(10_000_000, {}, {}, {}, {}))
    assert latest_checkpoint(tmp_path) == tmp_path / "step_10000000.safetensors"
