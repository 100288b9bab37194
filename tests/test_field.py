"""The 3D field (field.py, field_hashgrid.py): shapes, the App. A.2 density blob, and normals checked against
autograd, finite differences and an analytic answer, for both kinds of field."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
import torch.nn.functional as F

from dreamfusion.fields import FieldConfig, build_field
from dreamfusion.fields.base import autograd_normals
from dreamfusion.fields.hashgrid import (
    CPU_CHUNK_POINTS,
    HASH_PRIMES,
    HashGridConfig,
    HashGridField,
    _Grid,
    _HashEncoding,
    _interpolate,
    _interpolate_backward,
    level_multipliers,
    level_resolutions,
)
from dreamfusion.fields.sdf import SdfConfig, SdfTriplaneField, laplace_density
from dreamfusion.fields.triplane import TriplaneConfig, TriplaneField

# Small fields so the whole file runs in a few seconds. The hash grid has 2 dense levels (R = 4, 10: 16^3
# slots fit 2^12) and 2 hashed ones (R = 25, 64), so both indexing paths are exercised.
SMALL = {
    "triplane": FieldConfig(
        kind="triplane", triplane=TriplaneConfig(resolution=16, channels=8), hidden_width=16
    ),
    "hashgrid": FieldConfig(
        kind="hashgrid",
        hidden_width=16,
        hashgrid=HashGridConfig(
            levels=4, features_per_level=2, log2_table_size=12, base_resolution=4, max_resolution=64
        ),
    ),
    "sdf": FieldConfig(kind="sdf", sdf=SdfConfig(resolution=16, channels=8), hidden_width=16),
}
KINDS = list(SMALL)


def make_field(kind: str, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """SMALL[kind] with `overrides` applied to its `kind` section (field.triplane, field.hashgrid)."""
    config = SMALL[kind]
    config = dataclasses.replace(config, **{kind: dataclasses.replace(getattr(config, kind), **overrides)})
    return build_field(config, torch.Generator().manual_seed(seed)).to(dtype)


def roughen(field, seed: int = 1) -> None:
    """Replace the near-zero initial grid with large random values, so the grid (not only the blob) shapes
    the density and its gradient: a stronger test of the normals."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        grid = field.planes if isinstance(field, TriplaneField) else field.table
        grid.uniform_(-0.5, 0.5, generator=generator)


def ball_points(n: int, radius: float, seed: int = 2, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=generator, dtype=dtype), dim=-1)
    return direction * radius * torch.rand(n, 1, generator=generator, dtype=dtype) ** (1 / 3)


@pytest.mark.parametrize("kind", KINDS)
def test_output_shapes_and_ranges(kind):
    field = make_field(kind)
    points = ball_points(200, field.bound)
    plain = field(points)
    assert plain.normals is None
    out = field(points, with_normals=True)
    assert out.density.shape == (200,) and out.albedo.shape == (200, 3) and out.normals.shape == (200, 3)
    assert torch.isfinite(out.density).all() and (out.density >= 0).all()
    assert ((out.albedo >= 0) & (out.albedo <= 1)).all()
    torch.testing.assert_close(out.normals.norm(dim=-1), torch.ones(200))
    torch.testing.assert_close(field.density(points), out.density)
    torch.testing.assert_close(plain.density, out.density)


@pytest.mark.parametrize("kind", KINDS)
def test_no_points(kind):
    """A renderer may cull every sample of a batch (empty space): the field must still answer."""
    field = make_field(kind)
    out = field(torch.zeros(0, 3), with_normals=True)
    assert out.density.shape == (0,) and out.albedo.shape == (0, 3) and out.normals.shape == (0, 3)
    (out.density.sum() + out.normals.sum()).backward()


