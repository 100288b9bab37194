"""The built-in prior (issue #3): a small text-to-image pixel diffusion model trained only on renders of the
procedural world, exported in DeepFloyd IF stage I's folder layout so the pixel guidance backend loads it.

- tokenizer.py: CLIP's BPE vocabulary from the open-clip-torch wheel as a Hugging Face tokenizer folder;
- model.py: `PriorConfig` and the networks (CLIPTextModel, UNet2DConditionModel, DDPM scheduler);
- train.py: the training loop, run folders, resumable checkpoints;
- export.py: writing and loading the IF-layout folder; sample.py: DDIM sampling with CFG, PNG grids.
"""

from dreamfusion.prior.export import export_prior, load_prior
from dreamfusion.prior.model import PriorConfig, PriorModules, build_prior
from dreamfusion.prior.sample import sample, save_grid
from dreamfusion.prior.train import PriorTrainConfig, PriorTrainer, resume_run, start_run, train

__all__ = [
    "PriorConfig",
    "PriorModules",
    "PriorTrainConfig",
    "PriorTrainer",
    "build_prior",
    "export_prior",
    "load_prior",
    "resume_run",
    "sample",
    "save_grid",
    "start_run",
    "train",
]
