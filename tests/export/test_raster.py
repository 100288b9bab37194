"""The rasteriser against answers known by hand: coverage of a triangle, barycentrics that reproduce the
pixel centre, the nearer of two triangles, chunking that changes nothing, projection that inverts rays."""

from __future__ import annotations

import torch

from dreamfusion.render.cameras import orbit_cameras
from dreamfusion.render.raster import project, rasterize
from dreamfusion.render.rays import camera_rays


def test_a_triangle_covers_exactly_the_pixel_centres_inside_it():
    xy = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    fragments = rasterize(xy, torch.tensor([[0, 1, 2]]), 4, 4)
    rows, cols = torch.meshgrid(torch.arange(4) + 0.5, torch.arange(4) + 0.5, indexing="ij")
    assert torch.equal(fragments.covered, rows + cols <= 4)
    # Barycentric weights interpolate the corners back to the pixel centre.
    inside = fragments.covered
    centre = fragments.barycentric[inside] @ xy
    assert torch.allclose(centre, torch.stack([cols[inside], rows[inside]], -1), atol=1e-5)


def test_the_nearest_triangle_wins_whatever_the_order_and_the_chunking():
    xy = torch.tensor([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0], [8.0, 8.0]])
    faces = torch.tensor([[0, 1, 2], [1, 3, 2], [0, 1, 2]])
    depth_near = torch.tensor([1.0, 1.0, 1.0, 1.0])
    # Face 2 repeats face 0; per-vertex depth cannot tell them apart, so the lower index must win. Then make
    # the second copy nearer by rasterising it with its own depth.
    once = rasterize(xy, faces, 8, 8, depth=depth_near)
    chunked = rasterize(xy, faces, 8, 8, depth=depth_near, max_candidates=1)
    assert torch.equal(once.face, chunked.face) and torch.allclose(once.barycentric, chunked.barycentric)
    assert set(once.face.unique().tolist()) == {0, 1}
    xy2 = torch.cat([xy, xy[:3]])
    faces2 = torch.tensor([[0, 1, 2], [1, 3, 2], [4, 5, 6]])
    depth2 = torch.tensor([2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0])
    nearer = rasterize(xy2, faces2, 8, 8, depth=depth2)
    assert (nearer.face[nearer.face != 1] == 2).all()
    assert torch.allclose(nearer.depth[nearer.face == 2], torch.tensor(1.0))


def test_back_faces_are_culled_only_when_asked():
    xy = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    depth = torch.ones(3)
    # Pixel rows grow downwards: (0, 0) -> (0, 4) -> (4, 0) is top-left, bottom-left, top-right, which a
    # viewer sees counter-clockwise (facing them); the reverse order turns its back.
    facing = torch.tensor([[0, 2, 1]])
    turned_away = torch.tensor([[0, 1, 2]])
    assert rasterize(xy, facing, 4, 4, depth, cull_back_faces=True).covered.any()
    assert not rasterize(xy, turned_away, 4, 4, depth, cull_back_faces=True).covered.any()
    assert rasterize(xy, turned_away, 4, 4, depth).covered.any()


def test_projection_inverts_camera_rays():
    cameras = orbit_cameras(3, 16, elevation_deg=25.0)
    rays = camera_rays(cameras)
    for view in range(3):
        points = (rays.origins[view] + 1.3 * rays.directions[view]).reshape(-1, 3)
        xy, depth = project(points, cameras, view)
        rows, cols = torch.meshgrid(torch.arange(16) + 0.5, torch.arange(16) + 0.5, indexing="ij")
        assert torch.allclose(xy, torch.stack([cols, rows], -1).reshape(-1, 2), atol=1e-3)
        assert (depth > 0).all()