@pytest.mark.parametrize("kind", KINDS)
def test_density_blob_at_init(kind):
    """App. A.2: lambda (1 - ||x|| / sigma), lambda 5, sigma 0.2, is +5 at the centre and -20 at radius 1."""
    field = make_field(kind)
    centre = field.density(torch.zeros(1, 3))
    directions = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    unit_sphere = torch.nn.functional.normalize(directions, dim=-1)
    assert centre.item() > 1e6 * field.density(unit_sphere).max().item()


@pytest.mark.parametrize("kind", KINDS)
def test_points_outside_the_bound_stay_finite(kind):
    field = make_field(kind)
    points = torch.tensor([[3.0, 0.0, 0.0], [-2.0, 2.0, -2.0], [0.0, 0.0, -1.4]])
    out = field(points, with_normals=True)
    assert torch.isfinite(out.density).all() and torch.isfinite(out.normals).all()


def test_triplane_feature_jacobian_matches_autograd():
    field = make_field("triplane", resolution=6, dtype=torch.float64)
    roughen(field)
    points = ball_points(50, field.bound, dtype=torch.float64)
    derivatives, to_axis = field._feature_jacobian(points)
    analytic = torch.einsum("kcn,ka->nac", derivatives, to_axis)  # (N, 3, C)
    by_autograd = torch.autograd.functional.jacobian(lambda p: field._features(p).sum(0), points)  # (C, N, 3)
    torch.testing.assert_close(analytic, by_autograd.permute(1, 2, 0))


def test_hashgrid_derivative_matches_finite_differences():
    """Checks the encoding's derivative against the function itself, not against autograd (whose point
    gradient the hash grid builds from that same derivative)."""
    field = make_field("hashgrid", dtype=torch.float64)
    roughen(field)
    points = ball_points(50, field.bound, dtype=torch.float64)
    _, derivative = field._encode(points, with_derivative=True)
    cells_per_unit = field._resolution * (0.5 / field.bound)  # (L, 1)
    step = 1e-7  # far below a cell (>= 0.04 here), so a central difference is exact up to rounding
    for axis in range(3):
        shift = torch.zeros(3, dtype=torch.float64)
        shift[axis] = step
        plus, _ = field._encode(points + shift, with_derivative=False)
        minus, _ = field._encode(points - shift, with_derivative=False)
        torch.testing.assert_close(derivative[axis] * cells_per_unit, (plus - minus) / (2 * step))


def test_hashgrid_encoding_matches_a_direct_lookup():
    """Against Instant-NGP's formula written out per corner with unreduced primes (and row-major dense
    indexing with power-of-two strides for the coarse levels)."""
    field = make_field("hashgrid", dtype=torch.float64)
    roughen(field)
    points = ball_points(40, field.bound, dtype=torch.float64)
    encoded, _ = field._encode(points, with_derivative=False)  # (F, L, N)
    table_size = field.table_size
    unit = (points / field.bound + 1) / 2
    for level, resolution in enumerate(field.resolutions):
        position = unit * resolution
        cell = position.floor().long()
        fraction = position - cell
        bits = resolution.bit_length()  # ceil(log2(R + 1))
        dense = 3 * bits <= field.config.hashgrid.log2_table_size
        expected = torch.zeros_like(encoded[:, level])
        for corner in itertools.product((0, 1), repeat=3):
            vertex = cell + torch.tensor(corner)
            if dense:
                slot = vertex[:, 0] + (vertex[:, 1] << bits) + (vertex[:, 2] << (2 * bits))
            else:
                slot = (vertex[:, 0] * HASH_PRIMES[0]) ^ (vertex[:, 1] * HASH_PRIMES[1])
                slot = (slot ^ (vertex[:, 2] * HASH_PRIMES[2])) % table_size
            weight = torch.where(torch.tensor(corner, dtype=torch.bool), fraction, 1 - fraction).prod(-1)
            expected += weight * field.table[:, level * table_size + slot]
        torch.testing.assert_close(encoded[:, level], expected)


