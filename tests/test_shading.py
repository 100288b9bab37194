import torch

from dreamfusion.render.shading import ShadingConfig, ShadingMode, choose_shading, shade


def test_albedo_only_during_warmup_then_the_paper_mixture():
    cfg = ShadingConfig(albedo_warmup_fraction=0.1)
    g = torch.Generator().manual_seed(0)
    assert (choose_shading(cfg, 99, 1000, 64, g) == ShadingMode.ALBEDO).all()
    modes = torch.cat([choose_shading(cfg, 100, 1000, 100, g) for _ in range(100)])
    share = [float((modes == m).float().mean()) for m in ShadingMode]
    assert abs(share[ShadingMode.ALBEDO] - 0.25) < 0.02
    assert abs(share[ShadingMode.LAMBERTIAN] - 0.375) < 0.02
    assert abs(share[ShadingMode.TEXTURELESS] - 0.375) < 0.02


def test_lambertian_and_textureless_colours():
    albedo = torch.tensor([[0.5, 0.2, 0.1]]).repeat(3, 1)
    normals = torch.tensor([[0.0, 0.0, 1.0]]).repeat(3, 1)
    points = torch.zeros(3, 3)
    light = torch.tensor([[0.0, 0.0, 2.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])  # overhead, grazing, overhead
    modes = torch.tensor([ShadingMode.LAMBERTIAN, ShadingMode.LAMBERTIAN, ShadingMode.TEXTURELESS])
    out = shade(albedo, normals, points, light, modes, ambient=0.1, diffuse=0.9)
    assert torch.allclose(out[0], albedo[0])  # n . l = 1: ambient + diffuse = 1
    assert torch.allclose(out[1], albedo[1] * 0.1)  # n . l = 0: ambient only
    assert torch.allclose(out[2], torch.ones(3))  # textureless: white albedo, fully lit
    albedo_mode = shade(albedo, None, points, light, torch.zeros(3, dtype=torch.long), 0.1, 0.9)
    assert torch.equal(albedo_mode, albedo)
