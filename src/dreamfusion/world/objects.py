"""The world's object kinds and colours: exact (or conservative) signed distance functions, a part per point.

Every kind lives in a canonical frame that follows the project's convention (cameras.py): +Z is up and the
object's front faces +X, so an azimuth-0 camera sees its front. Each fits inside a sphere of radius
`Kind.radius` <= 0.8 around the origin; the NeRF's bounding sphere has radius 1.4 (App. A.2).

The SDFs are built from exact primitives (sphere, box, cylinder, torus, revolved and extruded polygons) joined
by min / max. Min and max of 1-Lipschitz functions are 1-Lipschitz, and a 1-Lipschitz function that is zero on
the surface never exceeds the true distance, so sphere tracing never steps through a surface.

Colour: the named colour paints the object's main part; a few parts keep a fixed accent colour (tyres, a door,
windows, headlights, a badge) so that the front of an asymmetric kind shows in albedo renders too.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch
from torch import Tensor


@dataclass(frozen=True)
class Kind:
    name: str
    nouns: tuple[str, ...]  # what captions call it; the first is canonical
    has_front: bool  # asymmetric: the front view differs from the back view (Janus failures show)
    lower: tuple[float, float, float]  # axis-aligned bounding box in the canonical frame
    upper: tuple[float, float, float]
    radius: float  # every point of the object is within this distance of the origin


KINDS: tuple[Kind, ...] = (
    Kind("sphere", ("sphere", "ball", "orb"), False, (-0.6, -0.6, -0.6), (0.6, 0.6, 0.6), 0.6),
    Kind("cube", ("cube", "box", "block"), False, (-0.42, -0.42, -0.42), (0.42, 0.42, 0.42), 0.73),
    Kind("cylinder", ("cylinder", "drum"), False, (-0.42, -0.42, -0.45), (0.42, 0.42, 0.45), 0.62),
    Kind("cone", ("cone",), False, (-0.45, -0.45, -0.45), (0.45, 0.45, 0.5), 0.64),
    Kind("torus", ("torus", "donut", "ring"), False, (-0.63, -0.63, -0.18), (0.63, 0.63, 0.18), 0.63),
    Kind("pyramid", ("pyramid",), False, (-0.45, -0.45, -0.4), (0.45, 0.45, 0.4), 0.75),
    Kind("mug", ("mug", "cup", "coffee mug"), True, (-0.36, -0.36, -0.42), (0.36, 0.58, 0.42), 0.59),
    Kind("chair", ("chair",), True, (-0.3, -0.3, -0.58), (0.3, 0.3, 0.6), 0.74),
    Kind("house", ("house", "cottage", "hut"), True, (-0.44, -0.48, -0.5), (0.44, 0.48, 0.44), 0.76),
    Kind("car", ("car", "automobile", "toy car"), True, (-0.6, -0.3, -0.3), (0.6, 0.3, 0.26), 0.7),
    Kind("arrow", ("arrow",), True, (-0.62, -0.2, -0.2), (0.7, 0.2, 0.2), 0.7),
)
KIND_NAMES: tuple[str, ...] = tuple(k.name for k in KINDS)
KINDS_BY_NAME: dict[str, Kind] = {k.name: k for k in KINDS}

# Canonical colour words and their RGB albedo, as sRGB-encoded display values: no renderer applies a
# transfer curve, and the colour error reads them as sRGB (evaluation/surface.py). No black: it is the
# accent colour of tyres and doors.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.1),
    "orange": (0.95, 0.5, 0.08),
    "yellow": (0.95, 0.85, 0.12),
    "green": (0.15, 0.62, 0.2),
    "blue": (0.12, 0.3, 0.85),
    "purple": (0.5, 0.18, 0.7),
    "pink": (0.98, 0.55, 0.72),
    "brown": (0.5, 0.3, 0.12),
    "white": (0.93, 0.93, 0.93),
    "gray": (0.5, 0.5, 0.5),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)


class Part(IntEnum):
    """Which colour a surface point takes: the object's named colour, or a fixed accent."""

    MAIN = 0
    TRIM = 1  # tyres, a door, a mug's badge, an arrow's fins
    GLASS = 2  # a car's cabin
    LIGHT = 3  # a car's headlights
    ROOF = 4  # a house's roof and chimney


