"""The built-in prior (issue #3): a small text-to-image pixel diffusion model trained only on renders of the
procedural world, exported in DeepFloyd IF stage I's folder layout so the pixel guidance backend loads it.

- tokenizer.py: CLIP's BPE vocabulary from the open-clip-torch wheel as a Hugging Face tokenizer folder;
- model.py: `PriorConfig` and the networks (CLIPTextModel, UNet2DConditionModel, DDPM scheduler);
- train.py: the training loop, run folders, resumable checkpoints;
- export.py: writing and loading the IF-layout folder; sample.py: DDIM sampling with CFG, PNG grids;
- builtin/: the shipped prior's weights, model card and loader;
- latent.py and its stages (dataset, autoencoder, text_pretrain, latent_unet): the latent prior (issue #15).

Nothing is imported here: the tokenizer and the model's config are used by evaluation too, which must not
load the training loop (or diffusers' U-Net) with them.
"""
