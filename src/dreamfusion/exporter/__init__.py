"""Export: a textured mesh in GLB, OBJ and PLY, and a turntable video, from a field or a run folder.

    from dreamfusion.exporter.pipeline import ExportConfig, export_run
    result = export_run("runs/a-red-ball-seed0", ExportConfig(video=True))  # -> RUN_DIR/export/

The steps, one module each:

1. `fields.mesh` (below export, as evaluation measures the same surface): the density on a grid of
   `resolution`^3 cells over the scene's bounding cube, marching cubes at an iso level chosen from the
   field (`half_opacity_threshold`: the level whose surface crosses the same lines of the grid as the
   field makes at least half opaque, i.e. what renders show as solid), vertices
   moved onto the field's own iso surface by bisection, connected pieces with under 2 % of the largest
   piece's area dropped as floaters, quadric decimation to a face budget (40k by default), and each
   piece's winding made consistent and outward (trimesh's `fix_normals`).
2. `texture`: an xatlas UV atlas; the albedo texture is baked by querying the field at the surface point of
   every texel, then dilated into the empty texels so no seam shows; vertex colours are the field's albedo
   at each vertex.
3. `formats`: model.glb (glTF 2.0 binary, metallic-roughness material with a baseColorTexture), model.obj +
   model.mtl + model.png, model.ply (vertex colours). All in glTF's frame, +Y up with the front facing +Z,
   1 unit = 1 metre = 1 world unit.
4. `video`: turntable.mp4 (H.264), turntable.gif and a contact sheet, turntable.png, of the textured mesh
   rendered by `preview` (with the rasteriser in `render.raster`), shaded like the field's validation renders.
5. `pipeline`: runs them in order and writes the folder atomically, never over an existing export.

A scene with no surface is a `UserError` before anything is written. `command` holds the
`dreamfusion export` subcommand; it imports the rest only when it runs, so `dreamfusion --help` stays quick.
"""
