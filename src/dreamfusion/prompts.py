"""View-dependent prompts (paper sec. 3.2): the words, not their embeddings (guidance/embeddings.py).

Each camera gets a view word from its nominal angles: "overhead" above 60 deg elevation, otherwise
"front", "side" or "back" by azimuth (azimuth 0 sees the object's front; see cameras.py). The word is
appended to the prompt: "a red mug, front view".
"""

from __future__ import annotations

from dataclasses import dataclass

from dreamfusion.errors import SettingsError

VIEW_WORDS = ("front", "side", "back", "overhead")


@dataclass(frozen=True)
class PromptConfig:
    text: str = ""  # the user's prompt
    negative: str = ""  # the unconditional text of classifier-free guidance
    view_dependent: bool = True  # sec. 3.2; the Fig. 6 ablation turns it off
    overhead_above_deg: float = 60.0  # "overhead view" above this elevation
    front_half_width_deg: float = 45.0  # front is azimuth within +-45 deg, back within +-45 deg of 180
    interpolate: bool = False  # blend front/side/back embeddings by azimuth instead of switching
    debias: bool = False  # D-SDS prompt debiasing: drop the prompt's words that name another view


def view_word(elevation_deg: float, azimuth_deg: float, config: PromptConfig) -> str:
    """The view word for one camera. Boundaries: exactly 60 deg elevation is not overhead; an azimuth exactly
    `front_half_width_deg` from the front is already a side view."""
    if elevation_deg > config.overhead_above_deg:
        return "overhead"
    az = azimuth_deg % 360.0
    from_front = min(az, 360.0 - az)  # angular distance to azimuth 0, in [0, 180]
    if from_front < config.front_half_width_deg:
        return "front"
    if from_front > 180.0 - config.front_half_width_deg:
        return "back"
    return "side"


def with_view(prompt: str, view: str) -> str:
    return f"{prompt}, {view} view"


# Words that name a view. D-SDS (Hong et al. 2023) finds the words that conflict with a view by their
# pointwise mutual information under an image-text model; this is the lexical core of it: a prompt word that
# names one view is removed from the prompts of the other views. Part names ("a chair with a back") are
# removed too, which is why it is an option.
VIEW_NAMING_WORDS: dict[str, frozenset[str]] = {
    "front": frozenset({"front", "frontal", "face", "facing"}),
    "side": frozenset({"side", "sideways", "profile"}),
    "back": frozenset({"back", "rear", "behind"}),
    "overhead": frozenset({"overhead", "top", "above"}),
}


def debias_prompt(prompt: str, view: str) -> str:
    """`prompt` without the words that name a view other than `view` (punctuation around a word is kept
    apart from it when matching: "rear," counts as "rear")."""
    other = frozenset().union(*(words for name, words in VIEW_NAMING_WORDS.items() if name != view))
    kept = [w for w in prompt.split() if w.strip(".,;:!?").lower() not in other]
    return " ".join(kept)


def validate_prompt(prompt: str) -> str:
    cleaned = " ".join(prompt.split())
    if not cleaned:
        raise SettingsError('the prompt is empty: describe the object, e.g. dreamfusion generate "a red mug"')
    return cleaned
