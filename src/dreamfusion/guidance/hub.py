"""Where a diffusion prior's files come from.

`resolve_model` turns what the user typed (a Hugging Face hub id or a local folder) into a local folder in
the diffusers layout (model_index.json plus one sub-folder per component). It looks in the Hugging Face cache
first and goes online only when allowed (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE unset) and with a short
timeout, so a machine without a network gets a one-line `UserError` instead of a hang or a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HFValidationError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from dreamfusion.errors import ModelError

logger = logging.getLogger("dreamfusion")

# For the hub's metadata requests: a machine without a network fails in seconds, not minutes.
HUB_TIMEOUT_S = 10.0
_TRUE = {"1", "ON", "YES", "TRUE"}

# Non-variant weight files (diffusers and transformers names, single or sharded). Variants such as
# ".fp16." or ".non_ema." are skipped: from_pretrained without `variant` does not read them.
_WEIGHTS = re.compile(r"^(diffusion_pytorch_model|model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)$")
_WEIGHTS_INDEX = re.compile(
    r"^(diffusion_pytorch_model|model|pytorch_model)\.(safetensors|bin)\.index\.json$"
)
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model")


# ---------------------------------------------------------------------------------------------------------
# Resolving a model name to a local folder.


@dataclass(frozen=True)
class ModelFolder:
    """A prior on local disk in the diffusers layout."""

    name: str  # what the user asked for: a hub id or a path
    path: Path  # absolute local folder holding model_index.json and the component sub-folders
    hub_id: str | None  # set when it came from the hub cache
    commit: str | None  # the cached snapshot's commit hash, when it came from the hub

    def component_class(self, component: str) -> str:
        """The class name model_index.json gives for `component`, e.g. "T5EncoderModel"."""
        index = json.loads((self.path / "model_index.json").read_text(encoding="utf-8"))
        entry = index.get(component)
        if not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[1], str):
            raise ModelError(f"model {self.name!r}: model_index.json names no class for {component!r}")
        return entry[1]

    def fingerprint(self, component: str) -> str:
        """Identifies a component's files: the hub commit if known, else path, size and mtime of each file."""
        if self.hub_id is not None and self.commit is not None:
            return f"{self.hub_id}@{self.commit}/{component}"
        parts = [
            f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
            for f in sorted((self.path / component).iterdir())
            if f.is_file()
        ]
        return f"{self.path / component}[{','.join(parts)}]"


def resolve_model(model: str, components: Sequence[str]) -> ModelFolder:
    """A local folder with `components` (e.g. "unet", "text_encoder"), from a path or a hub id.

    An existing directory wins over a hub id of the same spelling, as in diffusers. A hub id is looked up in
    the Hugging Face cache first; only if that fails and the hub is not switched off is it downloaded (only
    the files the backend needs: configs, tokenizer files and the non-variant weights of `components`).
    """
    local = Path(model).expanduser()
    if local.is_dir():
        folder = ModelFolder(name=model, path=local.resolve(), hub_id=None, commit=None)
        _check_components(folder, components, hint="pass a complete diffusers folder")
        return folder
    if _looks_like_path(model):
        raise ModelError(
            f"model folder {model!r} does not exist: pass an existing folder or a Hugging Face hub id"
        )
    try:
        validate_repo_id(model)
    except HFValidationError as exc:
        raise ModelError(
            f"model {model!r} is neither an existing folder nor a valid Hugging Face hub id"
        ) from exc

    cache_dir = hub_cache_dir()
    cached = _from_cache(model, cache_dir, components)
    if cached is not None:
        return cached
    if hub_offline():
        raise ModelError(
            f"model {model!r} is not (completely) in the Hugging Face cache {cache_dir} and the hub is "
            f"switched off (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE): {_how_to_supply(model)}"
        )
    folder = _download(model, cache_dir, components)
    _check_components(folder, components, hint="the hub repository does not look like a diffusers pipeline")
    return folder


def _how_to_supply(model: str) -> str:
    # `hf` is huggingface_hub's command line tool (it replaced `huggingface-cli`).
    return (
        f"download it on a connected machine (hf download {model}, then copy the cache or the folder) "
        "or pass --model /path/to/a/local/folder"
    )


def hub_cache_dir() -> Path:
    """The hub cache, read from the environment now (not at import), so that HF_HUB_CACHE / HF_HOME set by the
    caller, a test or a job script take effect."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """True when the user switched the hub off, through either library's variable."""
    variables = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE")
    return constants.HF_HUB_OFFLINE or any(os.environ.get(v, "").upper() in _TRUE for v in variables)


