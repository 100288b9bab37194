import torch

from dreamfusion.render.rays import sphere_intersection


def test_sphere_intersection_from_outside_and_inside():
    origins = torch.tensor([[3.0, 0, 0], [0.5, 0, 0], [3.0, 2.0, 0]])
    directions = torch.tensor([[-1.0, 0, 0], [1.0, 0, 0], [-1.0, 0, 0]])
    near, far, hit = sphere_intersection(origins, directions, 1.4)
    assert hit.tolist() == [True, True, False]
    assert torch.allclose(near[:2], torch.tensor([1.6, 0.0]))  # a camera inside the sphere starts at 0
    assert torch.allclose(far[:2], torch.tensor([4.4, 0.9]))
