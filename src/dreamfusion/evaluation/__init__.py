"""Measuring what a run or a prior produced, against the procedural world's ground truth (issues #3, #5).

- suite.py: the evaluation prompt suite (28 world captions, 10 held out) and the ground-truth row;
- rprecision.py: R-Precision as the paper defines it, ties counted against the true prompt;
- image_text.py: the image-text model interface, and CLIP (transformers) behind it;
- judge.py: the project's own contrastive image-text model of the world, shipped in judge/;
- geometry.py: a field's shape against its caption's exact geometry (volumetric IoU, turntables);
- surface.py: Chamfer distance and CIEDE2000 colour error against the exact surface;
- runs.py: every score of a run folder, written as eval.json by `dreamfusion eval`;
- classifier.py: a small CNN that names the kind and colour of a single-object render, the judge of the
  built-in prior's samples.
"""
