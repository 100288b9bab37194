"""The exported files: glTF 2.0 binary, OBJ + MTL + PNG, PLY with vertex colours.

Axes and units, the same in all three: glTF's convention, +Y up and the object's front facing +Z, which is
what Blender's importers (glTF, and OBJ with its defaults), three.js, Babylon.js, Unity and Godot expect.
The scene's world frame (+Z up, front +X, `cameras.py`) is turned into it by a rotation, no mirror:
(x, y, z)_file = (y, z, x)_world. One world unit is one unit in the file, which glTF defines as a metre:
the object is about a metre across (everything lies inside the scene's sphere of radius 1.4).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from dreamfusion import __version__
from dreamfusion.exporter.texture import TexturedMesh

FORMATS = ("glb", "obj", "ply")
GENERATOR = f"dreamfusion {__version__} (trimesh {trimesh.__version__})"
NAME = "model"  # model.glb, model.obj, model.mtl, model.png, model.ply

# glTF bufferView targets: vertex attributes and triangle indices (glTF 2.0 spec, 5.11.4).
ARRAY_BUFFER = 34962
ELEMENT_ARRAY_BUFFER = 34963


def to_file_axes(points: np.ndarray) -> np.ndarray:
    """World (+Z up, front +X) to the files' frame (+Y up, front +Z): (x, y, z) -> (y, z, x), a rotation."""
    return np.ascontiguousarray(points[:, [1, 2, 0]])


def _set_buffer_view_targets(tree: dict) -> None:
    """Mark vertex and index buffer views, as the glTF validator recommends (trimesh leaves them unset)."""
    views = tree.get("bufferViews", [])
    accessors = tree.get("accessors", [])
    for mesh in tree.get("meshes", []):
        for primitive in mesh.get("primitives", []):
            for accessor in primitive.get("attributes", {}).values():
                views[accessors[accessor]["bufferView"]]["target"] = ARRAY_BUFFER
            if "indices" in primitive:
                views[accessors[primitive["indices"]]["bufferView"]]["target"] = ELEMENT_ARRAY_BUFFER
    tree.setdefault("asset", {})["generator"] = GENERATOR


def write_glb(mesh: TexturedMesh, path: Path) -> None:
    """glTF 2.0 binary: positions, normals, TEXCOORD_0 and a metallic-roughness material whose
    baseColorTexture is the baked albedo (metallic 0, roughness 1: the field is a diffuse reflector)."""
    material = trimesh.visual.material.PBRMaterial(
        name=NAME,
        baseColorTexture=Image.fromarray(mesh.texture),
        metallicFactor=0.0,
        roughnessFactor=1.0,
    )
    geometry = trimesh.Trimesh(
        to_file_axes(mesh.vertices),
        mesh.faces,
        vertex_normals=to_file_axes(mesh.normals),
        visual=trimesh.visual.TextureVisuals(uv=mesh.uv, material=material),
        process=False,
    )
    scene = trimesh.Scene(geometry={NAME: geometry})
    data = trimesh.exchange.gltf.export_glb(
        scene, include_normals=True, tree_postprocessor=_set_buffer_view_targets
    )
    path.write_bytes(data)


def _lines(line_format: str, values: np.ndarray) -> str:
    """One `line_format % row` line per row of `values`."""
    return "".join(line_format % tuple(row) + "\n" for row in values.tolist())


def write_obj(mesh: TexturedMesh, folder: Path) -> list[Path]:
    """model.obj, model.mtl and model.png. Positions and normals are written once per point of the surface
    (the seam-free mesh), texture coordinates once per atlas vertex, so the OBJ imports as one connected
    mesh whose UVs are split only at the seams."""
    vertices, _, normals, _ = mesh.welded()
    obj, mtl, png = folder / f"{NAME}.obj", folder / f"{NAME}.mtl", folder / f"{NAME}.png"
    corners = np.stack([mesh.weld[mesh.faces], mesh.faces, mesh.weld[mesh.faces]], -1) + 1  # (F, 3, 3)
    header = f"# {GENERATOR}\n# +Y up, front faces +Z, 1 unit = 1 metre\nmtllib {mtl.name}\no {NAME}\n"
    body = (
        _lines("v %.6f %.6f %.6f", to_file_axes(vertices))
        + _lines("vt %.6f %.6f", mesh.uv)
        + _lines("vn %.5f %.5f %.5f", to_file_axes(normals))
        + f"usemtl {NAME}\n"
        + _lines("f %d/%d/%d %d/%d/%d %d/%d/%d", corners.reshape(len(mesh.faces), 9))
    )
    obj.write_text(header + body)
    mtl.write_text(
        f"# {GENERATOR}\nnewmtl {NAME}\nKa 0 0 0\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\nmap_Kd {png.name}\n"
    )
    Image.fromarray(mesh.texture).save(png, format="PNG")
    return [obj, mtl, png]


def write_ply(mesh: TexturedMesh, path: Path) -> None:
    """Binary little-endian PLY of the seam-free mesh: positions, normals and 8-bit RGB(A) vertex colours."""
    vertices, faces, normals, colors = mesh.welded()
    alpha = np.full((len(colors), 1), 255, np.uint8)
    geometry = trimesh.Trimesh(
        to_file_axes(vertices),
        faces,
        vertex_normals=to_file_axes(normals),
        vertex_colors=np.concatenate([colors, alpha], 1),
        process=False,
    )
    path.write_bytes(trimesh.exchange.ply.export_ply(geometry, encoding="binary", vertex_normal=True))


def write_formats(mesh: TexturedMesh, folder: Path, formats: tuple[str, ...]) -> list[Path]:
    """Write the requested formats into `folder`; returns the files written."""
    written: list[Path] = []
    for name in formats:
        match name:
            case "glb":
                write_glb(mesh, folder / f"{NAME}.glb")
                written.append(folder / f"{NAME}.glb")
            case "obj":
                written += write_obj(mesh, folder)
            case "ply":
                write_ply(mesh, folder / f"{NAME}.ply")
                written.append(folder / f"{NAME}.ply")
            case _:
                raise ValueError(f"unknown format {name!r}; known: {', '.join(FORMATS)}")
    return written


def write_json(data: object, path: Path) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
