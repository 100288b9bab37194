"""A procedural 3D world whose every caption has known geometry: the ground truth for a built-in prior.

- objects.py: the object kinds (exact SDFs in a canonical frame, front = +X) and the named colours;
- scenes.py: `Scene` (one object, or two with a relation), its exact `sdf` / `occupancy` / `albedo`, the
  caption grammar (`scene_from_caption`, `caption_text`) and integer scene ids;
- captions.py: the held-out compositions and the seeded sampler of training captions that never yields them;
- render.py: a sphere tracer, independent of the NeRF renderer, and batches of training images.
"""

from dreamfusion.world.captions import (
    HELD_OUT_OBJECTS,
    HELD_OUT_RELATIONS,
    CaptionedScene,
    held_out_captions,
    held_out_scenes,
    is_held_out,
    sample_training_captions,
)
from dreamfusion.world.objects import COLOUR_NAMES, COLOURS, KIND_NAMES, KINDS, Kind, Part, kind_geometry
from dreamfusion.world.render import (
    PRIOR_BACKGROUND_COLOURFULNESS,
    TracerConfig,
    TrainingBatch,
    WorldBatchConfig,
    WorldRender,
    prior_world,
    render_scene,
    sample_backgrounds,
    sample_training_batch,
    view_captions,
)
from dreamfusion.world.scenes import (
    NUM_SCENES,
    RELATION_PHRASES,
    RELATIONS,
    TEMPLATES,
    CaptionError,
    ParsedCaption,
    Placement,
    Scene,
    Vocabulary,
    WorldObject,
    caption_text,
    parse_caption,
    scene_from_caption,
    scene_from_id,
    scene_id,
    unknown_words,
    vocabulary,
)

__all__ = [
    "COLOURS",
    "COLOUR_NAMES",
    "HELD_OUT_OBJECTS",
    "HELD_OUT_RELATIONS",
    "KINDS",
    "KIND_NAMES",
    "NUM_SCENES",
    "RELATIONS",
    "RELATION_PHRASES",
    "TEMPLATES",
    "CaptionError",
    "CaptionedScene",
    "Kind",
    "ParsedCaption",
    "Part",
    "Placement",
    "Scene",
    "TracerConfig",
    "TrainingBatch",
    "Vocabulary",
    "WorldBatchConfig",
    "PRIOR_BACKGROUND_COLOURFULNESS",
    "prior_world",
    "WorldObject",
    "WorldRender",
    "caption_text",
    "held_out_captions",
    "held_out_scenes",
    "is_held_out",
    "kind_geometry",
    "parse_caption",
    "render_scene",
    "sample_backgrounds",
    "sample_training_batch",
    "sample_training_captions",
    "scene_from_caption",
    "scene_from_id",
    "scene_id",
    "unknown_words",
    "view_captions",
    "vocabulary",
]
