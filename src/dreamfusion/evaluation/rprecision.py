"""CLIP R-Precision (paper sec. 4, Table 1, App. A.3): how often an image-text model, shown a render of a
run, picks the run's own caption out of all the captions of the evaluation set.

The paper renders each object at 30 deg elevation, "averaged over azimuths", 2 seeds per caption, and scores
the share whose true caption ranks first. It does not say whether the image embeddings of the azimuths are
averaged before ranking or each view is ranked on its own. We read "averaged over azimuths" as averaging the
score: every rendered view is a query of its own (`view_ranks`), and R-Precision is the share of views whose
true caption ranks first. With the same azimuths for every run this is the mean over azimuths of each
azimuth's R-Precision, and a back view of a Janus object counts as the miss it is. Seeds are more runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def retrieval_ranks(image_embeddings: Tensor, text_embeddings: Tensor, true_index: Tensor) -> Tensor:
    """(N,) rank of each image's true prompt among all P prompts by cosine similarity, 0 = most similar.

    image_embeddings: (N, D); text_embeddings: (P, D), the candidate prompts, which must be distinct;
    true_index: (N,) the row of `text_embeddings` each image shows.

    Ties count against the true prompt: its rank is the number of other prompts at least as similar. A model
    whose embeddings are constant (or zero) thus ranks every true prompt last, never first, instead of
    scoring by the accident of an argmax picking the first of equals.
    """
    if image_embeddings.ndim != 2 or text_embeddings.ndim != 2:
        raise ValueError(
            f"need (N, D) images and (P, D) texts, got {tuple(image_embeddings.shape)}, "
            f"{tuple(text_embeddings.shape)}"
        )
    if image_embeddings.shape[1] != text_embeddings.shape[1]:
        raise ValueError(
            f"embedding widths differ: {image_embeddings.shape[1]} vs {text_embeddings.shape[1]}"
        )
    if true_index.shape != image_embeddings.shape[:1]:
        raise ValueError(f"need one true index per image, got {tuple(true_index.shape)}")
    prompts = text_embeddings.shape[0]
    if true_index.numel() and not (0 <= int(true_index.min()) and int(true_index.max()) < prompts):
        raise ValueError(f"true_index must lie in [0, {prompts})")
    # float32 on the CPU: half-precision embeddings would create ties that are not in the model.
    images = F.normalize(image_embeddings.detach().float().cpu(), dim=-1)
    texts = F.normalize(text_embeddings.detach().float().cpu(), dim=-1)
    similarity = images @ texts.T  # (N, P)
    true = similarity.gather(1, true_index.long().cpu()[:, None])  # (N, 1)
    return (similarity >= true).sum(dim=1) - 1  # the true prompt itself is always counted once


def r_precision(ranks: Tensor) -> float:
    """Share of queries whose true prompt ranks first, over ranks of any shape: (N,) or (runs, views)."""
    if ranks.numel() == 0:
        raise ValueError("R-Precision of no queries is undefined")
    return float((ranks == 0).float().mean())


def view_ranks(view_embeddings: Tensor, text_embeddings: Tensor, true_index: Tensor) -> Tensor:
    """(R, V) rank of each run's true prompt for each of its V rendered views, every view a separate query.

    view_embeddings: (R, V, D), the V views (e.g. azimuths at 30 deg elevation) of R runs; text_embeddings:
    (P, D); true_index: (R,). `r_precision` of the result is the paper's score as read in the module
    docstring; `r_precision(ranks[i])` is run i's share of views ranked first.
    """
    if view_embeddings.ndim != 3:
        raise ValueError(f"need (runs, views, D) embeddings, got {tuple(view_embeddings.shape)}")
    runs, views, width = view_embeddings.shape
    if true_index.shape != (runs,):
        raise ValueError(f"need one true index per run, got {tuple(true_index.shape)} for {runs} runs")
    per_view = torch.repeat_interleave(true_index, views)
    ranks = retrieval_ranks(view_embeddings.reshape(runs * views, width), text_embeddings, per_view)
    return ranks.view(runs, views)
