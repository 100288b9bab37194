"""The CLIP judge on a tiny random CLIP written with save_pretrained: loading by path, shapes, unit norm,
determinism, the processor's own preprocessing, and one-line errors for folders that cannot be a CLIP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from dreamfusion.errors import UserError
from dreamfusion.evaluation.image_text import ClipImageText, ImageTextModel, clip_image_processor_class
from dreamfusion.testing.tiny_models import save_clip_tokenizer

WIDTH = 16  # projection_dim of the tiny CLIP
IMAGE_SIZE = 32


def save_tiny_clip(folder: Path) -> Path:
    """CLIPModel, tokenizer and CLIPImageProcessor in the standard save_pretrained layout, ~56k weights."""
    vocab_size = save_clip_tokenizer(folder)
    tower = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(
            tower,
            vocab_size=vocab_size,
            max_position_embeddings=77,
            bos_token_id=vocab_size - 2,  # <|startoftext|> and <|endoftext|> are the last two ids
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        ),
        vision_config=dict(tower, image_size=IMAGE_SIZE, patch_size=8),
        projection_dim=WIDTH,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        CLIPModel(config).eval().save_pretrained(folder)
    processor = clip_image_processor_class()(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> ClipImageText:
    return ClipImageText(save_tiny_clip(tmp_path_factory.mktemp("clip")), batch_size=3)


def images(count: int, seed: int, height: int = 40, width: int = 48) -> torch.Tensor:
    return torch.rand(count, height, width, 3, generator=torch.Generator().manual_seed(seed))


def test_embeddings_are_unit_rows_one_per_input(clip: ClipImageText):
    model: ImageTextModel = clip  # ClipImageText satisfies the protocol
    image_embeddings = model.embed_images(images(5, 0))  # 5 > batch_size: batches are joined in order
    text_embeddings = model.embed_texts(["a red chair", "a blue car, side view", "a small dog"])
    assert image_embeddings.shape == (5, WIDTH) and text_embeddings.shape == (3, WIDTH)
    assert image_embeddings.dtype == torch.float32 and image_embeddings.device.type == "cpu"
    for embeddings in (image_embeddings, text_embeddings):
        assert torch.allclose(embeddings.norm(dim=-1), torch.ones(len(embeddings)), atol=1e-5)
    assert Path(model.name).is_dir()  # named by the folder it came from


def test_embeddings_are_deterministic_and_tell_inputs_apart(clip: ClipImageText):
    batch = images(4, 1)
    first, again = clip.embed_images(batch), clip.embed_images(batch)
    # CPU kernels may block rows differently from call to call: "the same" is to float precision.
    assert torch.allclose(first, again, atol=1e-6)
    assert torch.allclose(first[2:3], clip.embed_images(batch[2:3]), atol=1e-5)  # batching changes nothing
    assert (first[0] - first[1]).norm() > 1e-3
    texts = clip.embed_texts(["a red chair", "a blue car", "a red chair"])
    assert torch.allclose(texts[0], texts[2], atol=1e-6) and (texts[0] - texts[1]).norm() > 1e-3


def test_preprocessing_matches_the_processor(clip: ClipImageText):
    # The processor takes 8-bit images and resizes with PIL; ours takes the same values as floats in torch.
    # Smooth pictures, landscape and portrait (the resize keeps the aspect, the crop takes the middle).
    y, x = torch.meshgrid(torch.linspace(0, 1, 45), torch.linspace(0, 1, 60), indexing="ij")
    landscape = torch.stack([x, y, x * y], dim=-1)
    processor = clip_image_processor_class().from_pretrained(clip.name)
    for picture in (landscape, landscape.transpose(0, 1)):
        pixels = (picture * 255).round().to(torch.uint8)
        theirs = processor(images=[pixels.numpy()], return_tensors="pt")["pixel_values"]
        ours = clip.preprocess(pixels[None].float() / 255)
        assert ours.shape == theirs.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
        # 0.02 after dividing by CLIP's std ~0.27 is about 1.4 of 255 levels: PIL's 8-bit rounding.
        assert (ours - theirs).abs().max() < 0.02


def test_a_missing_or_incomplete_folder_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="neither an existing folder"):
        ClipImageText(tmp_path / "no-such-clip")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="lacks config.json, weights, tokenizer, preprocessor_config.json"):
        ClipImageText(empty)
    broken = save_tiny_clip(tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="unreadable"):
        ClipImageText(broken)
    with pytest.raises(UserError) as error:
        ClipImageText("someone/no-such-clip-model")  # a hub id, and the tests keep the hub offline
    assert "\n" not in str(error.value)
