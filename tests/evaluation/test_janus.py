"""The Janus measure (evaluation/janus.py): its labels, the packaged view classifier on exact renders (near
perfect) and on a two-faced mug (Janus), and eval.json carrying it for fronted prompts only."""

from __future__ import annotations

import torch

from dreamfusion.evaluation.janus import (
    FRONTED_KINDS,
    JANUS_VIEWS,
    TwoFacedField,
    camera_view,
    janus_cameras,
    janus_scores,
    load_view_classifier,
    render_janus_views,
)
from dreamfusion.fields.analytic import SceneField
from dreamfusion.world import Scene, WorldObject


def test_the_eight_views_sit_inside_their_classes():
    azimuths = janus_cameras().azimuth_deg.tolist()
    assert len(azimuths) == JANUS_VIEWS
    labels = [camera_view(a) for a in azimuths]
    assert labels == [0, 1, 1, 2, 2, 1, 1, 0]  # 22.5, 67.5, ..., 337.5 deg
    assert camera_view(44.9) == 0 and camera_view(45.0) == 1 and camera_view(135.1) == 2


def test_scores_count_side_and_back_views_read_as_front():
    class Says:  # a stand-in classifier that reads every view as `label`
        def __init__(self, label: int):
            self.label = label
            self.config = type("C", (), {"resolution": 8})()

        def __call__(self, images):
            logits = torch.zeros(images.shape[0], 3)
            logits[:, self.label] = 1.0
            return logits

    azimuths = janus_cameras().azimuth_deg
    images = torch.zeros(JANUS_VIEWS, 8, 8, 3)
    all_front = janus_scores(Says(0), images, azimuths)
    assert all_front["janus_rate"] == 1.0 and all_front["back_as_front"] == 1.0
    assert all_front["view_accuracy"] == 2 / 8
    all_side = janus_scores(Says(1), images, azimuths)
    assert all_side["janus_rate"] == 0.0 and all_side["view_accuracy"] == 4 / 8


def test_packaged_classifier_reads_exact_renders_and_catches_a_two_faced_mug():
    model = load_view_classifier()
    exact = [
        janus_scores(model, *render_janus_views(SceneField(Scene(WorldObject(k, "red")))))
        for k in FRONTED_KINDS
    ]
    accuracy = sum(s["view_accuracy"] for s in exact) / len(exact)
    janus = sum(s["janus_rate"] for s in exact) / len(exact)
    assert accuracy >= 0.85, exact
    assert janus <= 0.1, exact
    two_faced = janus_scores(model, *render_janus_views(TwoFacedField(Scene(WorldObject("mug", "red")))))
    assert two_faced["back_as_front"] == 1.0, two_faced  # its back is a front
    assert two_faced["janus_rate"] >= 0.3, two_faced


def test_train_views_never_overwrites_and_check_views_refuses_other_files(tmp_path, capsys):
    from dreamfusion.commands import EXIT_USER_ERROR, main

    existing = tmp_path / "views.safetensors"
    existing.write_bytes(b"keep me")
    assert main(["judge", "train-views", "--out", str(existing)]) == EXIT_USER_ERROR
    assert existing.read_bytes() == b"keep me"
    assert main(["judge", "check-views", str(existing)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "exists" in err[0] and "view classifier" in err[1]