def _looks_like_path(model: str) -> bool:
    """A hub id is "owner/name"; anything absolute, relative-looking or with more parts is meant as a path."""
    return (
        os.path.isabs(model)
        or model.startswith(("./", "../", "~", ".\\"))
        or model.count("/") > 1
        or "\\" in model
    )


def _from_cache(model: str, cache_dir: Path, components: Sequence[str]) -> ModelFolder | None:
    """The cached snapshot of `model`'s default revision, if it holds every needed component."""
    try:
        # Only model_index.json is named: the cache may rightly lack files we never download (fp16 variants).
        path = snapshot_download(
            model, cache_dir=cache_dir, local_files_only=True, allow_patterns=["model_index.json"]
        )
    except OSError:  # LocalEntryNotFoundError and its incomplete-snapshot kin: "not cached"
        return None
    folder = ModelFolder(name=model, path=Path(path), hub_id=model, commit=Path(path).name)
    if _missing_components(folder, components):
        return None
    return folder


def _download(model: str, cache_dir: Path, components: Sequence[str]) -> ModelFolder:
    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        info = HfApi(endpoint=endpoint).model_info(model, timeout=HUB_TIMEOUT_S)
        files = _files_to_fetch([s.rfilename for s in info.siblings or []], components)
        path = snapshot_download(
            model,
            revision=info.sha,
            cache_dir=cache_dir,
            allow_patterns=files,
            etag_timeout=HUB_TIMEOUT_S,
            endpoint=endpoint,
        )
    except GatedRepoError as exc:
        raise ModelError(
            f"model {model!r} is gated: accept its licence on https://huggingface.co/{model} and log in "
            "(hf auth login, or set HF_TOKEN)"
        ) from exc
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ModelError(
            f"model {model!r} was not found on the Hugging Face hub (a typo, or private?)"
        ) from exc
    except Exception as exc:  # the HTTP stack's error classes differ across hub versions; all mean "no hub"
        raise ModelError(
            f"model {model!r} is not in the Hugging Face cache {cache_dir} and the hub cannot be reached "
            f"({type(exc).__name__}): {_how_to_supply(model)}"
        ) from exc
    return ModelFolder(name=model, path=Path(path), hub_id=model, commit=info.sha)


def _files_to_fetch(repo_files: Sequence[str], components: Sequence[str]) -> list[str]:
    """model_index.json, each component's configs and tokenizer files, and its weights in one format:
    safetensors when the repo has them, else .bin (a repo often has both, plus fp16 and EMA variants)."""
    chosen = ["model_index.json"]
    for component in components:
        names = [
            f.split("/", 1)[1] for f in repo_files if f.startswith(component + "/") and f.count("/") == 1
        ]
        chosen += [f"{component}/{n}" for n in names if n.endswith((".json", ".txt", ".model"))]
        weights = [n for n in names if _WEIGHTS.match(n)]
        safetensors = [n for n in weights if n.endswith(".safetensors")]
        chosen += [f"{component}/{n}" for n in (safetensors or weights)]
    return chosen


def _missing_components(folder: ModelFolder, components: Sequence[str]) -> list[str]:
    """Human-readable descriptions of what is missing; empty when the folder is usable."""
    if not (folder.path / "model_index.json").is_file():
        return ["model_index.json"]
    missing = []
    for component in components:
        sub = folder.path / component
        match component:
            case "scheduler":
                ok = (sub / "scheduler_config.json").is_file()
            case "tokenizer":
                ok = any((sub / f).is_file() for f in _TOKENIZER_FILES)
            case _:
                ok = (
                    (sub / "config.json").is_file()
                    and sub.is_dir()
                    and any(_WEIGHTS.match(f.name) or _WEIGHTS_INDEX.match(f.name) for f in sub.iterdir())
                )
        if not ok:
            missing.append(f"{component}/")
    return missing


def _check_components(folder: ModelFolder, components: Sequence[str], hint: str) -> None:
    missing = _missing_components(folder, components)
    if missing:
        needed = ", ".join(["model_index.json", *(f"{c}/" for c in components)])
        raise ModelError(
            f"model {folder.name!r} ({folder.path}) lacks {', '.join(missing)} (configs and weights): {hint} "
            f"with {needed}"
        )


def quiet_diffusers_and_transformers() -> None:
    """Their loading progress bars and advice would bury ours; real problems reach us as exceptions.
    Imported here, not at the top, so that `--help` and the target guidance do not pay for the import."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for library in (transformers_logging, diffusers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()
