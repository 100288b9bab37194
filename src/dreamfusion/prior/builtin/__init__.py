"""The built-in prior that ships inside the package: the default of `dreamfusion generate`.

Its weights lie beside this module, in DeepFloyd IF stage I's folder layout (see prior/export.py),
listed with their sha256 in SHA256SUMS, and its model card is MODEL_CARD.md beside them. The tokenizer is
not shipped: it is CLIP's BPE vocabulary, read from the pinned open-clip-torch wheel (tokenizer.py) the first
time the prior is used. `builtin_prior_folder` checks the weights, then assembles a complete prior folder in
the cache that the pixel guidance backend loads like any other.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from importlib import resources
from pathlib import Path

from dreamfusion.errors import ModelError
from dreamfusion.files import build_folder_once
from dreamfusion.prior.tokenizer import build_clip_tokenizer, wheel_folder

CHECKSUMS = "SHA256SUMS"
MODEL_CARD = "MODEL_CARD.md"
# Components copied from the package into the assembled folder; the tokenizer is built beside them. A latent
# prior (Stable Diffusion's layout) has a vae/ too; a pixel prior (IF stage I's layout) has none.
SHIPPED = ("model_index.json", "scheduler", "text_encoder", "unet", "vae")


def package_folder() -> Path:
    """Where the shipped weights are installed."""
    return Path(str(resources.files("dreamfusion.prior").joinpath("builtin")))


def read_checksums(folder: Path) -> dict[str, str]:
    """SHA256SUMS in `sha256sum` format: '<hex digest>  <relative path>' per line."""
    path = folder / CHECKSUMS
    if not path.is_file():
        raise ModelError(f"the built-in prior is not installed: {path} is missing; reinstall dreamfusion")
    sums = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.strip()] = digest
    return sums


def verify(folder: Path) -> str:
    """Check every file listed in SHA256SUMS; return one digest naming the whole set."""
    sums = read_checksums(folder)
    for name, expected in sums.items():
        path = folder / name
        if not path.is_file():
            raise ModelError(f"the built-in prior is incomplete: {name} is missing; reinstall dreamfusion")
        data = path.read_bytes()
        if data.startswith(b"version https://git-lfs"):
            raise ModelError(f"the built-in prior's {name} is a Git LFS pointer; run git lfs pull")
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise ModelError(
                f"the built-in prior's {name} is damaged (sha256 {actual[:12]}..., expected "
                f"{expected[:12]}...); reinstall dreamfusion"
            )
    return hashlib.sha256("".join(f"{d} {n}\n" for n, d in sorted(sums.items())).encode()).hexdigest()


def builtin_prior_folder(cache: Path, package: Path | None = None) -> Path:
    """A complete prior folder (weights plus tokenizer) under `cache`, assembled once per weight set."""
    package = package or package_folder()
    digest = verify(package)
    max_tokens = json.loads((package / "text_encoder" / "config.json").read_text())["max_position_embeddings"]

    def assemble(staging: Path) -> None:
        staging.mkdir(parents=True)
        for name in SHIPPED:
            source = package / name
            if source.is_dir():
                shutil.copytree(source, staging / name)
            elif source.is_file():
                shutil.copy2(source, staging / name)
        build_clip_tokenizer(staging / "tokenizer", wheel_folder(cache), max_tokens)

    folder = cache / "builtin-prior" / digest[:16]
    return build_folder_once(folder, assemble, "tokenizer/tokenizer_config.json")


def is_latent(folder: Path) -> bool:
    """Whether a prior folder is in Stable Diffusion's latent layout (it has an autoencoder) rather than IF
    stage I's pixel layout: which guidance backend loads it."""
    return (folder / "vae").is_dir()


def vocabulary_text() -> str:
    """What `dreamfusion prior vocab` prints: every word the built-in prior has seen, by role."""
    from dreamfusion.world import HELD_OUT_OBJECTS, HELD_OUT_RELATIONS, vocabulary

    vocab = vocabulary()
    lines = [
        "The built-in prior was trained only on captions of the procedural world:",
        "  '[template] a <colour> <kind> [<relation> a <colour> <kind>][, <view> view]'",
        "",
        f"colours:   {', '.join(vocab.colours)}",
        "kinds:",
        *(f"  {kind + ':':<11}{', '.join(nouns)}" for kind, nouns in vocab.kinds.items()),
        "relations:",
        *(f"  {relation + ':':<11}{', '.join(phrases)}" for relation, phrases in vocab.relations.items()),
        f"templates: {', '.join(repr(t) for t in vocab.templates)}",
        f"views:     {', '.join(vocab.views)} (added by generate from the camera)",
        "",
        "never shown in training (held out to test composition):",
        f"  objects:   {', '.join(f'{o.colour} {o.kind}' for o in HELD_OUT_OBJECTS)}",
        f"  relations: {', '.join(' '.join(r) for r in HELD_OUT_RELATIONS)} (any colours)",
    ]
    return "\n".join(lines)


def ship(model_folder: Path, package: Path | None = None) -> dict[str, str]:
    """Copy an exported prior's weights and configs (not its tokenizer) into the package folder and write
    SHA256SUMS. The model card and sample grids beside them are kept. Returns the digests written."""
    package = package or package_folder()
    package.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED:
        source, target = model_folder / name, package / name
        if target.is_dir():
            shutil.rmtree(target)
        if source.is_dir():
            shutil.copytree(source, target)
        elif source.is_file():
            shutil.copy2(source, target)
    files = sorted(
        p for name in SHIPPED for p in [package / name, *(package / name).rglob("*")] if p.is_file()
    )
    sums = {p.relative_to(package).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    (package / CHECKSUMS).write_text("".join(f"{d}  {n}\n" for n, d in sums.items()), encoding="utf-8")
    return sums