ACCENT_RGB: dict[Part, tuple[float, float, float]] = {
    Part.TRIM: (0.08, 0.08, 0.08),
    Part.GLASS: (0.3, 0.42, 0.55),
    Part.LIGHT: (1.0, 0.93, 0.55),
    Part.ROOF: (0.32, 0.2, 0.17),
}


def kind(name: str) -> Kind:
    try:
        return KINDS_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown kind {name!r}; the world knows {', '.join(KIND_NAMES)}") from None


def colour_rgb(name: str) -> tuple[float, float, float]:
    try:
        return COLOURS[name]
    except KeyError:
        raise ValueError(f"unknown colour {name!r}; the world knows {', '.join(COLOUR_NAMES)}") from None


# ---- exact primitives; p is (N, 3) ----


def sd_sphere(p: Tensor, radius: float) -> Tensor:
    return p.norm(dim=-1) - radius


def _box_from_q(q: Tensor) -> Tensor:
    return q.clamp_min(0.0).norm(dim=-1) + q.max(-1).values.clamp(max=0.0)


def sd_box(p: Tensor, centre: tuple[float, float, float], half: tuple[float, float, float]) -> Tensor:
    return _box_from_q((p - p.new_tensor(centre)).abs() - p.new_tensor(half))


def _cap(d_radial: Tensor, d_axial: Tensor) -> Tensor:
    """Exact distance to the intersection of an infinite shape (d_radial) and a slab (d_axial), when the two
    are orthogonal: an extrusion or a capped solid of revolution."""
    w = torch.stack([d_radial, d_axial], -1)
    return w.clamp_min(0.0).norm(dim=-1) + w.max(-1).values.clamp(max=0.0)


_OTHER_AXES = {0: [1, 2], 1: [0, 2], 2: [0, 1]}


def sd_cylinder(
    p: Tensor, centre: tuple[float, float, float], radius: float, half: float, axis: int
) -> Tensor:
    q = p - p.new_tensor(centre)
    return _cap(q[:, _OTHER_AXES[axis]].norm(dim=-1) - radius, q[:, axis].abs() - half)


def sd_torus(p: Tensor, centre: tuple[float, float, float], major: float, minor: float, axis: int) -> Tensor:
    q = p - p.new_tensor(centre)
    ring = torch.stack([q[:, _OTHER_AXES[axis]].norm(dim=-1) - major, q[:, axis]], -1)
    return ring.norm(dim=-1) - minor


def sd_polygon(q: Tensor, vertices: tuple[tuple[float, float], ...]) -> Tensor:
    """Exact signed distance from 2D points q (N, 2) to a simple polygon (negative inside), vectorised over
    the edges: the nearest-edge distance, signed by the crossing parity of a ray along +x."""
    v = q.new_tensor(vertices)  # (V, 2)
    prev = v.roll(1, 0)
    edge = prev - v  # (V, 2)
    w = q[:, None, :] - v[None]  # (N, V, 2)
    along = ((w * edge).sum(-1) / (edge * edge).sum(-1)).clamp(0.0, 1.0)
    dist = (w - edge * along[..., None]).square().sum(-1).min(-1).values.sqrt()
    above = q[:, 1:2] >= v[:, 1]
    below_prev = q[:, 1:2] < prev[:, 1]
    left = edge[:, 0] * w[..., 1] > edge[:, 1] * w[..., 0]
    crossings = ((above & below_prev & left) | (~above & ~below_prev & ~left)).sum(-1)
    return torch.where(crossings % 2 == 1, -dist, dist)


def sd_revolved(p: Tensor, axis: int, profile: tuple[tuple[float, float], ...]) -> Tensor:
    """A solid of revolution about a coordinate axis through the origin. `profile` is the full cross-section
    in (radial, axial) coordinates, mirror-symmetric in radial, so the 2D distance is the 3D distance."""
    radial = p[:, _OTHER_AXES[axis]].norm(dim=-1)
    return sd_polygon(torch.stack([radial, p[:, axis]], -1), profile)


