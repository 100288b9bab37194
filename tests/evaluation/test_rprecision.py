"""R-Precision against hand-made embeddings whose ranks are known, ties and degenerate models included."""

from __future__ import annotations

import pytest
import torch

from dreamfusion.evaluation.rprecision import r_precision, retrieval_ranks, view_ranks

EYE = torch.eye(4)  # four orthogonal prompts


def test_each_image_matching_its_prompt_ranks_first():
    images = EYE[[2, 0, 3]] * torch.tensor([[3.0], [0.5], [7.0]])  # scale must not matter: cosine
    ranks = retrieval_ranks(images, EYE, torch.tensor([2, 0, 3]))
    assert ranks.tolist() == [0, 0, 0]
    assert r_precision(ranks) == 1.0


def test_three_prompts_with_known_rankings():
    """The issue's hand-made case: 3 prompts, 3 images. Image 0 is nearest its own prompt; image 1 is nearer
    prompt 0 than its own prompt 1; image 2 is nearer both others than its own prompt 2."""
    prompts = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    images = torch.tensor([[0.9, 0.3, 0.1], [0.8, 0.5, 0.0], [0.6, 0.5, 0.2]])
    ranks = retrieval_ranks(images, prompts, torch.tensor([0, 1, 2]))
    assert ranks.tolist() == [0, 1, 2]
    assert r_precision(ranks) == pytest.approx(1 / 3)


def test_rank_counts_the_prompts_more_similar_than_the_true_one():
    image = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    assert [int(retrieval_ranks(image, EYE, torch.tensor([i]))) for i in range(4)] == [0, 1, 2, 3]
    assert r_precision(torch.tensor([0, 1, 0, 3])) == 0.5


def test_ties_count_against_the_true_prompt():
    image = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert retrieval_ranks(image, EYE, torch.tensor([0])).tolist() == [1]
    # A degenerate model: every embedding the same (or zero). It must never score.
    constant = torch.ones(3, 4)
    assert retrieval_ranks(constant, torch.ones(5, 4), torch.tensor([0, 2, 4])).tolist() == [4, 4, 4]
    assert retrieval_ranks(torch.zeros(2, 4), EYE, torch.tensor([0, 1])).tolist() == [3, 3]


def test_every_view_is_a_query_of_its_own():
    # Run 0 (true prompt 1): its front view matches, its back view shows prompt 3 (a Janus face).
    # Run 1 (true prompt 2): both views match.
    views = torch.stack([torch.stack([EYE[1], EYE[3]]), torch.stack([EYE[2], EYE[2]])])
    ranks = view_ranks(views, EYE, torch.tensor([1, 2]))
    assert ranks.shape == (2, 2)
    assert ranks[:, 0].tolist() == [0, 0] and ranks[1, 1] == 0 and ranks[0, 1] > 0
    assert r_precision(ranks) == 0.75
    assert r_precision(ranks[0]) == 0.5


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        retrieval_ranks(EYE, torch.eye(3), torch.tensor([0, 1, 2, 3]))  # widths differ
    with pytest.raises(ValueError):
        retrieval_ranks(EYE, EYE, torch.tensor([0, 1, 2, 4]))  # index out of range
    with pytest.raises(ValueError):
        retrieval_ranks(EYE, EYE, torch.tensor([0, 1]))  # one index per image
    with pytest.raises(ValueError):
        view_ranks(EYE, EYE, torch.tensor([0]))  # not (runs, views, D)
    with pytest.raises(ValueError):
        r_precision(torch.tensor([]))
