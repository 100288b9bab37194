"""Weights-only training checkpoints: one safetensors file per save, never pickle.

Unpickling runs code from the file, so a checkpoint someone shares could do anything; safetensors holds
only tensors and a str -> str header. Everything that is not a tensor (the step, optimizer hyper-parameters,
free-form metadata such as the resolved config) is JSON in that header.

Layout of one file:
    tensors  module/<module>/<state_dict key>     e.g. module/field/planes
             optim/<path in the optimizer state>   e.g. optim/state/0/exp_avg
             rng/<generator name>                  torch.Generator.get_state() bytes
    header   format, version, step, modules (state_dict keys in order), optimizer (the state_dict as JSON with
             each tensor replaced by {"__tensor__": key}), rng (generator names), meta

Files are written atomically (temp file, fsync, rename), so a crash mid-save never leaves a truncated file
under a checkpoint's name, and `latest_checkpoint` can trust any file it finds.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from dreamfusion.errors import RunFolderError
from dreamfusion.files import atomic_path

FORMAT_MARKER = "dreamfusion-checkpoint"
FORMAT_VERSION = 1

_STEP_FILE = re.compile(r"step_(\d{7,})\.safetensors")

# Tags in the optimizer's JSON skeleton for what JSON cannot say directly: a tensor stored beside the header,
# a tuple (Adam's betas), and a dict whose keys are not strings (optimizer state is keyed by parameter index).
_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_ITEMS = "__items__"


@dataclass
class Checkpoint:
    step: int
    modules: dict[str, dict[str, Tensor]]  # module name -> state_dict, e.g. {"field": ..., "background": ...}
    optimizer: dict[str, Any]  # torch.optim.Optimizer.state_dict(), restored exactly
    rng: dict[str, Tensor]  # generator name -> torch.Generator.get_state() (a CPU uint8 tensor)
    meta: dict[str, str]  # free-form strings: resolved config YAML, prompt, versions


def checkpoint_path(folder: Path, step: int) -> Path:
    """Where the checkpoint for `step` goes: folder/step_0001234.safetensors (zero-padded so names sort)."""
    return Path(folder) / f"step_{step:07d}.safetensors"


def latest_checkpoint(folder: Path) -> Path | None:
    """The step_XXXXXXX.safetensors file with the highest step in `folder`, or None if there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    best: tuple[int, Path] | None = None
    for entry in folder.iterdir():
        match = _STEP_FILE.fullmatch(entry.name)
        if match and entry.is_file():
            step = int(match.group(1))
            if best is None or step > best[0]:
                best = (step, entry)
    return best[1] if best else None


# ----------------------------------------------------------------------------------------------------------
# Saving


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Write `ckpt` to `path` atomically, creating its folder if needed. Unwritable folder: UserError."""
    path = Path(path)
    tensors, header = _serialise(ckpt)
    _write_atomically(path, safetensors_bytes(tensors, metadata=header))


def _serialise(ckpt: Checkpoint) -> tuple[dict[str, Tensor], dict[str, str]]:
    if isinstance(ckpt.step, bool) or not isinstance(ckpt.step, int) or ckpt.step < 0:
        raise ValueError(f"checkpoint step must be an int >= 0, got {ckpt.step!r}")
    tensors: dict[str, Tensor] = {}
    module_keys: dict[str, list[str]] = {}
    for name, state in ckpt.modules.items():
        _check_name("module", name)
        module_keys[name] = list(state)
        for key, tensor in state.items():
            tensors[f"module/{name}/{key}"] = _savable(tensor, f"module {name!r} entry {key!r}")
    for name, state in ckpt.rng.items():
        _check_name("rng", name)
        tensors[f"rng/{name}"] = _savable(state, f"rng state {name!r}")
    optimizer = _encode(ckpt.optimizer, "optim", tensors)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in ckpt.meta.items()):
        raise TypeError("checkpoint meta must map str to str")
    header = {
        "format": FORMAT_MARKER,
        "version": str(FORMAT_VERSION),
        "step": json.dumps(ckpt.step),
        "modules": json.dumps(module_keys),
        "optimizer": json.dumps(optimizer),
        "rng": json.dumps(list(ckpt.rng)),
        "meta": json.dumps(ckpt.meta),
    }
    return tensors, header


def _check_name(kind: str, name: str) -> None:
    # The name is one segment of a "/"-separated tensor key; a "/" inside it would make keys ambiguous.
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"checkpoint {kind} name must be a non-empty string without '/', got {name!r}")


def _savable(tensor: Any, what: str) -> Tensor:
    """A contiguous CPU copy: safetensors refuses views and tensors that share storage (tied weights)."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"checkpoint {what} is a {type(tensor).__name__}, not a tensor")
    return tensor.detach().to(device="cpu", memory_format=torch.contiguous_format, copy=True)