def sd_extruded(
    p: Tensor, plane_axes: tuple[int, int], profile: tuple[tuple[float, float], ...], half: float
):
    """A polygon in the plane of `plane_axes`, extruded by +-half along the remaining axis."""
    depth_axis = 3 - plane_axes[0] - plane_axes[1]
    d2 = sd_polygon(p[:, list(plane_axes)], profile)
    return _cap(d2, p[:, depth_axis].abs() - half)


# ---- the kinds: (N, 3) canonical points -> sdf (N,) and, when asked, Part (N,) ----


@dataclass(frozen=True)
class KindSample:
    sdf: Tensor  # (N,)
    part: Tensor | None  # (N,) Part values, or None when not asked for


def _pyramid(p: Tensor) -> Tensor:
    """Square base (half width 0.45) at z = -0.4, apex at z = 0.4. The max of its five face planes: exact
    inside, a lower bound outside (it is 1-Lipschitz), which is all sphere tracing needs."""
    half, height, apex = 0.45, 0.8, 0.4
    norm = (height**2 + half**2) ** 0.5
    side_x = (height * p[:, 0].abs() + half * (p[:, 2] - apex)) / norm
    side_y = (height * p[:, 1].abs() + half * (p[:, 2] - apex)) / norm
    base = -0.4 - p[:, 2]
    return torch.stack([side_x, side_y, base], -1).max(-1).values


def _mug(p: Tensor, with_parts: bool) -> KindSample:
    """A hollow cylinder with a handle on its left (+Y; the right of the image in the front view) and a dark
    round badge printed on its front (+X)."""
    outer = sd_cylinder(p, (0.0, 0.0, 0.0), 0.36, 0.42, axis=2)
    cavity = sd_cylinder(p, (0.0, 0.0, 0.08), 0.3, 0.42, axis=2)  # open at the top, floor at z = -0.34
    ring = sd_torus(p, (0.0, 0.36, 0.0), 0.17, 0.05, axis=0)
    handle = torch.maximum(ring, -outer)  # only the part outside the wall, else it would show in the cavity
    sdf = torch.minimum(torch.maximum(outer, -cavity), handle)
    if not with_parts:
        return KindSample(sdf, None)
    on_front = (p[:, 0] > 0.0) & (p[:, :2].norm(dim=-1) > 0.33)
    badge = on_front & (p[:, 1].square() + p[:, 2].square() < 0.15**2)
    return KindSample(sdf, _parts(sdf, (badge, Part.TRIM)))


def _chair(p: Tensor) -> Tensor:
    """A seat on four legs with the backrest behind it (-X): one sits facing +X."""
    seat = sd_box(p, (0.0, 0.0, -0.02), (0.3, 0.3, 0.04))
    folded = torch.cat([p[:, :2].abs(), p[:, 2:]], -1)  # four mirror-image legs, one per quadrant
    legs = sd_box(folded, (0.26, 0.26, -0.32), (0.035, 0.035, 0.26))
    back = sd_box(p, (-0.265, 0.0, 0.31), (0.035, 0.3, 0.29))
    return torch.minimum(torch.minimum(seat, legs), back)


def _house(p: Tensor, with_parts: bool) -> KindSample:
    """Walls with a recessed door in the front (+X) wall, a gable roof whose ridge runs front to back (the
    front view shows the classic pentagon), and a chimney on the back half of the roof."""
    walls = sd_box(p, (0.0, 0.0, -0.22), (0.38, 0.42, 0.28))
    door = sd_box(p, (0.38, 0.0, -0.35), (0.03, 0.09, 0.15))
    roof = sd_extruded(p, (1, 2), ((-0.48, 0.06), (0.48, 0.06), (0.0, 0.42)), 0.44)
    chimney = sd_box(p, (-0.2, 0.2, 0.3), (0.055, 0.055, 0.14))
    top = torch.minimum(roof, chimney)
    sdf = torch.minimum(torch.maximum(walls, -door), top)
    if not with_parts:
        return KindSample(sdf, None)
    return KindSample(sdf, _parts(sdf, (top <= sdf + 1e-4, Part.ROOF), (door < 5e-3, Part.TRIM)))