def test_hashgrid_levels():
    assert level_resolutions(16, 16, 1024)[0] == 16 and level_resolutions(16, 16, 1024)[-1] == 1024
    resolutions = level_resolutions(4, 4, 64)
    assert resolutions == [4, 10, 25, 64]
    multipliers = level_multipliers(resolutions, 12)
    for level, resolution in enumerate(resolutions):
        vertices = torch.cartesian_prod(*[torch.arange(resolution + 1)] * 3)
        slots = ((vertices * multipliers[:, level]) & (2**12 - 1)).unbind(-1)
        slots = slots[0] ^ slots[1] ^ slots[2]
        if 3 * resolution.bit_length() <= 12:  # dense: 2^ceil(log2(R + 1)) per axis fits, one slot per vertex
            assert slots.unique().numel() == vertices.shape[0]
        assert slots.max() < 2**12


def reference_trilinear(values: torch.Tensor, fraction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over the 8 corners of weight x value, and the same with each axis's weight differentiated."""
    encoded, derivative = 0, [0, 0, 0]
    for corner in itertools.product((0, 1), repeat=3):
        weights = [f if bit else 1 - f for f, bit in zip(fraction, corner, strict=True)]
        value = values[:, corner[0], corner[1], corner[2]]
        encoded = encoded + weights[0] * weights[1] * weights[2] * value
        for axis in range(3):
            # d/df of f is +1 and of 1 - f is -1 along `axis`; the other two weights stay.
            slopes = [w if a != axis else (1.0 if corner[a] else -1.0) for a, w in enumerate(weights)]
            derivative[axis] = derivative[axis] + slopes[0] * slopes[1] * slopes[2] * value
    return encoded, torch.stack(derivative)


@pytest.mark.parametrize("with_derivative", [False, True])
def test_hashgrid_interpolation_and_its_backward(with_derivative):
    """The lerp chain and the hand-written backward against corner weights and autograd through them."""
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(2, 2, 2, 2, 3, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    fraction = torch.rand(3, 3, 5, dtype=torch.float64, generator=generator)
    expected_encoded, expected_derivative = reference_trilinear(values, fraction)
    encoded = torch.empty(2, 3, 5, dtype=torch.float64)
    derivative = torch.empty(3, 2, 3, 5, dtype=torch.float64) if with_derivative else None
    with torch.no_grad():
        _interpolate(values, fraction, encoded, derivative)
    torch.testing.assert_close(encoded, expected_encoded)
    grad_encoded = torch.randn(2, 3, 5, dtype=torch.float64, generator=generator)
    grad_derivative = torch.randn(3, 2, 3, 5, dtype=torch.float64, generator=generator)
    if not with_derivative:
        (expected,) = torch.autograd.grad(expected_encoded, values, grad_encoded)
        torch.testing.assert_close(_interpolate_backward(grad_encoded, None, fraction), expected)
        return
    torch.testing.assert_close(derivative, expected_derivative)
    outputs = (expected_encoded, expected_derivative)
    (expected,) = torch.autograd.grad(outputs, values, (grad_encoded, grad_derivative), retain_graph=True)
    torch.testing.assert_close(_interpolate_backward(grad_encoded, grad_derivative, fraction), expected)
    # The derivative alone, as when only the normals reach the loss.
    (expected,) = torch.autograd.grad(expected_derivative, values, grad_derivative)
    torch.testing.assert_close(_interpolate_backward(None, grad_derivative, fraction), expected)


def test_hashgrid_encoding_gradcheck_across_chunks():
    # A tiny grid (levels R = 2 dense and R = 8 hashed into 256 slots) so the gradcheck is quick.
    field = make_field(
        "hashgrid",
        dtype=torch.float64,
        levels=2,
        log2_table_size=8,
        base_resolution=2,
        max_resolution=8,
    )
    unit = (ball_points(7, field.bound, dtype=torch.float64) / field.bound + 1) / 2
    grid = _Grid(field._resolution, field._multiplier, field._level_offset, field.table_size)
    table = torch.randn_like(field.table).requires_grad_(True)
    chunk = 3  # 7 points: two full chunks and a partial one

    def encode(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _HashEncoding.apply(table, unit, grid, True, chunk)

    assert torch.autograd.gradcheck(encode, table, fast_mode=True)
    whole = _HashEncoding.apply(table, unit, grid, True, CPU_CHUNK_POINTS)
    torch.testing.assert_close(encode(table), whole)


def test_hashgrid_far_faces_use_the_last_cell():
    """A point on the cube's far face (unit coordinate 1) lies in the last cell: same value and derivative
    as a point just inside it."""
    field = make_field("hashgrid", dtype=torch.float64)
    roughen(field)
    on_face = (
        torch.tensor([[1.0, 0.3, -0.2], [0.1, 1.0, 1.0], [1.0, 1.0, 1.0]], dtype=torch.float64) * field.bound
    )
    inside = on_face - 1e-9 * (on_face == field.bound)
    on_face_encoded, on_face_derivative = field._encode(on_face, with_derivative=True)
    inside_encoded, inside_derivative = field._encode(inside, with_derivative=True)
    torch.testing.assert_close(on_face_encoded, inside_encoded)
    torch.testing.assert_close(on_face_derivative, inside_derivative)


@pytest.mark.parametrize("kind", KINDS)
def test_normals_equal_autograd_normals(kind):
    field = make_field(kind, dtype=torch.float64)
    roughen(field)
    points = ball_points(300, 0.9, dtype=torch.float64)
    out = field(points, with_normals=True)
    with torch.no_grad():  # first-order only: no double backward needed to compare values
        reference = autograd_normals(field.density, points)
    dense_enough = out.density > 1e-12  # float64: gradients of tiny densities are still exact
    assert dense_enough.sum() > 100
    torch.testing.assert_close(out.normals[dense_enough], reference[dense_enough])


@pytest.mark.parametrize("kind", KINDS)
def test_normals_of_a_radial_blob_point_outward(kind):
    """With the MLP's density output zeroed, density = exp(blob) depends on ||x|| only and falls outward."""
    field = make_field(kind)
    roughen(field)
    with torch.no_grad():
        field.out.weight[0] = 0
        field.out.bias[0] = 0
    points = ball_points(200, field.bound)
    normals = field(points, with_normals=True).normals
    torch.testing.assert_close(normals, torch.nn.functional.normalize(points, dim=-1))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("through", ["everything", "normals only"])
def test_gradients_reach_every_parameter(kind, through):
    field = make_field(kind)
    points = ball_points(300, 0.5)
    out = field(points, with_normals=True)
    generator = torch.Generator().manual_seed(3)
    loss = (out.normals * torch.randn(300, 3, generator=generator)).sum()
    if through == "everything":
        loss = loss + (out.density * torch.randn(300, generator=generator)).sum() + out.albedo.sum()
    loss.backward()
    for name, parameter in field.named_parameters():
        if through == "normals only" and name in ("out.bias", "beta_logit"):
            continue  # a constant shift of the pre-activation, or the SDF's sharpness, cannot turn a normal
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    groups = field.parameter_groups()
    assert {id(p) for g in groups.values() for p in g} == {id(p) for p in field.parameters()}


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_parameters(kind):
    first, again, other = make_field(kind, seed=7), make_field(kind, seed=7), make_field(kind, seed=8)
    for (name, a), b, c in zip(first.named_parameters(), again.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
        assert name == "beta_logit" or not torch.equal(a, c)  # the SDF's sharpness starts at beta_init


def test_sdf_beta_stays_between_its_bounds():
    field = make_field("sdf")
    sdf = field.config.sdf
    with torch.no_grad():
        for logit, expected in ((-50.0, sdf.beta_min), (50.0, sdf.beta_max)):
            field.beta_logit.fill_(logit)
            assert field.beta().item() == pytest.approx(expected)


def test_laplace_density_is_one_over_beta_inside_half_that_on_the_surface_and_decays_outside():
    beta = torch.tensor(0.05)
    sdf = torch.tensor([-10.0, -0.05, 0.0, 0.05, 10.0])
    density = laplace_density(sdf, beta)
    expected = torch.tensor([20.0, 20 * (1 - 0.5 * torch.e**-1), 10.0, 10 * torch.e**-1, 0.0])
    torch.testing.assert_close(density, expected)


def test_sdf_field_starts_as_a_sphere_of_the_blob_radius_with_a_zero_eikonal_term():
    field = make_field("sdf")
    roughen(field)
    with torch.no_grad():
        field.out.weight[0] = 0
        field.out.bias[0] = 0
    points = ball_points(300, field.bound)
    out = field(points, with_normals=True)
    torch.testing.assert_close(out.eikonal, torch.zeros(300), atol=1e-6, rtol=0)
    on_surface = torch.nn.functional.normalize(points, dim=-1) * field.config.blob_radius
    torch.testing.assert_close(field.density(on_surface), torch.full((300,), 0.5 / field.beta().item()))
    assert field.beta().item() == pytest.approx(field.config.sdf.beta_init)


def test_sdf_density_scale_multiplies_density_not_the_surface_or_its_normals():
    base = make_field("sdf")
    roughen(base)
    config = dataclasses.replace(base.config, sdf=dataclasses.replace(base.config.sdf, density_scale=4.0))
    scaled = SdfTriplaneField(config)
    scaled.load_state_dict(base.state_dict())
    points = ball_points(200, base.bound)
    a, b = base(points, with_normals=True), scaled(points, with_normals=True)
    torch.testing.assert_close(b.density, 4.0 * a.density)
    torch.testing.assert_close(b.normals, a.normals)
    torch.testing.assert_close(scaled.density(points), 4.0 * base.density(points))
    with pytest.raises(ValueError, match="density_scale"):
        SdfConfig(density_scale=0.0)


def test_sdf_beta_annealing_lowers_the_cap_geometrically_and_checkpoints_keep_it():
    base = make_field("sdf")
    config = dataclasses.replace(base.config, sdf=dataclasses.replace(base.config.sdf, beta_max_end=0.008))
    field = SdfTriplaneField(config)
    sdf = config.sdf
    field.anneal(0.0)
    assert field.beta_cap.item() == pytest.approx(sdf.beta_max)
    field.anneal(0.5)
    assert field.beta_cap.item() == pytest.approx((sdf.beta_max * 0.008) ** 0.5)
    field.anneal(1.0)
    assert field.beta_cap.item() == pytest.approx(0.008)
    assert sdf.beta_min < field.beta().item() < 0.008
    restored = SdfTriplaneField(config)
    restored.load_state_dict(field.state_dict())
    assert restored.beta().item() == pytest.approx(field.beta().item())
    # without beta_max_end the cap stays; a checkpoint from before the cap existed loads with beta_max
    base.anneal(1.0)
    assert base.beta_cap.item() == pytest.approx(sdf.beta_max)
    old = {k: v for k, v in base.state_dict().items() if k != "beta_cap"}
    SdfTriplaneField(config).load_state_dict(old)
    assert "beta_cap" not in old  # load_state_dict hands the hook a copy: the caller's dict is left as it was
    with pytest.raises(ValueError, match="beta_max_end"):
        SdfConfig(beta_max_end=0.003)


def test_sdf_numerical_shading_normals_match_the_gradient_at_a_small_step_and_smooth_at_a_large_one():
    base = make_field("sdf")
    roughen(base)
    points = ball_points(300, 0.6)
    analytic = base.signed_distance(points, with_gradient=True)[1]
    assert base.shading_normals(points) is None  # by default the gradient's normals are the shading normals

    def with_step(texels):
        config = dataclasses.replace(
            base.config, sdf=dataclasses.replace(base.config.sdf, normal_texels=texels)
        )
        field = SdfTriplaneField(config)
        field.load_state_dict({k: v for k, v in base.state_dict().items() if k != "normal_step"})
        return field

    # a hundredth of a texel: inside one cell the planes are bilinear, nearly linear at that scale (the few
    # tetrahedra that straddle a texel edge see both sides' slopes)
    fine = with_step(0.01)
    error = (fine.numerical_gradient(points) - analytic).norm(dim=-1) / analytic.norm(dim=-1)
    assert error.median() < 0.01 and error.quantile(0.9) < 0.03
    angle = (fine.shading_normals(points) * F.normalize(analytic, dim=-1)).sum(-1)
    assert angle.median() > 0.9999
    # forward is untouched: its normals and eikonal term stay the analytic gradient's
    a, b = base(points, with_normals=True), fine(points, with_normals=True)
    for name in ("density", "normals", "eikonal"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name))
    # over four texels the normals turn less from point to point than the analytic ones (bilinear planes
    # have a gradient that jumps at every texel edge)
    line = torch.linspace(-0.6, 0.6, 400)[:, None] * torch.tensor([[1.0, 0.3, -0.2]])
    turning = {}
    for name, normals in (
        ("analytic", base(line, with_normals=True).normals),
        ("numerical", with_step(4.0).shading_normals(line)),
    ):
        turning[name] = (normals[1:] - normals[:-1]).norm(dim=-1).mean()
    assert turning["numerical"] < 0.75 * turning["analytic"]
    # gradients reach the planes through the shifted evaluations
    coarse = with_step(2.0)
    coarse.shading_normals(points).sum().backward()
    assert coarse.planes.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="normal_texels"):
        SdfConfig(normal_texels=0.0)


def test_sdf_numerical_normal_step_anneals_coarse_to_fine_and_checkpoints_keep_it():
    base = make_field("sdf")
    sdf = dataclasses.replace(base.config.sdf, normal_texels=4.0, normal_texels_end=1.0)
    field = SdfTriplaneField(dataclasses.replace(base.config, sdf=sdf))
    assert field.normal_step.item() == 4.0
    field.anneal(0.5)
    assert field.normal_step.item() == pytest.approx(2.0)
    field.anneal(1.0)
    assert field.normal_step.item() == pytest.approx(1.0)
    restored = SdfTriplaneField(field.config)
    restored.load_state_dict(field.state_dict())
    points = ball_points(50, 0.6)
    torch.testing.assert_close(restored.shading_normals(points), field.shading_normals(points))
    # a checkpoint from before the buffer existed loads with the configured start
    old = {k: v for k, v in field.state_dict().items() if k != "normal_step"}
    fresh = SdfTriplaneField(field.config)
    fresh.load_state_dict(old)
    assert fresh.normal_step.item() == 4.0
    with pytest.raises(ValueError, match="normal_texels_end"):
        SdfConfig(normal_texels_end=1.0)


def test_hashgrid_table_init_range():
    table = make_field("hashgrid").table
    assert table.abs().max() <= 1e-4 and table.std() > 1e-5


def test_build_field_dispatches_on_kind():
    assert type(build_field(SMALL["triplane"])) is TriplaneField
    assert type(build_field(SMALL["hashgrid"])) is HashGridField
    assert type(build_field(SMALL["sdf"])) is SdfTriplaneField
    with pytest.raises(ValueError, match="kind"):
        build_field(FieldConfig(kind="voxels"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_matches_cpu(kind):
    field = make_field(kind)
    roughen(field)
    points = ball_points(500, field.bound)
    on_cpu = field(points, with_normals=True)
    on_gpu = field.cuda()(points.cuda(), with_normals=True)
    torch.testing.assert_close(on_gpu.density.cpu(), on_cpu.density, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(on_gpu.normals.cpu(), on_cpu.normals, rtol=1e-4, atol=1e-4)
