"""Scoring run folders (dreamfusion.evaluation.runs): R-Precision with a stand-in image-text model whose
answers are known, ground-truth metrics of a tiny real run, and eval.json never overwritten."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dreamfusion.config import dump_yaml
from dreamfusion.evaluation.runs import (
    EvalConfig,
    evaluate_run,
    rprecision_scores,
    summary_line,
    world_scene,
    write_eval,
)
from dreamfusion.evaluation.suite import evaluation_suite
from helpers import caption_oracle, make_trainer, target_config

SMALL = EvalConfig(views=2, resolution=16, iou_resolution=32, surface_samples=500)


def test_a_model_that_sees_the_prompt_ranks_it_first_in_every_view():
    prompt = "a red cube"
    images = torch.rand(3, 8, 8, 3)
    scores = rprecision_scores(
        images, images, prompt, world_scene(prompt), caption_oracle(prompt, "a cube"), evaluation_suite()
    )
    assert scores["color"] == 1.0 and scores["color_ranks"] == [0, 0, 0]
    assert scores["geo"] == 1.0 and scores["geo_caption"] == "a cube"
    assert scores["color_candidates"] == len(evaluation_suite())


def test_a_model_that_sees_another_caption_never_scores():
    prompt = "a red cube"
    images = torch.rand(2, 8, 8, 3)
    oracle = caption_oracle("a blue sphere", "a sphere")
    scores = rprecision_scores(images, images, prompt, world_scene(prompt), oracle, evaluation_suite())
    assert scores["color"] == 0.0 and scores["geo"] == 0.0
    assert all(r >= 1 for r in scores["color_ranks"])


def test_prompts_outside_the_suite_join_the_candidates_and_outside_the_world_lose_geo():
    images = torch.rand(2, 8, 8, 3)
    suite = evaluation_suite()
    inside = rprecision_scores(
        images,
        images,
        "a gray torus",
        world_scene("a gray torus"),
        caption_oracle("a gray torus", "a torus"),
        suite,
    )
    assert inside["color_candidates"] == len(suite) + 1 and inside["color"] == 1.0
    outside = rprecision_scores(
        images, images, "a photo of a dog", None, caption_oracle("a photo of a dog", ""), suite
    )
    assert outside["color"] == 1.0 and outside["geo"] is None and "cannot read" in outside["geo_note"]


@pytest.fixture(scope="module")
def sphere_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 steps of the target guidance towards a sphere, prompted with a world caption."""
    run_dir = tmp_path_factory.mktemp("runs") / "sphere"
    config = target_config("sphere", 4, 16, "sampling.samples_per_ray=16", "prompt.text=a red sphere")
    trainer = make_trainer(config, run_dir)
    (run_dir / "config.yaml").write_text(dump_yaml(trainer.config))
    assert trainer.train(progress=False, handle_sigint=False)
    return run_dir


def test_a_run_gets_every_score_and_eval_json_is_never_overwritten(sphere_run: Path):
    result = evaluate_run(sphere_run, caption_oracle("a red sphere", "a sphere"), SMALL)
    assert result["prompt"] == "a red sphere" and result["world_caption"] and not result["held_out"]
    assert result["r_precision"]["color"] == 1.0 and len(result["r_precision"]["geo_ranks"]) == 2
    # The exported mesh's own textureless renders, scored the same way (the oracle sees "a sphere" in both).
    assert result["r_precision"]["geo_mesh"] == 1.0 and len(result["r_precision"]["geo_mesh_ranks"]) == 2
    truth = result["ground_truth"]
    assert 0.0 <= truth["iou"] <= 1.0
    # The initial blob has a surface, so a mesh: Chamfer in world units and a colour error in dE.
    assert truth["chamfer"] is not None and 0.0 <= truth["chamfer"] < 1.4
    assert truth["delta_e"] is not None and 0.0 <= truth["delta_e"] <= 150.0
    assert result["optimisation_seconds"] > 0
    first, second = write_eval(sphere_run, result), write_eval(sphere_run, result)
    assert (first.name, second.name) == ("eval.json", "eval-2.json")
    assert json.loads(first.read_text())["prompt"] == "a red sphere"
    assert summary_line(result).startswith("sphere: R-Prec Color 100%")
    assert result["janus"] is None  # a sphere has no front


def test_a_run_of_a_fronted_prompt_gets_the_janus_measure(sphere_run: Path, tmp_path: Path):
    mug_run = tmp_path / "mug"
    shutil.copytree(sphere_run, mug_run)
    config = mug_run / "config.yaml"
    config.write_text(config.read_text().replace("text: a red sphere", "text: a red mug"))
    result = evaluate_run(mug_run, caption_oracle("a red mug", "a mug"), SMALL)
    janus = result["janus"]
    assert [v["camera"] for v in janus["views"]] == [
        "front",
        "side",
        "side",
        "back",
        "back",
        "side",
        "side",
        "front",
    ]
    assert 0.0 <= janus["janus_rate"] <= 1.0 and 0.0 <= janus["view_accuracy"] <= 1.0
    assert "Janus" in summary_line(result)


def test_eval_command_refuses_a_folder_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from dreamfusion.commands import main

    assert main(["eval", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a run folder" in err
