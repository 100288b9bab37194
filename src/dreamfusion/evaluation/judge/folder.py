"""A judge folder: judge.safetensors, config.json, SHA256SUMS and, unless left out, tokenizer/; and the
packaged judge, whose folder is this package."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from importlib import resources
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from dreamfusion.config import from_dict, to_dict
from dreamfusion.errors import UserError
from dreamfusion.evaluation.judge.model import JudgeConfig, JudgeTraining, WorldJudge
from dreamfusion.files import build_folder_once, dreamfusion_cache
from dreamfusion.prior.model import load_tokenizer
from dreamfusion.prior.tokenizer import build_clip_tokenizer, wheel_folder

FORMAT_MARKER = "dreamfusion-world-judge"
WEIGHTS = "judge.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer"
CHECKSUMS = "SHA256SUMS"


def tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the vocabulary: which tokenizer a judge's token rows belong to."""
    return hashlib.sha256(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()).hexdigest()


def save_judge(judge: WorldJudge, folder: Path, with_tokenizer: bool = True) -> Path:
    """Write judge.safetensors, config.json, tokenizer/ (unless with_tokenizer is False) and SHA256SUMS."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in judge.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": FORMAT_MARKER})
    record = judge.training_record
    meta = {
        "format": FORMAT_MARKER,
        "config": to_dict(judge.config),
        "training": None if record is None else dataclasses.asdict(record),
        "tokenizer_sha256": tokenizer_digest(judge.tokenizer),
    }
    (folder / CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(folder / TOKENIZER, ignore_errors=True)
    if with_tokenizer:
        judge.tokenizer.save_pretrained(str(folder / TOKENIZER))
    # The judge's own files only: the packaged judge's folder also holds this package's modules.
    files = sorted(
        [folder / WEIGHTS, folder / CONFIG, *(p for p in (folder / TOKENIZER).rglob("*") if p.is_file())]
    )
    sums = "".join(f"{_sha256(p)}  {p.relative_to(folder).as_posix()}\n" for p in files)
    (folder / CHECKSUMS).write_text(sums, encoding="utf-8")
    return folder


def load_judge(folder: Path, cache: Path | None = None) -> WorldJudge:
    """A judge folder written by save_judge. Without tokenizer/, CLIP's tokenizer is assembled under
    `cache` (default the dreamfusion cache) and must be the one the judge was trained with."""
    folder = Path(folder)
    meta = _read_meta(folder)
    try:
        config = from_dict(JudgeConfig, meta["config"])
        if (folder / TOKENIZER).is_dir():
            tokenizer = load_tokenizer(folder / TOKENIZER)
        else:
            tokenizer = load_tokenizer(clip_tokenizer_folder(cache or dreamfusion_cache(), config.max_tokens))
        if tokenizer_digest(tokenizer) != meta.get("tokenizer_sha256"):
            raise UserError(f"the judge at {folder} was trained with another tokenizer than the one found")
        state = load_file(str(folder / WEIGHTS))
        judge = WorldJudge(config, tokenizer, state["token_ids"], name=f"world judge ({folder})")
        judge.load_state_dict(state)
        if meta.get("training"):
            judge.training_record = JudgeTraining(**meta["training"])
    except (KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"the judge at {folder} cannot be loaded: {first}") from None
    return judge.eval()


def judge_config(folder: Path) -> JudgeConfig:
    """The config of the judge in `folder`, after checking its files against SHA256SUMS."""
    return from_dict(JudgeConfig, _read_meta(Path(folder))["config"])


def _read_meta(folder: Path) -> dict:
    """config.json of a judge folder, after checking every file listed in its SHA256SUMS."""
    if not (folder / CHECKSUMS).is_file() or not (folder / CONFIG).is_file():
        raise UserError(
            f"no world judge at {folder}: it needs {CONFIG} and {CHECKSUMS} (written by save_judge)"
        )
    for line in (folder / CHECKSUMS).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        path = folder / name.strip()
        if not path.is_file():
            raise UserError(f"the judge at {folder} is incomplete: {name.strip()} is missing")
        if _sha256(path) != digest:
            raise UserError(f"the judge at {folder} is damaged: {name.strip()} does not match {CHECKSUMS}")
    try:
        meta = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"the judge's {folder / CONFIG} is not JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_MARKER:
        raise UserError(f"{folder} is not a world judge: its {CONFIG} has no {FORMAT_MARKER!r} marker")
    return meta


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def clip_tokenizer_folder(cache: Path, max_tokens: int) -> Path:
    """CLIP's tokenizer folder under `cache`, built once from the pinned open-clip-torch wheel."""
    return build_folder_once(
        cache / "clip-tokenizer" / str(max_tokens),
        lambda staging: build_clip_tokenizer(staging, wheel_folder(cache), max_tokens),
        "tokenizer_config.json",
    )


def package_folder() -> Path:
    """Where the packaged judge is installed."""
    return Path(str(resources.files("dreamfusion.evaluation.judge")))


def load_packaged_judge(cache: Path | None = None) -> WorldJudge:
    judge = load_judge(package_folder(), cache)
    judge.name = "world judge v1 (packaged)"  # reports name the model, not this machine's paths
    return judge
