"""The world judge (issue #5): a small contrastive image-text model (CLIP's recipe, Radford et al. 2021),
trained by the project on renders of the procedural world, to score R-Precision without a pretrained CLIP.

The judge is not the player: it learns from its own renders (its own seed, never the built-in prior's 0),
of every scene of the world, the held-out ones included, since it must recognise what the prior never saw.
Its renders are those DreamFusion's will be compared with: the paper's cameras (App. A.2) and random point
lights, albedo, lambertian and textureless shading (sec. 3.1), on white, muted solid (the NeRF's solid
backgrounds) or the world's gradient and solid backgrounds of any colour.

A shaded render is captioned with its scene's caption, a textureless one with its shape caption
(suite.shape_caption): a textureless render shows no colour, so Geo R-Precision ranks shape-only captions.
Most captions are canonical, as the evaluation queries with; the rest use the world's templates and synonyms.

- image tower: a 2x2 space-to-depth (64 px -> 32 px of 12 channels, which keeps every pixel and costs a
  fifth of convolving at 64 px), the world classifier's conv stages, global average pooling, a linear map;
- text tower: CLIP's BPE tokenizer and a small transformers `CLIPTextModel`, pooled at the end token as in
  CLIP, then a linear map. Its token table holds only the tokens of world captions (row 0 stands for every
  other token), so the weights stay a few megabytes instead of CLIP's 49,408 rows;
- loss: CLIP's symmetric InfoNCE with a learned temperature, where every pair of the batch that means the
  same (equal canonical captions) counts as a positive, not as a negative.

A judge folder holds judge.safetensors, config.json, SHA256SUMS and, unless left out, tokenizer/. The packaged
judge (its weights lie beside these modules) leaves the tokenizer out, as the built-in prior does:
`load_judge` rebuilds CLIP's vocabulary in the cache and checks it is the one the judge was trained with.

    dreamfusion judge train --out FOLDER [--steps N] [--seed S]
    dreamfusion judge check [FOLDER]

The package: model.py (the config and both towers), training.py (renders, captions, the loss, the loop) and
folder.py (a judge folder: save, load, checksums, the packaged judge, which lies beside them).
"""

from __future__ import annotations

from dreamfusion.evaluation.judge.folder import (
    judge_config,
    load_judge,
    load_packaged_judge,
    package_folder,
    save_judge,
)
from dreamfusion.evaluation.judge.model import JudgeConfig, JudgeTraining, WorldJudge, build_judge
from dreamfusion.evaluation.judge.training import DEFAULT_SEED, DEFAULT_STEPS, train_judge

__all__ = [
    "DEFAULT_SEED",
    "DEFAULT_STEPS",
    "JudgeConfig",
    "JudgeTraining",
    "WorldJudge",
    "build_judge",
    "judge_config",
    "load_judge",
    "load_packaged_judge",
    "package_folder",
    "save_judge",
    "train_judge",
]
