"""The optional mesh stage after the NeRF steps (`refine.steps`): the field's surface as a mesh, its vertices
refined with the same guidance through a differentiable CPU rasteriser. `stage` holds the mesh and its
settings, `render` the renderer."""
