"""A turntable of the exported mesh: MP4 (H.264), GIF and a contact-sheet PNG.

The camera circles the world's up axis (+Z) at a fixed elevation, starting at azimuth 0 (the front), and
frames the mesh so that its bounding sphere about the origin fills the picture. Each frame shows the shaded,
textured mesh (`preview.render_mesh`, a headlight at the camera), optionally with the normals, the
textureless shading and the depth beside it. The MP4 is encoded by the ffmpeg that imageio-ffmpeg ships, so
no system ffmpeg is needed; yuv420p keeps it playable in browsers and on phones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dreamfusion.exporter.preview import render_mesh
from dreamfusion.exporter.texture import TexturedMesh
from dreamfusion.render.cameras import orbit_cameras
from dreamfusion.render.views import ViewRenders, to_uint8

PANELS = ("shaded", "normals", "textureless", "depth")
FOCAL_MULTIPLIER = 0.85  # as the validation cameras (orbit_cameras): a 61 deg field of view
MARGIN = 1.1  # the bounding sphere's silhouette fills 1 / MARGIN of the frame's half-width


@dataclass(frozen=True)
class TurntableConfig:
    frames: int = 120
    size: int = 512  # each panel is size x size pixels
    fps: int = 30
    elevation_deg: float = 20.0
    panels: tuple[str, ...] = ("shaded",)  # first is always "shaded"; add any of normals, textureless, depth
    supersample: int = 2  # anti-aliasing: samples per pixel along each axis
    contact_sheet_frames: int = 8
    gif: bool = True

    def __post_init__(self) -> None:
        if self.frames < 1 or self.fps < 1 or self.contact_sheet_frames < 1:
            raise ValueError("frames, fps and contact_sheet_frames must be >= 1")
        if self.size < 16 or self.size % 2:
            raise ValueError(f"video size must be an even number >= 16 (H.264 in yuv420p), got {self.size}")
        if not -89.0 <= self.elevation_deg <= 89.0:
            raise ValueError(f"elevation_deg must be in [-89, 89], got {self.elevation_deg}")
        unknown = [p for p in self.panels if p not in PANELS]
        if (
            unknown
            or not self.panels
            or self.panels[0] != "shaded"
            or len(set(self.panels)) < len(self.panels)
        ):
            raise ValueError(
                f"panels must start with 'shaded' and name each of {', '.join(PANELS)} at most once, "
                f"got {', '.join(self.panels) or 'none'}"
            )
        if not 1 <= self.supersample <= 4:
            raise ValueError(f"supersample must be in [1, 4], got {self.supersample}")


def framing_distance(mesh: TexturedMesh, focal_multiplier: float = FOCAL_MULTIPLIER) -> float:
    """Camera distance at which the mesh's bounding sphere about the origin fills the frame (with MARGIN)."""
    radius = float(np.linalg.norm(mesh.vertices, axis=1).max())
    half_fov = math.atan(0.5 / focal_multiplier)
    return MARGIN * radius / math.sin(half_fov)


def depth_panel(renders: ViewRenders, near: float, far: float) -> torch.Tensor:
    """(V, H, W, 3) grey depth: near dark, far light, background white."""
    grey = 0.1 + 0.75 * ((renders.depth - near) / max(far - near, 1e-6)).clamp(0, 1)
    alpha = renders.opacity
    return (grey * alpha + (1 - alpha))[..., None].expand(-1, -1, -1, 3)


def turntable_frames(mesh: TexturedMesh, config: TurntableConfig) -> Callable[[int], np.ndarray]:
    """A function from frame index to the frame, (size, size * len(panels), 3) uint8."""
    distance = framing_distance(mesh)
    radius = float(np.linalg.norm(mesh.vertices, axis=1).max())

    def frame(index: int) -> np.ndarray:
        azimuth_deg = index * 360.0 / config.frames
        camera = orbit_cameras(1, config.size, config.elevation_deg, distance, FOCAL_MULTIPLIER, azimuth_deg)
        renders = render_mesh(mesh, camera, supersample=config.supersample)
        images = {
            "shaded": renders.shaded,
            "normals": renders.normals,
            "textureless": renders.textureless,
            # The visible side of anything inside the bounding sphere lies between its nearest point and,
            # roughly, its centre's distance: that range spans the greys, the same in every frame.
            "depth": depth_panel(renders, distance - radius, distance + 0.25 * radius),
        }
        return to_uint8(torch.cat([images[name][0] for name in config.panels], dim=1))

    return frame


def contact_sheet(frames: list[np.ndarray], columns: int) -> Image.Image:
    """The frames in a grid, `columns` wide, on white."""
    rows = math.ceil(len(frames) / columns)
    h, w, _ = frames[0].shape
    sheet = np.full((rows * h, columns * w, 3), 255, np.uint8)
    for i, image in enumerate(frames):
        r, c = divmod(i, columns)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = image
    return Image.fromarray(sheet)


def write_turntable(
    mesh: TexturedMesh,
    folder: Path,
    config: TurntableConfig = TurntableConfig(),
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """turntable.mp4, turntable.gif (if config.gif) and turntable.png (the contact sheet) in `folder`.
    `progress` is called with 1 after every frame."""
    import imageio_ffmpeg

    render = turntable_frames(mesh, config)
    sheet_every = config.frames / min(config.contact_sheet_frames, config.frames)
    sheet_indices = {int(i * sheet_every) for i in range(min(config.contact_sheet_frames, config.frames))}
    mp4, gif, png = folder / "turntable.mp4", folder / "turntable.gif", folder / "turntable.png"
    width = config.size * len(config.panels)
    writer = imageio_ffmpeg.write_frames(
        str(mp4),
        (width, config.size),
        fps=config.fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        macro_block_size=2,  # both sides are even: no rescaling
        quality=None,
        # crf 18 is visually lossless for x264; threads follow torch's setting, so a shared machine stays
        # as busy as the user asked; faststart lets a browser play the file while it downloads.
        output_params=["-crf", "18", "-threads", str(torch.get_num_threads()), "-movflags", "+faststart"],
    )
    writer.send(None)
    gif_frames: list[Image.Image] = []
    sheet: list[np.ndarray] = []
    try:
        for index in range(config.frames):
            image = render(index)
            writer.send(np.ascontiguousarray(image))
            if config.gif:
                gif_frames.append(
                    Image.fromarray(image).quantize(colors=256, method=Image.Quantize.FASTOCTREE)
                )
            if index in sheet_indices:
                sheet.append(image)
            if progress is not None:
                progress(1)
    finally:
        writer.close()
    written = [mp4]
    if config.gif:
        gif_frames[0].save(
            gif,
            format="GIF",
            save_all=True,
            append_images=gif_frames[1:],
            duration=round(1000 / config.fps),
            loop=0,
            disposal=1,
        )
        written.append(gif)
    # Four panels' worth of columns: four single-panel frames a row, or one frame of four panels.
    contact_sheet(sheet, columns=max(1, 4 // len(config.panels))).save(png, format="PNG")
    written.append(png)
    return written