def _car(p: Tensor, with_parts: bool) -> KindSample:
    """A rounded body, a cabin set back with a sloped windscreen at the front (+X), four tyres and two
    headlights on the front face."""
    body = sd_box(p, (0.0, 0.0, -0.05), (0.56, 0.26, 0.07)) - 0.04
    cabin = sd_extruded(p, (0, 2), ((-0.4, 0.04), (0.2, 0.04), (0.06, 0.26), (-0.32, 0.26)), 0.24)
    folded = torch.cat([p[:, :2].abs(), p[:, 2:]], -1)
    tyres = sd_cylinder(folded, (0.36, 0.24, -0.17), 0.13, 0.06, axis=1)
    sdf = torch.minimum(torch.minimum(body, cabin), tyres)
    if not with_parts:
        return KindSample(sdf, None)
    headlight = (p[:, 0] > 0.55) & (p[:, 1].abs() > 0.1) & (p[:, 1].abs() < 0.22) & (p[:, 2] > -0.09)
    return KindSample(
        sdf,
        _parts(
            sdf,
            (tyres <= sdf + 1e-4, Part.TRIM),
            (cabin <= sdf + 1e-4, Part.GLASS),
            (headlight & (body <= sdf + 1e-4), Part.LIGHT),
        ),
    )


def _arrow(p: Tensor, with_parts: bool) -> KindSample:
    """A shaft along X with a conical head at the front (+X) and crossed dark fins at the tail."""
    shaft = sd_cylinder(p, (-0.15, 0.0, 0.0), 0.06, 0.47, axis=0)
    head = sd_revolved(p, 0, ((-0.2, 0.3), (0.2, 0.3), (0.0, 0.7)))
    fins = torch.minimum(
        sd_box(p, (-0.5, 0.0, 0.0), (0.12, 0.17, 0.012)), sd_box(p, (-0.5, 0.0, 0.0), (0.12, 0.012, 0.17))
    )
    sdf = torch.minimum(torch.minimum(shaft, head), fins)
    if not with_parts:
        return KindSample(sdf, None)
    return KindSample(sdf, _parts(sdf, (fins <= sdf + 1e-4, Part.TRIM)))


def _parts(sdf: Tensor, *rules: tuple[Tensor, Part]) -> Tensor:
    """Part per point: MAIN unless a rule's mask holds; later rules win."""
    part = torch.full(sdf.shape, int(Part.MAIN), dtype=torch.long, device=sdf.device)
    for mask, value in rules:
        part = torch.where(mask, int(value), part)
    return part


def _main_only(sdf: Tensor, with_parts: bool) -> KindSample:
    return KindSample(sdf, _parts(sdf) if with_parts else None)


def kind_geometry(name: str, points: Tensor, with_parts: bool = False) -> KindSample:
    """Signed distance (and part) of kind `name` at canonical points (N, 3)."""
    match name:
        case "sphere":
            return _main_only(sd_sphere(points, 0.6), with_parts)
        case "cube":
            return _main_only(sd_box(points, (0.0, 0.0, 0.0), (0.42, 0.42, 0.42)), with_parts)
        case "cylinder":
            return _main_only(sd_cylinder(points, (0.0, 0.0, 0.0), 0.42, 0.45, axis=2), with_parts)
        case "cone":
            return _main_only(sd_revolved(points, 2, ((-0.45, -0.45), (0.45, -0.45), (0.0, 0.5))), with_parts)
        case "torus":
            return _main_only(sd_torus(points, (0.0, 0.0, 0.0), 0.45, 0.18, axis=2), with_parts)
        case "pyramid":
            return _main_only(_pyramid(points), with_parts)
        case "mug":
            return _mug(points, with_parts)
        case "chair":
            return _main_only(_chair(points), with_parts)
        case "house":
            return _house(points, with_parts)
        case "car":
            return _car(points, with_parts)
        case "arrow":
            return _arrow(points, with_parts)
        case _:
            raise ValueError(f"unknown kind {name!r}; the world knows {', '.join(KIND_NAMES)}")


def part_albedo(part: Tensor, main_rgb: Tensor) -> Tensor:
    """(N, 3) albedo from parts (N,) and each point's main colour (N, 3) or (3,)."""
    albedo = main_rgb.expand(part.shape[0], 3).clone()
    for accent, rgb in ACCENT_RGB.items():
        albedo[part == accent] = albedo.new_tensor(rgb)
    return albedo
