"""The built-in prior's tokenizer: OpenAI CLIP's byte-level BPE, saved as a Hugging Face CLIPTokenizer folder.

CLIP's merges file (bpe_simple_vocab_16e6.txt.gz) ships inside the open-clip-torch wheel. Only that file is
read from the wheel; open-clip-torch is never installed (it would pull torchvision, which breaks beside the
project's torch). A standard byte-level vocabulary means any text tokenises: unknown words fall back to
their UTF-8 bytes, so the prior never meets an out-of-vocabulary error.

The vocabulary is built exactly as CLIP builds it (openai/CLIP, clip/simple_tokenizer.py): the 256 byte
characters, the same with the end-of-word mark "</w>", one token per merge (the first 48,894 merges of the
file), then <|startoftext|> and <|endoftext|>: 49,408 tokens.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

from dreamfusion.errors import UserError

# The wheel the vocabulary is read from, pinned so that the shipped prior's tokenizer is reproducible.
OPEN_CLIP_VERSION = "3.3.0"
OPEN_CLIP_WHEEL = f"open_clip_torch-{OPEN_CLIP_VERSION}-py3-none-any.whl"
OPEN_CLIP_WHEEL_SHA256 = "c549ad5ed6bfc119cc11105033c0a2b9d7a2a4afeb40a58a09aab3da1a0043ce"
MERGES_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"

# CLIP keeps the first 49152 - 256 - 2 merges of the file (after its version line), so that bytes, bytes with
# "</w>", merges and the two special tokens make 49152 + 256 = 49408 tokens.
NUM_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 2 * 256 + NUM_MERGES + 2
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) table from the 256 byte values to printable characters: printable Latin-1 bytes
    stand for themselves, the others are shifted to code points 256 and up, in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    # CLIP orders the vocabulary as this dict's values: the printable bytes first, then the shifted ones.
    return {b: table[b] for b in [*printable, *(b for b in range(256) if b not in printable)]}


def clip_vocabulary(merges_text: str) -> tuple[dict[str, int], list[str]]:
    """(token -> id, merges as "a b" lines) from the text of CLIP's merges file."""
    lines = merges_text.split("\n")[1 : NUM_MERGES + 1]  # line 0 is a version comment
    merges = [tuple(line.split()) for line in lines]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"expected {NUM_MERGES} merges of two symbols each; this is not CLIP's merges file")
    alphabet = list(bytes_to_unicode().values())
    tokens = [*alphabet, *(c + END_OF_WORD for c in alphabet), *("".join(m) for m in merges)]
    tokens += [START_TOKEN, END_TOKEN]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"the merges give {len(vocab)} distinct tokens, CLIP has {VOCAB_SIZE}")
    return vocab, [" ".join(m) for m in merges]


def save_clip_tokenizer(folder: Path, merges_text: str, max_length: int) -> Path:
    """Write vocab.json, merges.txt and the configs that transformers' CLIPTokenizer reads. `max_length` is
    the text encoder's context (its position embeddings), which prompts are padded and truncated to."""
    vocab, merges = clip_vocabulary(merges_text)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    # CLIP pads with <|endoftext|> (as Stable Diffusion's tokenizer does) and has no unknown token.
    special = {
        "bos_token": START_TOKEN,
        "eos_token": END_TOKEN,
        "unk_token": END_TOKEN,
        "pad_token": END_TOKEN,
    }
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "do_lower_case": True}
    _write_json(folder / "tokenizer_config.json", {**config, **special})
    _write_json(folder / "special_tokens_map.json", special)
    return folder


def merges_from_wheel(wheel: Path) -> str:
    """The text of CLIP's merges file inside an open-clip-torch wheel, after checking the wheel's sha256."""
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != OPEN_CLIP_WHEEL_SHA256:
        raise UserError(
            f"{wheel} has sha256 {digest}, not that of {OPEN_CLIP_WHEEL} ({OPEN_CLIP_WHEEL_SHA256})"
        )
    with zipfile.ZipFile(wheel) as archive:
        return gzip.decompress(archive.read(MERGES_MEMBER)).decode("utf-8")


def download_command(folder: Path) -> list[str]:
    """The pip command that fetches the wheel without installing it or its dependencies."""
    return [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        f"open-clip-torch=={OPEN_CLIP_VERSION}", "-d", str(folder),
    ]  # fmt: skip


def wheel_folder(cache: Path) -> Path:
    """Where the wheel is kept under a dreamfusion cache folder ($DREAMFUSION_CACHE, default
    ~/.cache/dreamfusion): the one place that names it."""
    return cache / "wheels"


def open_clip_wheel(cache: Path) -> Path:
    """The pinned wheel in `cache`, downloaded with pip (from PyPI or the configured index) if absent."""
    wheel = cache / OPEN_CLIP_WHEEL
    if wheel.is_file():
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(download_command(cache), capture_output=True, text=True, check=False)
    if done.returncode != 0 or not wheel.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(
            f"cannot download {OPEN_CLIP_WHEEL} (it holds CLIP's tokenizer vocabulary): {last}; put the "
            f"wheel into {cache} by hand (pip download --no-deps open-clip-torch=={OPEN_CLIP_VERSION})"
        )
    return wheel


def build_clip_tokenizer(folder: Path, cache: Path, max_length: int) -> Path:
    """The CLIP tokenizer folder at `folder`, made from the wheel in `cache` (fetched if needed)."""
    return save_clip_tokenizer(folder, merges_from_wheel(open_clip_wheel(cache)), max_length)


def _write_json(path: Path, data: dict[str, object]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