def _encode(value: Any, key: str, tensors: dict[str, Tensor]) -> Any:
    """JSON-able skeleton of `value`; its tensors go into `tensors` under keys that follow their path."""
    if isinstance(value, Tensor):
        if key in tensors:
            raise ValueError(f"two optimizer entries map to the same checkpoint key {key!r}")
        tensors[key] = _savable(value, f"optimizer entry {key!r}")
        return {_TENSOR: key}
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, f"{key}/{k}", tensors) for k, v in value.items()}
        for k in value:
            if isinstance(k, bool) or not isinstance(k, (int, str)):
                raise TypeError(f"optimizer entry {key!r} has a key of type {type(k).__name__}")
        return {_ITEMS: [[k, _encode(v, f"{key}/{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"optimizer entry {key!r} is a {type(value).__name__}, which a checkpoint cannot hold")


def _write_atomically(path: Path, payload: bytes) -> None:
    # A dot-prefixed temp name in the same folder: os.replace is atomic only within one filesystem, and
    # latest_checkpoint ignores names that do not match step_XXXXXXX.safetensors.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temp, open(temp, "xb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
    except OSError as exc:
        raise RunFolderError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from exc
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable. POSIX only; where a filesystem refuses, only durability is lost."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ----------------------------------------------------------------------------------------------------------
# Loading


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`. Module and optimizer tensors go to `map_location`;
    generator states stay on the CPU, which is where torch.Generator.set_state wants them (even for CUDA).

    A missing, truncated, corrupt or foreign file is a UserError naming the file and the problem.
    """
    path = Path(path)
    device = torch.device(map_location)
    if not path.is_file():
        raise RunFolderError(f"checkpoint {path} does not exist or is not a file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            header = file.metadata() or {}
            _check_format(path, header)
            tensors = {key: file.get_tensor(key) for key in file.keys()}
    except SafetensorError as exc:
        raise RunFolderError(
            f"checkpoint {path} is corrupt or not a safetensors file: {_one_line(exc)}"
        ) from exc
    except OSError as exc:
        raise RunFolderError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    try:
        return _deserialise(header, tensors, device)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise RunFolderError(f"checkpoint {path} has a corrupt header: {_one_line(exc)}") from exc


def _check_format(path: Path, header: Mapping[str, str]) -> None:
    if header.get("format") != FORMAT_MARKER:
        raise RunFolderError(
            f"{path} is not a dreamfusion checkpoint (no {FORMAT_MARKER!r} marker in its header)"
        )
    if header.get("version") != str(FORMAT_VERSION):
        raise RunFolderError(
            f"checkpoint {path} has format version {header.get('version')!r}; this dreamfusion reads version "
            f"{FORMAT_VERSION}"
        )


def _deserialise(header: Mapping[str, str], tensors: dict[str, Tensor], device: torch.device) -> Checkpoint:
    """Rebuild the Checkpoint; a KeyError, ValueError or TypeError here means a corrupt header."""
    used: set[str] = set()

    def take(key: str, to_device: bool) -> Tensor:
        if key not in tensors:
            raise KeyError(f"missing tensor {key!r}")
        used.add(key)
        return tensors[key].to(device) if to_device else tensors[key]

    step = json.loads(header["step"])
    if isinstance(step, bool) or not isinstance(step, int):
        raise ValueError(f"step is {step!r}")
    modules = {
        name: {key: take(f"module/{name}/{key}", True) for key in keys}
        for name, keys in json.loads(header["modules"]).items()
    }
    rng = {name: take(f"rng/{name}", False) for name in json.loads(header["rng"])}
    optimizer = _decode(json.loads(header["optimizer"]), lambda key: take(key, True))
    meta = json.loads(header["meta"])
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("meta is not a mapping of strings")
    unused = sorted(set(tensors) - used)
    if unused:
        raise ValueError(f"tensor {unused[0]!r} is not described by the header")
    if not isinstance(optimizer, dict):
        raise ValueError("optimizer state is not a mapping")
    return Checkpoint(step=step, modules=modules, optimizer=optimizer, rng=rng, meta=meta)


def _decode(value: Any, tensor: Callable[[str], Tensor]) -> Any:
    """Inverse of `_encode`; `tensor(key)` fetches a stored tensor."""
    if isinstance(value, list):
        return [_decode(item, tensor) for item in value]
    if isinstance(value, dict):
        if _TENSOR in value:
            return tensor(value[_TENSOR])
        if _TUPLE in value:
            return tuple(_decode(item, tensor) for item in value[_TUPLE])
        if _ITEMS in value:
            return {k: _decode(v, tensor) for k, v in value[_ITEMS]}
        return {k: _decode(v, tensor) for k, v in value.items()}
    return value


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
