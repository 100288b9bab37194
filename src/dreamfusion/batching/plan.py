"""What a batch runs: a prompts file read into one `RunSpec` per prompt and seed, each with its own folder.

A prompts file is either plain text, one prompt per line (blank lines and lines starting with # are
skipped), run with the batch's seeds; or YAML (.yaml / .yml), where any prompt can carry its own seeds,
steps and settings:

    seeds: [0, 1]                 # for every prompt that does not name its own (default [0])
    steps: 300                    # optional, for every prompt
    overrides: ["export.video=false"]
    prompts:
      - a red cube
      - prompt: a blue mug
        seeds: [0, 1, 2]
        steps: 500
        overrides: ["shading.textureless_probability=0"]

Every run's settings are resolved (and so checked) before anything starts: a typo in one prompt's
overrides is a one-line error naming the prompt, not a failure an hour into the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dreamfusion.errors import SettingsError, UserError
from dreamfusion.run.config import Config, resolve_config
from dreamfusion.run.folder import slug


@dataclass(frozen=True)
class RunSpec:
    """One run of a batch: a prompt, a seed and its settings, in the folder `name` under the batch's root."""

    prompt: str
    seed: int
    name: str  # the run folder, relative to the batch's output folder (may hold a /)
    steps: int | None = None
    overrides: tuple[str, ...] = ()
    preset: str | None = None

    def config(self) -> Config:
        flags = {"prompt.text": self.prompt, "train.seed": self.seed, "train.steps": self.steps}
        return resolve_config(flags, self.preset, self.overrides)


@dataclass(frozen=True)
class _Entry:
    prompt: str
    seeds: tuple[int, ...] | None = None
    steps: int | None = None
    overrides: tuple[str, ...] = field(default_factory=tuple)


def read_prompts_file(
    path: Path, seeds: Sequence[int] = (0,), steps: int | None = None, overrides: Sequence[str] = ()
) -> list[RunSpec]:
    """The runs a prompts file asks for; `seeds`, `steps` and `overrides` apply where the file is silent
    (overrides are applied first, a prompt's own after them)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read the prompts file {path}: {exc.strerror or exc}") from exc
    if path.suffix.lower() in (".yaml", ".yml"):
        entries, defaults = _yaml_entries(text, path)
        seeds = defaults.get("seeds", seeds)
        steps = defaults.get("steps", steps)
        overrides = (*overrides, *defaults.get("overrides", ()))
    else:
        entries = [_Entry(line.strip()) for line in text.splitlines() if _is_prompt_line(line)]
    if not entries:
        raise UserError(f"no prompts in {path}")
    specs = [
        RunSpec(
            e.prompt,
            seed,
            f"{slug(e.prompt)}-seed{seed}",
            e.steps if e.steps is not None else steps,
            (*overrides, *e.overrides),
        )
        for e in entries
        for seed in (e.seeds if e.seeds is not None else tuple(seeds))
    ]
    check_specs(specs, str(path))
    return specs


def check_specs(specs: Sequence[RunSpec], source: str = "the batch") -> None:
    """Resolve every run's settings now, and refuse two runs in one folder."""
    seen: dict[str, RunSpec] = {}
    for spec in specs:
        if spec.name in seen:
            raise UserError(f"{source}: {spec.prompt!r} with seed {spec.seed} is listed twice")
        seen[spec.name] = spec
        try:
            spec.config()
        except UserError as exc:
            raise SettingsError(f"{source}: {spec.prompt!r}: {exc}") from None


def _is_prompt_line(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _yaml_entries(text: str, path: Path) -> tuple[list[_Entry], dict[str, Any]]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"{path} is not valid YAML{where}") from None
    if isinstance(data, list):
        data = {"prompts": data}
    if not isinstance(data, dict) or not isinstance(data.get("prompts"), list):
        raise UserError(f"{path}: expected a list of prompts, or a mapping with a 'prompts' list")
    unknown = set(data) - {"prompts", "seeds", "steps", "overrides"}
    if unknown:
        known = "prompts, seeds, steps, overrides"
        raise UserError(f"{path}: unknown key {sorted(unknown)[0]!r} (known: {known})")
    defaults = {k: _field(k, data[k], path, "the file") for k in ("seeds", "steps", "overrides") if k in data}
    entries = []
    for i, item in enumerate(data["prompts"], 1):
        if isinstance(item, str):
            item = {"prompt": item}
        text = item.get("prompt") if isinstance(item, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{path}: prompt {i} needs a 'prompt' text")
        extra = set(item) - {"prompt", "seeds", "steps", "overrides"}
        if extra:
            raise UserError(f"{path}: prompt {i} has an unknown key {sorted(extra)[0]!r}")
        where = f"prompt {i}"
        entries.append(
            _Entry(
                item["prompt"].strip(),
                _field("seeds", item["seeds"], path, where) if "seeds" in item else None,
                _field("steps", item["steps"], path, where) if "steps" in item else None,
                _field("overrides", item.get("overrides", []), path, where),
            )
        )
    return entries, defaults


def _field(key: str, value: Any, path: Path, where: str) -> Any:
    def whole(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    if key == "seeds":
        values = [value] if whole(value) else value
        if not isinstance(values, list) or not values or not all(whole(s) and s >= 0 for s in values):
            raise UserError(f"{path}: {where}: seeds must be a non-negative whole number or a list of them")
        return tuple(values)
    if key == "steps":
        if not whole(value) or value < 1:
            raise UserError(f"{path}: {where}: steps must be a positive whole number")
        return value
    if not isinstance(value, list) or not all(isinstance(o, str) for o in value):
        raise UserError(f"{path}: {where}: overrides must be a list of 'section.key=value' strings")
    return tuple(value)
